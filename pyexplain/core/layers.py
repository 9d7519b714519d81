"""Finding layers by name and capturing their activations and gradients (Grad-CAM and friends)."""
from __future__ import annotations

import contextlib
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


_DEFAULT_LAYERS: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], str]]" = weakref.WeakKeyDictionary()


def default_cam_layer(model: nn.Module, x: Tensor) -> str:
    """:func:`find_default_cam_layer`, remembered per model and input shape (it costs a forward pass)."""
    per_model = _DEFAULT_LAYERS.setdefault(model, {})
    key = tuple(x.shape[1:])
    if key not in per_model:
        per_model[key] = find_default_cam_layer(model, x)
    return per_model[key]


def find_default_cam_layer(model: nn.Module, x: Tensor) -> str:
    """The last module (in execution order, pooling and dropout excluded) whose output is a spatial
    map ``[B, C, h, w]`` with h, w > 1.

    For VGG this is ``features``; for ResNet, ``layer4``; for EfficientNet-Lite the head activation
    ``_head_act``. A container's hook fires after its children's, so a container is preferred over
    its last child.
    """
    order: list[tuple[str, tuple[int, ...]]] = []
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items() if n}
    handles = []

    def record(module, args, output):
        if isinstance(output, Tensor) and id(module) in names:
            order.append((names[id(module)], tuple(output.shape)))

    for m in model.modules():
        handles.append(m.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    spatial = [name for name, shape in order
               if len(shape) == 4 and shape[2] > 1 and shape[3] > 1 and not isinstance(modules[name], _POOLING)]
    if not spatial:
        raise PyExplainError("the model has no layer with a spatial output; pass layer=NAME")
    return spatial[-1]


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
