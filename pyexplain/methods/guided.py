"""Modified-ReLU-backward methods: Guided Backprop and Deconvnet.

Both rules are defined for ReLU-family activations (ReLU, ReLU6/hardtanh, LeakyReLU). A model with
another activation (SiLU, GELU, Hardswish, ...) is refused; sigmoid/tanh gates (squeeze-excitation)
keep their plain gradient, as in the papers' reference implementations, which modify ReLUs only.
"""
from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from ..core.activations import GATES, refuse_unsupported
from ..core.rules import deconvnet_rule, guided_backprop_rule
from ..core.targets import Targets
from ..registry import register_method
from ._common import input_gradient


def require_relu_family(method: str, tracker) -> None:
    """Refuse a model with a non-ReLU-family activation (gates allowed): the rule is not defined for it."""
    refuse_unsupported(tracker, method, "is defined for ReLU-family activations (ReLU, ReLU6, LeakyReLU) only",
                       allowed=GATES)


@register_method(
    "guided_backprop",
    description="gradient with negative gradients zeroed at every activation",
    paper="Springenberg et al.: Striving for Simplicity: The All Convolutional Net (ICLR-W 2015)",
    cost="1 forward + 1 backward",
)
def guided_backprop(model: nn.Module, x: Tensor, targets: Targets) -> Tensor:
    """Backward with ``g_in = max(g_out, 0) ⊙ φ'(f)`` at every activation call."""
    return input_gradient(model, x, targets, guided_backprop_rule, check=partial(require_relu_family, "guided_backprop"))


@register_method(
    "deconvnet",
    description="backward pass that rectifies the gradient instead of gating it",
    paper="Zeiler, Fergus: Visualizing and Understanding Convolutional Networks (ECCV 2014)",
    cost="1 forward + 1 backward",
)
def deconvnet(model: nn.Module, x: Tensor, targets: Targets) -> Tensor:
    """Backward with ``g_in = max(g_out, 0)`` at every activation call."""
    return input_gradient(model, x, targets, deconvnet_rule, check=partial(require_relu_family, "deconvnet"))
