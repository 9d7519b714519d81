"""Backward rules: activations whose value is unchanged but whose backward pass is replaced.

A rule maps the gradient arriving at an activation's output, ``g_out``, to the gradient passed to
its input, ``g_in``. The plain gradient is ``g_in = g_out ⊙ φ'(f)``. :func:`replace_backward`
builds a tensor equal to ``φ(f)`` whose backward is any such map; the map may use tensors that
require grad (LPR's plugin weights), and second-order autograd (``create_graph=True``) then
differentiates through it.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .activations import ActivationCall

BackwardMap = Callable[[Tensor], Tensor]


class _ReplacedBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, value: Callable[[Tensor], Tensor], backward: BackwardMap) -> Tensor:
        ctx.backward_map = backward
        return value(x)

    @staticmethod
    def backward(ctx, g_out: Tensor):
        return ctx.backward_map(g_out), None, None


def replace_backward(call: ActivationCall, x: Tensor, backward: BackwardMap) -> Tensor:
    """``call``'s activation at ``x`` in the forward pass, with ``g_in = backward(g_out)``."""
    return _ReplacedBackward.apply(x, call.forward, backward)


def guided_backprop_rule(call: ActivationCall, x: Tensor) -> Tensor:
    """Guided Backprop (Springenberg et al. 2015): ``g_in = max(g_out, 0) ⊙ φ'(f)``."""
    gate = call.derivative(x.detach())
    return replace_backward(call, x, lambda g: g.clamp(min=0) * gate)


def deconvnet_rule(call: ActivationCall, x: Tensor) -> Tensor:
    """Deconvnet (Zeiler & Fergus 2014): ``g_in = max(g_out, 0)``, ignoring the forward gate."""
    return replace_backward(call, x, lambda g: g.clamp(min=0))

