"""The explainer compiler's building blocks: one module per supported layer, each computing its
forward value and, as ordinary ops, the backward map of its input(s).

Every step knows its static per-sample shapes (only the batch dimension varies), so the backward
of a convolution is a ``conv_transpose2d`` with a fixed ``output_padding``, a max-pool's is a
scatter-add of the gradient into its stored argmax indices, an average pool's (adaptive or not) is
two matrix products with its separable pooling matrices, a pad's is a crop, a reshape's is the
inverse reshape. Activations hold the backward *rules* (see :meth:`Activation.grad`).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.rule_predictor import PREDICTOR_KEYS, predicted_weight
from ..ops import plugin_rule

#: Backward rules an :class:`Activation` applies, by name.
RULES = ("gradient", "guided", "deconvnet", "lpr")


class Step(nn.Module):
    """One traced operation: ``run`` gives ``(output, saved)``, ``grad`` maps the output gradient
    to one gradient per tensor input (``None`` where the input gets none)."""

    def __init__(self, node: str, inputs: Sequence[str]) -> None:
        super().__init__()
        self.node = node
        self.inputs = tuple(inputs)

    def run(self, *xs: Tensor) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def grad(self, g: Tensor, saved: Any, rule: str) -> tuple[Tensor | None, ...]:
        raise NotImplementedError


class Conv(Step):
    """``F.conv2d``; backward ``conv_transpose2d`` with the same weight, back to the input's size."""

    def __init__(self, node: str, inputs: Sequence[str], conv: nn.Conv2d, padding: tuple[int, int],
                 in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__(node, inputs)
        self.register_buffer("weight", conv.weight.detach())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach())
        self.stride, self.dilation, self.groups = tuple(conv.stride), tuple(conv.dilation), conv.groups
        self.padding = padding
        k = conv.weight.shape[2:]
        self.output_padding = tuple(
            in_hw[i] - ((out_hw[i] - 1) * self.stride[i] - 2 * padding[i] + self.dilation[i] * (k[i] - 1) + 1)
            for i in range(2)
        )

    def run(self, x: Tensor) -> tuple[Tensor, Any]:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups), None

    def grad(self, g: Tensor, saved: Any, rule: str) -> tuple[Tensor | None, ...]:
        return (F.conv_transpose2d(g, self.weight, None, self.stride, self.padding, self.output_padding,
                                   self.groups, self.dilation),)


class Linear(Step):
    """``F.linear``; backward ``g @ W``."""

    def __init__(self, node: str, inputs: Sequence[str], linear: nn.Linear) -> None:
        super().__init__(node, inputs)
        self.register_buffer("weight", linear.weight.detach())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())

    def run(self, x: Tensor) -> tuple[Tensor, Any]:
        return F.linear(x, self.weight, self.bias), None

    def grad(self, g: Tensor, saved: Any, rule: str) -> tuple[Tensor | None, ...]:
        return (torch.matmul(g, self.weight),)


class BatchNorm(Step):
    """Eval-mode batch norm; backward: the per-channel affine scale ``γ/√(var+ε)``."""

    def __init__(self, node: str, inputs: Sequence[str], bn: nn.modules.batchnorm._BatchNorm, ndim: int) -> None:
        super().__init__(node, inputs)
        for name in ("running_mean", "running_var"):
            self.register_buffer(name, getattr(bn, name).detach())
        affine = bn.affine
        self.register_buffer("weight", bn.weight.detach() if affine else None)
        self.register_buffer("bias", bn.bias.detach() if affine else None)
        self.eps = bn.eps
        scale = 1 / torch.sqrt(bn.running_var + bn.eps)
        if affine:
            scale = bn.weight.detach() * scale
        self.register_buffer("scale", scale.reshape(1, -1, *([1] * (ndim - 2))))

    def run(self, x: Tensor) -> tuple[Tensor, Any]:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps), None

    def grad(self, g: Tensor, saved: Any, rule: str) -> tuple[Tensor | None, ...]:
        return (g * self.scale,)


class Activation(Step):
    """A ReLU-family activation call (``index`` in call order) and its backward rules.

    With gate ``φ'(f)`` (``1[f>0]``, ``1[low<f<high]``, or ``1 / slope`` for leaky ReLU), ``g_in`` is:
    ``"gradient"``: ``g ⊙ φ'(f)``; ``"guided"``: ``max(g, 0) ⊙ φ'(f)``; ``"deconvnet"``: ``max(g, 0)``;
    ``"lpr"``: where a frozen rule is set (:meth:`set_channel_rule`), ``g ⊙ tanh(W ⊙ (f − f_ref))``
    (variant ``"feature"``; ``f_ref = 0`` without reference) or ``tanh(W ⊙ g)`` (variant ``"gradient"``),
    times ``φ'(f)`` with ``keep_activation_mask`` (``1[f>low]`` for hardtanh with ``pass_saturated``); the
    plain gradient at calls without a rule. ``W`` is per channel, per position, or predicted per position
    from ``f − f_ref`` (:func:`~pyexplain.core.rule_predictor.predicted_weight`).
    """

    def __init__(self, node: str, inputs: Sequence[str], index: int, kind: str, low: float = 0.0,
                 high: float = float("inf"), negative_slope: float = 0.0) -> None:
        super().__init__(node, inputs)
        self.index, self.kind = index, kind
        self.low, self.high, self.negative_slope = low, high, negative_slope
        self.register_buffer("rule_weight", None)
        self.register_buffer("rule_reference", None)
        for key in PREDICTOR_KEYS:
            self.register_buffer(f"rule_predictor_{key}", None)
        self.rule_variant, self.rule_keeps_gate, self.rule_passes_saturated = "feature", False, False

    def set_channel_rule(self, weight: Tensor, reference: Tensor, variant: str = "feature",
                         keep_activation_mask: bool = False, predictor: dict[str, Tensor] | None = None,
                         pass_saturated: bool = False) -> None:
        """Freeze an LPR rule: ``weight`` per channel ``[C]`` (or per position: the activation's shape
        without batch) and ``reference``, the reference image's activation input ``[1, ...]``; with
        ``predictor`` (per-channel ``weight`` only), ``W`` is predicted from ``f − reference``; with
        ``pass_saturated`` the kept gate of a hardtanh is ``1[f > low]``."""
        shape = reference.shape[1:]
        if weight.numel() == shape[0]:
            weight = weight.reshape(1, shape[0], *([1] * (len(shape) - 1)))
        else:
            weight = weight.reshape(1, *shape)
        self.rule_weight = weight.detach().to(reference).clone()
        self.rule_reference = reference.detach().clone() if variant == "feature" or predictor is not None else None
        for key in PREDICTOR_KEYS:
            value = None if predictor is None else predictor[key].detach().to(reference).clone()
            setattr(self, f"rule_predictor_{key}", value)
        self.rule_variant, self.rule_keeps_gate = variant, keep_activation_mask
        self.rule_passes_saturated = pass_saturated

    def _rule_weight(self, f: Tensor) -> Tensor:
        """``W`` at the activation inputs ``f``: the frozen tensor, or the predictor's output."""
        if self.rule_predictor_scale is None:
            return self.rule_weight
        predictor = {key: getattr(self, f"rule_predictor_{key}") for key in PREDICTOR_KEYS}
        return predicted_weight(f - self.rule_reference, self.rule_weight.flatten(), predictor)

    def run(self, x: Tensor) -> tuple[Tensor, Any]:
        if self.kind == "relu":
            return torch.clamp(x, min=0), x
        if self.kind == "hardtanh":
            return torch.clamp(x, self.low, self.high), x
        return torch.where(x > 0, x, x * self.negative_slope), x

    def _gate(self, g: Tensor, f: Tensor, upper: bool = True) -> Tensor:
        """``g ⊙ φ'(f)``; without ``upper``, a hardtanh's gate is ``1[f > low]``."""
        if self.kind == "relu":
            return g * (f > 0).to(g.dtype)
        if self.kind == "hardtanh":
            return g * (((f > self.low) & (f < self.high)) if upper else f > self.low).to(g.dtype)
        return torch.where(f > 0, g, g * self.negative_slope)

    def grad(self, g: Tensor, saved: Any, rule: str) -> tuple[Tensor | None, ...]:
        if rule == "guided":
            return (self._gate(g.clamp(min=0), saved),)
        if rule == "deconvnet":
            return (g.clamp(min=0),)
        if rule == "lpr" and self.rule_weight is not None:
            weight = self._rule_weight(saved)
            if self.rule_variant == "gradient":
                g_in = torch.tanh(weight * g)
            else:
                g_in = plugin_rule(g, saved, self.rule_reference, weight)
            return (self._gate(g_in, saved, not self.rule_passes_saturated) if self.rule_keeps_gate else g_in,)
        return (self._gate(g, saved),)


class MaxPool(Step):
    """Max pooling; backward: scatter-add of the gradient into the stored argmax indices."""

    def __init__(self, node: str, inputs: Sequence[str], kernel, stride, padding, dilation, ceil_mode: bool,
                 in_shape: tuple[int, ...]) -> None:
        super().__init__(node, inputs)
        self.kernel, self.stride, self.padding, self.dilation = kernel, stride, padding, dilation
        self.ceil_mode = ceil_mode
        self.in_shape = tuple(in_shape)

    def run(self, x: Tensor) -> tuple[Tensor, Any]:
        y, indices = F.max_pool2d(x, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode,
                                  return_indices=True)
        return y, indices

    def grad(self, g: Tensor, saved: Any, rule: str) -> tuple[Tensor | None, ...]:
        c, h, w = self.in_shape
        flat = g.new_zeros((g.shape[0], c, h * w)).scatter_add(2, saved.flatten(2), g.flatten(2))
        return (flat.reshape(-1, c, h, w),)


def pool_matrix(size_in: int, size_out: int, windows: Sequence[tuple[int, int, int]]) -> Tensor:
    """``P[i, r] = 1/d_i`` for ``r`` in output ``i``'s window ``[start, end)`` with divisor ``d_i``."""
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    for i, (start, end, divisor) in enumerate(windows):
        matrix[i, start:end] = 1.0 / divisor
    return matrix


def adaptive_windows(size_in: int, size_out: int) -> list[tuple[int, int, int]]:
    """Adaptive average pooling's windows: ``[⌊i·n/m⌋, ⌈(i+1)·n/m⌉)``."""
    windows = []
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        windows.append((start, end, end - start))
    return windows


def avg_windows(size_in: int, size_out: int, kernel: int, stride: int, padding: int,
                count_include_pad: bool) -> list[tuple[int, int, int]]:
    """``AvgPool2d``'s windows along one axis (the divisor of a 2-D window is the product of both axes')."""
    windows = []
    for i in range(size_out):
        start = i * stride - padding
        end = min(start + kernel, size_in + padding)
        padded = end - start
        start, end = max(start, 0), min(end, size_in)
        windows.append((start, end, padded if count_include_pad else end - start))
    return windows


class AvgPool(Step):
    """Average pooling (adaptive or fixed) as separable matrices: ``y = P_h x P_wᵀ``,
    backward ``g_in = P_hᵀ g P_w``."""

    def __init__(self, node: str, inputs: Sequence[str], rows: Tensor, cols: Tensor, like: Tensor) -> None:
        super().__init__(node, inputs)
        self.register_buffer("rows", rows.to(like))
        self.register_buffer("rows_t", rows.t().contiguous().to(like))
        self.register_buffer("cols", cols.to(like))
        self.register_buffer("cols_t", cols.t().contiguous().to(like))

    def run(self, x: Tensor) -> tuple[Tensor, Any]:
        return torch.matmul(torch.matmul(self.rows, x), self.cols_t), None

    def grad(self, g: Tensor, saved: Any, rule: str) -> tuple[Tensor | None, ...]:
        return (torch.matmul(torch.matmul(self.rows_t, g), self.cols),)


class Pad(Step):
    """Constant padding ``(left, right, top, bottom)``; backward: the crop back to the input."""

    def __init__(self, node: str, inputs: Sequence[str], pads: tuple[int, int, int, int], value: float,
                 in_hw: tuple[int, int]) -> None:
        super().__init__(node, inputs)
        self.pads, self.value, self.in_hw = tuple(pads), value, tuple(in_hw)

    def run(self, x: Tensor) -> tuple[Tensor, Any]:
        return F.pad(x, self.pads, "constant", self.value), None

    def grad(self, g: Tensor, saved: Any, rule: str) -> tuple[Tensor | None, ...]:
        left, _, top, _ = self.pads
        h, w = self.in_hw
        return (g[:, :, top:top + h, left:left + w],)


class Reshape(Step):
    """Flatten/view/reshape keeping the batch dimension; backward: the inverse reshape."""

    def __init__(self, node: str, inputs: Sequence[str], in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__(node, inputs)
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def run(self, x: Tensor) -> tuple[Tensor, Any]:
        return x.reshape((-1,) + self.out_shape), None

    def grad(self, g: Tensor, saved: Any, rule: str) -> tuple[Tensor | None, ...]:
        return (g.reshape((-1,) + self.in_shape),)


class Identity(Step):
    """Dropout (eval) and identity: the gradient passes unchanged."""

    def run(self, x: Tensor) -> tuple[Tensor, Any]:
        return x, None

    def grad(self, g: Tensor, saved: Any, rule: str) -> tuple[Tensor | None, ...]:
        return (g,)


class Add(Step):
    """Sum of same-shaped tensors (residual connections) plus a constant; the gradient fans out
    unchanged to each summand."""

    def __init__(self, node: str, inputs: Sequence[str], constant: float = 0.0) -> None:
        super().__init__(node, inputs)
        self.constant = constant

    def run(self, *xs: Tensor) -> tuple[Tensor, Any]:
        total = xs[0]
        for x in xs[1:]:
            total = total + x
        return (total + self.constant if self.constant else total), None

    def grad(self, g: Tensor, saved: Any, rule: str) -> tuple[Tensor | None, ...]:
        return tuple(g for _ in self.inputs)


class Concat(Step):
    """``torch.cat`` along a non-batch dimension; backward: the split."""

    def __init__(self, node: str, inputs: Sequence[str], dim: int, sizes: Sequence[int]) -> None:
        super().__init__(node, inputs)
        self.dim, self.sizes = dim, list(sizes)

    def run(self, *xs: Tensor) -> tuple[Tensor, Any]:
        return torch.cat(xs, self.dim), None

    def grad(self, g: Tensor, saved: Any, rule: str) -> tuple[Tensor | None, ...]:
        return tuple(torch.split(g, self.sizes, self.dim))
