"""Every torchvision classification model by name, with its default ImageNet weights and their
own preprocessing and class names (``weights.transforms()``, ``weights.meta["categories"]``).

Weights are got as ``torchvision.models.NAME(weights="DEFAULT")`` gets them: the torch hub cache
(``$TORCH_HOME/hub/checkpoints``), else torchvision's download with its hash check and progress
bar (see :mod:`pyexplain.models.hub` for the offline rules).
"""
from __future__ import annotations

from functools import lru_cache

from torch import nn

from ..preprocess import Preprocess
from ..state_dicts import load_state_dict_file, load_weights
from .hub import download_guard, hub_checkpoint

#: Builders whose ImageNet weights carry auxiliary classifiers and expect ``transform_input``.
_AUX_MODELS = ("inception_v3", "googlenet")


@lru_cache(maxsize=1)
def torchvision_names() -> tuple[str, ...]:
    """torchvision's classification models (``list_models(module=torchvision.models)``)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def default_weights(name: str):
    """The model's ``DEFAULT`` weights enum entry (url, transforms, meta)."""
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def weights_preprocess(weights) -> Preprocess:
    """The :class:`Preprocess` equal to ``weights.transforms()``, with ``weights.meta["categories"]``."""
    transform = weights.transforms()
    return Preprocess(transform.crop_size[0], tuple(transform.mean), tuple(transform.std),
                      tuple(weights.meta["categories"]), transform.resize_size[0], transform.interpolation.value)


def load_torchvision(name: str, weights_file: str | None, random_weights: bool,
                     allow_download: bool = True) -> tuple[nn.Module, Preprocess]:
    """``(model, preprocess)`` for torchvision's ``name``: its default ImageNet weights (cache or
    download unless ``allow_download`` is false), ``weights_file`` (a state dict in torchvision's layout), or random weights."""
    from torchvision.models import get_model

    weights = default_weights(name)
    if weights_file is None and not random_weights:
        path = hub_checkpoint(weights.url)
        with download_guard(name, weights.url, path, allowed=allow_download):
            model = get_model(name, weights=weights)  # torchvision's own: cache, else hash-checked download
        return model, weights_preprocess(weights)
    kwargs = {}
    if name in _AUX_MODELS:  # the layout of the ImageNet weights, as torchvision's builder sets it
        kwargs = {"aux_logits": True, "init_weights": False, "transform_input": not random_weights}
    model = get_model(name, weights=None, **kwargs)
    if weights_file is not None:
        load_weights(model, load_state_dict_file(weights_file), weights_file, name)
    if name == "inception_v3":
        model.aux_logits, model.AuxLogits = False, None
    elif name == "googlenet":
        model.aux_logits, model.aux1, model.aux2 = False, None, None
    return model, weights_preprocess(weights)

