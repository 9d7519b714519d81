"""Finding layers by name and capturing their activations and gradients (Grad-CAM and friends)."""
from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn

from ..errors import PyExplainError

_POOLING = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
            nn.modules.pooling._AdaptiveMaxPoolNd, nn.Dropout, nn.Identity)


def get_layer(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        pass
    modules = dict(model.named_modules())
    if name not in modules:
        spatial = [n for n, m in modules.items() if n and isinstance(m, (nn.Conv2d, nn.Sequential))][-5:]
        raise PyExplainError(f"model has no layer {name!r}; e.g. {', '.join(spatial)}")
    return modules[name]


#: How a layer's output becomes a feature map ``[B, C, h, w]``: ``"nchw"`` (convolutional), ``"nhwc"``
#: (channels-last, e.g. Swin's stages), ``"tokens"`` (``[B, T, D]``: leading class/register tokens dropped,
#: the rest laid out row by row on the patch grid), or ``"auto"`` (chosen from the shape).
LAYOUTS = ("auto", "nchw", "nhwc", "tokens")
_MAX_PREFIX_TOKENS = 8


def _same_aspect(h: int, w: int, image: tuple[int, int]) -> bool:
    """Whether an ``h × w`` grid has the image's aspect ratio (to within a factor 1.34, for rounding)."""
    return h > 0 and w > 0 and abs(math.log((h / w) / (image[0] / image[1]))) < math.log(1.34)


def token_grid(tokens: int, image: tuple[int, int]) -> tuple[int, int, int] | None:
    """``(prefix, h, w)``: the fewest leading tokens (class, distillation, register tokens) whose removal
    leaves an ``h × w`` patch grid with the image's aspect ratio; None if there is none."""
    for prefix in range(min(tokens, _MAX_PREFIX_TOKENS + 1)):
        n = tokens - prefix
        h = round(math.sqrt(n * image[0] / image[1]))
        if h > 0 and n % h == 0 and _same_aspect(h, n // h, image):
            return prefix, h, n // h
    return None


def resolve_layout(shape: tuple[int, ...], layout: str, image: tuple[int, int]) -> str:
    """The concrete layout of an output of ``shape`` (``layout="auto"``: 3-D → tokens; 4-D → NHWC when only
    its middle two sizes have the image's aspect ratio, else NCHW)."""
    if layout not in LAYOUTS:
        raise PyExplainError(f"reshape must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "auto":
        if len(shape) == 3:
            layout = "tokens"
        elif len(shape) == 4:
            channels_last = _same_aspect(shape[1], shape[2], image) and not _same_aspect(shape[2], shape[3], image)
            layout = "nhwc" if channels_last else "nchw"
    if (layout == "tokens") != (len(shape) == 3) or len(shape) not in (3, 4):
        raise PyExplainError(f"a layer output of shape {list(shape)} is not a {layout} feature map; Grad-CAM needs "
                             "[B, C, h, w] (reshape='nchw'), [B, h, w, C] ('nhwc') or tokens [B, T, D] ('tokens')")
    return layout


def to_feature_map(t: Tensor, layout: str, image: tuple[int, int]) -> Tensor:
    """``t`` as ``[B, C, h, w]`` (see :data:`LAYOUTS`; ``layout`` resolved by :func:`resolve_layout`)."""
    layout = resolve_layout(tuple(t.shape), layout, image)
    if layout == "nchw":
        return t
    if layout == "nhwc":
        return t.permute(0, 3, 1, 2)
    grid = token_grid(t.shape[1], image)
    if grid is None:
        raise PyExplainError(f"cannot lay {t.shape[1]} tokens out on a patch grid with the image's aspect ratio "
                             f"{image[0]}×{image[1]} (after dropping up to {_MAX_PREFIX_TOKENS} leading tokens)")
    prefix, h, w = grid
    return t[:, prefix:].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)


_DEFAULT_LAYERS: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, str]]" = weakref.WeakKeyDictionary()


def _structure(model: nn.Module) -> tuple:
    """The module tree: names, types and identities (a swapped or added layer changes it)."""
    return tuple((name, type(m).__qualname__, id(m)) for name, m in model.named_modules())


def default_cam_layer(model: nn.Module, x: Tensor) -> str:
    """:func:`find_default_cam_layer`, remembered per model, module tree and input shape (it costs a forward
    pass, and a backward for transformers)."""
    per_model = _DEFAULT_LAYERS.setdefault(model, {})
    key = (tuple(x.shape[1:]), _structure(model))
    if key not in per_model:
        per_model.clear()
        per_model[key] = find_default_cam_layer(model, x)
    return per_model[key]


def find_default_cam_layer(model: nn.Module, x: Tensor) -> str:
    """Grad-CAM's default layer.

    Convolutional networks: the last module (in execution order, pooling and dropout excluded) whose
    output is a spatial map ``[B, C, h, w]`` (or channels-last) with h, w > 1. For VGG this is
    ``features``; for ResNet, ``layer4``; for Swin, the ``permute`` after its last stage. A container's
    hook fires after its children's, so a container is preferred over its last child.

    Transformers (token sequences ``[B, T, D]`` laid out on a patch grid run after the last spatial map):
    the last module with the residual stream's width ``D`` (the first token sequence's) whose patch
    tokens receive a non-zero gradient of the top-1 logit (the last such module if none does). With a class-token
    head this is the last block's first norm (the input of its attention, ``norm1``/``ln_1``): every
    later output feeds the head through the class token only, so its patch tokens' gradients are
    zero and so would be Grad-CAM's map. With average pooling it is the last block's output. Never the
    patch embedding.
    """
    order: list[tuple[str, Tensor]] = []
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items() if n}
    image = tuple(x.shape[-2:])
    handles = []

    def record(module, args, output):
        if isinstance(output, Tensor) and id(module) in names and not isinstance(module, _POOLING):
            order.append((names[id(module)], output))

    for m in model.modules():
        handles.append(m.register_forward_hook(record))
    try:
        with torch.enable_grad():
            logits = model(x[:1].detach().requires_grad_(True))
    finally:
        for h in handles:
            h.remove()

    def spatial(t: Tensor) -> bool:
        if t.ndim != 4:
            return False
        fmap = to_feature_map(t, "auto", image)
        return fmap.shape[2] > 1 and fmap.shape[3] > 1

    def tokens(t: Tensor) -> bool:
        return t.ndim == 3 and t.shape[1] > 1 and token_grid(t.shape[1], image) is not None

    last_spatial = max((i for i, (_, t) in enumerate(order) if spatial(t)), default=-1)
    token_layers = [(name, t) for name, t in order[last_spatial + 1:] if tokens(t) and t.requires_grad]
    width = token_layers[0][1].shape[2] if token_layers else 0
    token_layers = [(name, t) for name, t in token_layers if t.shape[2] == width]  # the residual stream's width
    if token_layers:
        grads = torch.autograd.grad(logits.max(1).values.sum(), [t for _, t in token_layers], allow_unused=True)
        for (name, t), grad in reversed(list(zip(token_layers, grads))):
            prefix = token_grid(t.shape[1], image)[0]
            if grad is not None and grad[:, prefix:].abs().amax() > 0:
                return name
        return token_layers[-1][0]  # no gradient reaches any token (e.g. a zero-initialized head)
    if last_spatial < 0:
        raise PyExplainError("the model has no layer with a spatial output; pass layer=NAME")
    return order[last_spatial][0]


@dataclass
class LayerCapture:
    output: Tensor | None = None


@contextlib.contextmanager
def capture_layer(layer: nn.Module) -> Iterator[LayerCapture]:
    """Record ``layer``'s output of the forward passes inside the context (the last one wins).

    With grad enabled, the output always requires grad, so gradients with respect to it exist even
    when nothing upstream (input, parameters) requires grad.
    """
    capture = LayerCapture()

    def hook(module, args, output):
        if not isinstance(output, Tensor):
            raise PyExplainError(f"layer {type(module).__name__} does not return a single tensor")
        if torch.is_grad_enabled() and not output.requires_grad:
            output.requires_grad_(True)  # frozen parameters: the graph starts here, not at the input
        capture.output = output

    handle = layer.register_forward_hook(hook)
    try:
        yield capture
    finally:
        handle.remove()
