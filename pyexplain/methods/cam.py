"""Class activation maps: Grad-CAM and Guided Grad-CAM."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.activations import intercept_activations
from ..core.layers import LAYOUTS, capture_layer, default_cam_layer, get_layer, to_feature_map
from ..core.rules import RectifySwitch
from ..core.targets import Targets
from ..errors import PyExplainError
from ..registry import register_method
from ._common import upsample_to_input
from .guided import require_relu_family


def gradcam_map(model: nn.Module, x: Tensor, targets: Targets, layer: str | None, reshape: str = "auto") -> Tensor:
    """Grad-CAM at the layer's resolution, ``[N, h, w]``: ``ReLU(Σ_k α_k A^k)``, ``α_k = mean(∂F_t/∂A^k)``,
    with the layer's output ``A`` laid out as ``[N, C, h, w]`` by ``reshape`` (see
    :data:`pyexplain.core.layers.LAYOUTS`: transformer tokens drop their class token and fill the
    patch grid; channels-last maps are permuted)."""
    if reshape not in LAYOUTS:
        raise PyExplainError(f"gradcam option reshape must be one of {', '.join(LAYOUTS)}, got {reshape!r}")
    image = tuple(x.shape[-2:])
    module = get_layer(model, layer or default_cam_layer(model, x))
    with torch.enable_grad(), capture_layer(module) as captured:
        logits = model(x)
        targets.resolve(logits)
        activations = captured.output
        (grads,) = torch.autograd.grad(targets.scores(logits).sum(), activations)
    return _cam(grads, activations, reshape, image)


def _cam(grads: Tensor, activations: Tensor, reshape: str, image: tuple[int, int]) -> Tensor:
    """``ReLU(Σ_k α_k A^k)`` with ``α_k`` the spatial mean of ``∂F_t/∂A^k``, both laid out as
    ``[N, C, h, w]`` by ``reshape``."""
    activations, grads = to_feature_map(activations, reshape, image), to_feature_map(grads, reshape, image)
    return (grads.mean(dim=(2, 3), keepdim=True) * activations).sum(1).clamp(min=0).detach()


@register_method(
    "gradcam",
    description="gradient-weighted class activation map of a convolutional layer (last spatial layer by default)",
    paper="Selvaraju et al.: Grad-CAM (ICCV 2017)",
    cost="1 forward + 1 partial backward",
    sign="nonnegative",  # ReLU of the weighted activations
)
def gradcam(model: nn.Module, x: Tensor, targets: Targets, *, layer: str | None = None,
            interpolation: str = "bilinear", reshape: str = "auto") -> Tensor:
    """``ReLU(Σ_k α_k A^k)`` upsampled to the input and spread evenly over channels. ``layer``: a module
    name (default: :func:`pyexplain.core.layers.find_default_cam_layer`, for a vision transformer the
    last block's attention input); ``reshape``: its output's layout, ``auto``/``nchw``/``nhwc``/``tokens``."""
    return upsample_to_input(gradcam_map(model, x, targets, layer, reshape), x, interpolation)


def _guided_and_cam(model: nn.Module, x: Tensor, targets: Targets, layer: str | None,
                    reshape: str) -> tuple[Tensor, Tensor]:
    """Guided Backprop and the Grad-CAM map from one forward pass: the activations' backward is the
    plain gradient for the layer's gradient, then the guided one for the input's."""
    if reshape not in LAYOUTS:
        raise PyExplainError(f"guided_gradcam option reshape must be one of {', '.join(LAYOUTS)}, got {reshape!r}")
    module = get_layer(model, layer or default_cam_layer(model, x))
    switch = RectifySwitch()
    inputs = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with capture_layer(module) as captured, intercept_activations(model, switch.rule) as tracker:
            logits = model(inputs)
        require_relu_family("guided_gradcam", tracker)
        targets.resolve(logits)
        score = targets.scores(logits).sum()
        activations = captured.output
        switch.rectify = False
        (grads,) = torch.autograd.grad(score, activations, retain_graph=True)
        switch.rectify = True
        (guided,) = torch.autograd.grad(score, inputs)
    return guided, _cam(grads, activations, reshape, tuple(x.shape[-2:]))


@register_method(
    "guided_gradcam",
    description="Guided Backprop multiplied by the upsampled Grad-CAM map",
    paper="Selvaraju et al.: Grad-CAM (ICCV 2017)",
    cost="1 forward + 1 partial backward + 1 backward",
)
def guided_gradcam(model: nn.Module, x: Tensor, targets: Targets, *, layer: str | None = None,
                   interpolation: str = "bilinear", reshape: str = "auto") -> Tensor:
    """``A = GuidedBackprop(x) ⊙ upsample(Grad-CAM)`` (per channel)."""
    guided, cam = _guided_and_cam(model, x, targets, layer, reshape)
    return guided * upsample_to_input(cam, x, interpolation) * x.shape[1]
