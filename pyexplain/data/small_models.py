"""The small models by name (``digits_cnn``, ``synthetic_vgg``, ``synthetic_resnet``) for
:func:`pyexplain.load_model`: trained and cached on first use, or loaded from a weights file."""
from __future__ import annotations

from torch import nn

from ..models import SMALL_MODELS, Preprocess, _load_weights, load_state_dict_file
from .digits import PREPROCESS as DIGITS_PREPROCESS, DigitsCNN, load_digits_cnn
from .synthetic import CLASSES, MEAN, SIZE, STD
from .synthetic_models import ARCHITECTURES, load_synthetic_model

__all__ = ["SMALL_MODELS", "load_small_model"]
SYNTHETIC_PREPROCESS = Preprocess(SIZE, (MEAN,) * 3, (STD,) * 3, CLASSES)


def load_small_model(name: str, weights: str | None = None, random_weights: bool = False, seed: int = 0) -> tuple[nn.Module, Preprocess]:
    """``(model, preprocess)`` for a small model (CPU, eval mode). ``weights``: a state-dict file
    instead of the cached training; ``random_weights``: the untrained initialization."""
    if name == "digits_cnn":
        factory, preprocess = DigitsCNN, DIGITS_PREPROCESS
    else:
        factory, preprocess = ARCHITECTURES[name][0], SYNTHETIC_PREPROCESS
    if weights or random_weights:
        model = factory()
        if weights:
            _load_weights(model, load_state_dict_file(weights), weights, name)
        return model.eval(), preprocess
    model = load_digits_cnn(seed)[0] if name == "digits_cnn" else load_synthetic_model(name, seed)[0]
    return model, preprocess
