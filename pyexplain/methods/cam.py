"""Class activation maps: Grad-CAM and Guided Grad-CAM."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.layers import capture_layer, default_cam_layer, get_layer
from ..core.activations import intercept_activations
from ..core.rules import RectifySwitch
from ..core.targets import Targets
from ..registry import register_method
from ._common import upsample_to_input


def gradcam_map(model: nn.Module, x: Tensor, targets: Targets, layer: str | None) -> Tensor:
    """Grad-CAM at the layer's resolution, ``[N, h, w]``: ``ReLU(Σ_k α_k A^k)``, ``α_k = mean(∂F_t/∂A^k)``."""
    module = get_layer(model, layer or default_cam_layer(model, x))
    with torch.enable_grad(), capture_layer(module) as captured:
        logits = model(x)
        targets.resolve(logits)
        activations = captured.output
        (grads,) = torch.autograd.grad(targets.scores(logits).sum(), activations)
    return _cam(grads, activations)


def _cam(grads: Tensor, activations: Tensor) -> Tensor:
    """``ReLU(Σ_k α_k A^k)`` with ``α_k`` the spatial mean of ``∂F_t/∂A^k``."""
    return (grads.mean(dim=(2, 3), keepdim=True) * activations).sum(1).clamp(min=0).detach()


@register_method(
    "gradcam",
    description="gradient-weighted class activation map of a convolutional layer (last spatial layer by default)",
    paper="Selvaraju et al.: Grad-CAM (ICCV 2017)",
    cost="1 forward + 1 partial backward",
    sign="nonnegative",  # ReLU of the weighted activations
)
def gradcam(model: nn.Module, x: Tensor, targets: Targets, *, layer: str | None = None,
            interpolation: str = "bilinear") -> Tensor:
    """``ReLU(Σ_k α_k A^k)`` upsampled to the input and spread evenly over channels."""
    return upsample_to_input(gradcam_map(model, x, targets, layer), x, interpolation)


def _guided_and_cam(model: nn.Module, x: Tensor, targets: Targets, layer: str | None) -> tuple[Tensor, Tensor]:
    """Guided Backprop and the Grad-CAM map from one forward pass: the activations' backward is the
    plain gradient for the layer's gradient, then the guided one for the input's."""
    module = get_layer(model, layer or default_cam_layer(model, x))
    switch = RectifySwitch()
    inputs = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with capture_layer(module) as captured, intercept_activations(model, switch.rule):
            logits = model(inputs)
        targets.resolve(logits)
        score = targets.scores(logits).sum()
        activations = captured.output
        switch.rectify = False
        (grads,) = torch.autograd.grad(score, activations, retain_graph=True)
        switch.rectify = True
        (guided,) = torch.autograd.grad(score, inputs)
    return guided, _cam(grads, activations)


@register_method(
    "guided_gradcam",
    description="Guided Backprop multiplied by the upsampled Grad-CAM map",
    paper="Selvaraju et al.: Grad-CAM (ICCV 2017)",
    cost="1 forward + 1 partial backward + 1 backward",
)
def guided_gradcam(model: nn.Module, x: Tensor, targets: Targets, *, layer: str | None = None,
                   interpolation: str = "bilinear") -> Tensor:
    """``A = GuidedBackprop(x) ⊙ upsample(Grad-CAM)`` (per channel)."""
    guided, cam = _guided_and_cam(model, x, targets, layer)
    return guided * upsample_to_input(cam, x, interpolation) * x.shape[1]
