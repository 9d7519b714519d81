"""The small models by name (``digits_cnn``, ``synthetic_vgg``, ``synthetic_resnet``) for
:func:`pyexplain.load_model`: the shipped weights (seed 0; other seeds trained and cached on first
use), or a weights file; and their data and training recipe for ROAR (:func:`roar_task`)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import PyExplainError
from . import SMALL_MODELS
from ..preprocess import Preprocess
from ..state_dicts import load_state_dict_file, load_weights
from .cache import weights_name
from .digits import (EPOCHS as DIGITS_EPOCHS, PREPROCESS as DIGITS_PREPROCESS, VERSION as DIGITS_VERSION, DigitsCNN,
                     digits_splits, load_digits_cnn, train_digits_cnn)
from .synthetic import CLASSES, MEAN, SIZE, STD
from .synthetic_models import (ARCHITECTURES, VERSION as SYNTHETIC_VERSION, load_synthetic_model, synthetic_test_set,
                               synthetic_train_set, train_synthetic_model)
from .training import Split

__all__ = ["SMALL_MODELS", "load_small_model", "trained_small_model", "roar_task", "check_roar_model"]
SYNTHETIC_PREPROCESS = Preprocess(SIZE, (MEAN,) * 3, (STD,) * 3, CLASSES)


def load_small_model(name: str, weights: str | None = None, random_weights: bool = False, seed: int = 0) -> tuple[nn.Module, Preprocess]:
    """``(model, preprocess)`` for a small model (CPU, eval mode). ``weights``: a state-dict file
    instead of the shipped (or cached) training; ``random_weights``: the untrained initialization."""
    if name == "digits_cnn":
        factory, preprocess = DigitsCNN, DIGITS_PREPROCESS
    else:
        factory, preprocess = ARCHITECTURES[name][0], SYNTHETIC_PREPROCESS
    if weights or random_weights:
        model = factory()
        if weights:
            load_weights(model, load_state_dict_file(weights), weights, name)
        return model.eval(), preprocess
    return trained_small_model(name, seed)[0], preprocess


def trained_small_model(name: str, seed: int = 0, retrain: bool = False) -> tuple[nn.Module, Split, str]:
    """``(model, test split, weights file name)`` of a small model (CPU, eval mode): the shipped or
    cached weights, or (``retrain``) trained anew with its own recipe."""
    if name == "digits_cnn":
        model, test = load_digits_cnn(seed, retrain=retrain)
        return model, test, weights_name(name, DIGITS_VERSION, seed)
    model, shapes = load_synthetic_model(name, seed, retrain=retrain)
    return model, Split(shapes.x, shapes.y), weights_name(name, SYNTHETIC_VERSION, seed)


def roar_task(name: str, seed: int = 0, epochs: int | None = None) -> tuple[Split, Split, Callable[[Split], nn.Module]]:
    """``(train, test, fit)`` for ROAR on a small model: its own training and test data and its own
    training recipe (``epochs``: fewer to shorten it), from scratch and seeded by ``seed``."""
    if name == "digits_cnn":
        train, test = digits_splits(seed)
        return train, test, lambda split: train_digits_cnn(split, seed, epochs or DIGITS_EPOCHS)
    check_roar_model(name)
    test = synthetic_test_set(seed)
    return synthetic_train_set(seed), Split(test.x, test.y), lambda split: train_synthetic_model(name, split, seed, epochs)


def check_roar_model(name: str) -> None:
    """One-line error unless ``name`` is a small model that ROAR can retrain."""
    if name not in SMALL_MODELS:
        raise PyExplainError(f"metric 'roar' retrains the model from scratch on its own data, so it works for "
                             f"{', '.join(SMALL_MODELS)} only, not for {name!r}")
