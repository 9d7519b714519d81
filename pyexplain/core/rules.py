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

from .activations import ActivationCall, inplace_safe

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


def _gate_from_output(call: ActivationCall, g: Tensor, y: Tensor) -> Tensor:
    """``g ⊙ φ'(f)`` read off the activation's output ``y = φ(f)`` (one fused kernel): ``y > 0`` iff
    ``f > 0`` for ReLU and leaky ReLU with a non-negative slope, ``low < y < high`` iff
    ``low < f < high`` for hardtanh/ReLU6."""
    if call.kind == "relu":
        return torch.ops.aten.threshold_backward(g, y, 0)
    if call.kind == "hardtanh":
        return torch.ops.aten.hardtanh_backward(g, y, call.low, call.high)
    return torch.ops.aten.leaky_relu_backward(g, y, call.negative_slope, True)


class _RectifiedBackward(torch.autograd.Function):
    """``φ(f)`` forwards; ``g_in = max(g_out, 0)``, times ``φ'(f)`` when ``gated``, backwards (without
    the ``max`` while ``switch.rectify`` is False: the plain gradient).

    Saves only the output (never ``f``), so the interception may pass an in-place activation's
    input without copying it first (see :func:`inplace_safe`)."""

    @staticmethod
    def forward(ctx, x: Tensor, call: ActivationCall, gated: bool, switch: "RectifySwitch | None" = None) -> Tensor:
        y = call.forward(x)
        ctx.call, ctx.gated, ctx.switch = call, gated, switch
        if gated:
            ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g_out: Tensor):
        rectify = ctx.switch is None or ctx.switch.rectify
        if not ctx.gated:
            return (g_out.clamp(min=0) if rectify else g_out), None, None, None
        (y,) = ctx.saved_tensors
        g = _gate_from_output(ctx.call, g_out, y)  # a new tensor: max(g, 0) ⊙ φ' = max(g ⊙ φ', 0), φ' ≥ 0
        return (g.clamp_(min=0) if rectify else g), None, None, None


def _output_gates(call: ActivationCall) -> bool:
    """Whether the output determines the gate (not so for leaky ReLU with a negative slope)."""
    return call.kind != "leaky_relu" or call.negative_slope >= 0


@inplace_safe
def guided_backprop_rule(call: ActivationCall, x: Tensor) -> Tensor:
    """Guided Backprop (Springenberg et al. 2015): ``g_in = max(g_out, 0) ⊙ φ'(f)``."""
    if _output_gates(call):
        return _RectifiedBackward.apply(x, call, True)
    gate = call.derivative(x.detach())
    return replace_backward(call, x, lambda g: g.clamp(min=0) * gate)


@inplace_safe
def deconvnet_rule(call: ActivationCall, x: Tensor) -> Tensor:
    """Deconvnet (Zeiler & Fergus 2014): ``g_in = max(g_out, 0)``, ignoring the forward gate."""
    return _RectifiedBackward.apply(x, call, False)


class RectifySwitch:
    """Chooses, at backward time, between Guided Backprop's rectified backward and the plain
    gradient for the activations of one forward pass (:meth:`rule`): one forward serves both."""

    def __init__(self) -> None:
        self.rectify = True

    @inplace_safe
    def rule(self, call: ActivationCall, x: Tensor) -> Tensor:
        if _output_gates(call):
            return _RectifiedBackward.apply(x, call, True, self)
        gate = call.derivative(x.detach())
        return replace_backward(call, x, lambda g: (g.clamp(min=0) if self.rectify else g) * gate)
