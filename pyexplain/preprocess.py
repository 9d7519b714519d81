"""A classifier's preprocessing: image → normalized batch, the geometry back to the image, and its
class names (with lookup of a class by name)."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from .errors import PyExplainError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The attribute on which :func:`pyexplain.load_model` records a model's :class:`Preprocess`.
PREPROCESS_ATTRIBUTE = "pyexplain_preprocess"
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST}


def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet class names as torchvision's weights metadata spells them."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return tuple(_IMAGENET_CATEGORIES)


def _words(text: str) -> tuple[str, ...]:
    """Lower-case words of a class name: ``"Tabby_cat"`` → ``("tabby", "cat")``."""
    return tuple(re.sub(r"[\s_\-',]+", " ", text.lower()).split())


@dataclass(frozen=True)
class Preprocess:
    """PIL image (or HWC numpy array) → normalized batch ``[1, C, H, W]``, as torchvision's
    ``ImageClassification`` preset: resize the shorter side to ``resize`` with ``interpolation``
    (antialiased), center-crop ``size``, scale to ``[0, 1]``, normalize. ``resize=None`` resizes the
    whole image to ``size × size`` (no crop, as EfficientNet-Lite's reference pipeline).
    """

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...]
    resize: int | None = None
    interpolation: str = "bilinear"

    def view(self, image: Image.Image | np.ndarray) -> Image.Image:
        """The resized/cropped RGB image the model sees (for overlays)."""
        from torchvision.transforms import functional as TF

        image = as_pil(image).convert("RGB")
        if self.resize is None:
            return image.resize((self.size, self.size), INTERPOLATIONS[self.interpolation])
        resized = TF.resize(image, self.resize, interpolation=TF.InterpolationMode(self.interpolation))
        return TF.center_crop(resized, [self.size, self.size])

    def __call__(self, image: Image.Image | np.ndarray) -> Tensor:
        from torchvision.transforms import functional as TF

        x = TF.to_tensor(self.view(image))
        return TF.normalize(x, list(self.mean), list(self.std)).unsqueeze(0)

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """``(left, top, right, bottom)`` of the model's view in the original image's pixels."""
        if self.resize is None:
            return 0.0, 0.0, float(width), float(height)
        resized_w, resized_h = _resized_size(width, height, self.resize)
        left, top = int(round((resized_w - self.size) / 2)), int(round((resized_h - self.size) / 2))  # center_crop's
        sx, sy = width / resized_w, height / resized_h
        return left * sx, top * sy, (left + self.size) * sx, (top + self.size) * sy

    def to_image(self, attribution_map: Tensor, width: int, height: int) -> np.ndarray:
        """A ``[size, size]`` map at the original image's resolution ``[height, width]`` (bilinear);
        pixels the center crop cut away are 0 (no attribution)."""
        left, top, right, bottom = self.crop_box(width, height)
        x0, y0, x1, y1 = int(round(left)), int(round(top)), int(round(right)), int(round(bottom))
        x1, y1 = min(max(x1, x0 + 1), width), min(max(y1, y0 + 1), height)
        patch = F.interpolate(attribution_map.detach().float().cpu()[None, None], size=(y1 - y0, x1 - x0),
                              mode="bilinear", align_corners=False)[0, 0]
        full = torch.zeros(height, width)
        full[y0:y1, x0:x1] = patch
        return full.numpy()

    def label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)

    def class_index(self, name_or_index: str | int) -> int:
        """A class given as an index or a name (see :func:`class_index`)."""
        return class_index(self.labels, name_or_index)


def class_index(labels: tuple[str, ...], name_or_index: str | int) -> int:
    """A class given as an index or a name. Names match case-insensitively, ``_``/``-`` as spaces;
    a comma-separated list of synonyms (``"tabby, tabby cat"``) matches when one of them does; a
    name whose words contain exactly one class name's words (``"tabby cat"`` → ``tabby``) matches it."""
    text = str(name_or_index).strip()
    if re.fullmatch(r"[+-]?[0-9]+", text):  # ASCII digits only: "²".isdigit() is true
        index = int(text)
        if not 0 <= index < len(labels):
            raise PyExplainError(f"target {index} is outside the model's classes 0..{len(labels) - 1}")
        return index
    return find_class(labels, text)


def find_class(labels: tuple[str, ...], text: str) -> int:
    """Index of class name ``text`` in ``labels`` (see :func:`class_index`), else a one-line error.
    A label may itself list synonyms separated by commas (timm's ``"tabby, tabby cat"``)."""
    synonyms = [[_words(part) for part in label.split(",") if part.strip()] for label in labels]
    queries = [_words(text)] + [_words(part) for part in text.split(",") if part.strip()]
    for query in queries:
        exact = [i for i, names in enumerate(synonyms) if query in names]
        if len(exact) == 1:
            return exact[0]
        if len(exact) > 1:
            raise PyExplainError(f"class name {text!r} is ambiguous: indices {', '.join(map(str, exact))}")
    for query in queries:  # the class whose name is the largest part of the query, if only one
        sizes = {i: max((len(n) for n in names if n and set(n) <= set(query)), default=0) for i, names in enumerate(synonyms)}
        best = max(sizes.values(), default=0)
        widest = [i for i, size in sizes.items() if size == best]
        if best and len(widest) == 1:
            return widest[0]
    lowered = [" ".join(_words(label)) for label in labels]
    close = difflib.get_close_matches(" ".join(_words(text)), lowered, n=3)
    hint = f"; did you mean {', '.join(repr(labels[lowered.index(c)]) for c in close)}?" if close else ""
    raise PyExplainError(f"unknown class name {text!r}{hint}")


def _resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """The size torchvision's ``resize(image, shorter)`` gives (its rounding)."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """A PIL image from a PIL image or an ``HxW``/``HxWxC`` numpy array: ``uint8`` as is, floats in
    ``[0, 1]`` scaled to 8 bits (rounded)."""
    if isinstance(image, Image.Image):
        return image
    if not isinstance(image, np.ndarray):
        raise PyExplainError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise PyExplainError(f"a numpy image must be HxW or HxWxC with C in 1, 3, 4; got shape {image.shape}")
    if image.dtype == np.uint8:
        array = image
    elif np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise PyExplainError("a float numpy image must hold finite values in [0, 1]")
        array = np.round(image * 255).astype(np.uint8)
    else:
        raise PyExplainError(f"a numpy image must be uint8 or float in [0, 1], got {image.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array))
