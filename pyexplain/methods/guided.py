"""Modified-ReLU-backward methods: Guided Backprop and Deconvnet."""
from __future__ import annotations

from torch import Tensor, nn

from ..core.rules import deconvnet_rule, guided_backprop_rule
from ..core.targets import Targets
from ..registry import register_method
from ._common import input_gradient


@register_method(
    "guided_backprop",
    description="gradient with negative gradients zeroed at every activation",
    paper="Springenberg et al.: Striving for Simplicity: The All Convolutional Net (ICLR-W 2015)",
    cost="1 forward + 1 backward",
)
def guided_backprop(model: nn.Module, x: Tensor, targets: Targets) -> Tensor:
    """Backward with ``g_in = max(g_out, 0) ⊙ φ'(f)`` at every activation call."""
    return input_gradient(model, x, targets, guided_backprop_rule)


@register_method(
    "deconvnet",
    description="backward pass that rectifies the gradient instead of gating it",
    paper="Zeiler, Fergus: Visualizing and Understanding Convolutional Networks (ECCV 2014)",
    cost="1 forward + 1 backward",
)
def deconvnet(model: nn.Module, x: Tensor, targets: Targets) -> Tensor:
    """Backward with ``g_in = max(g_out, 0)`` at every activation call."""
    return input_gradient(model, x, targets, deconvnet_rule)
