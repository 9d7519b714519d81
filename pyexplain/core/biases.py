"""Every additive offset of a network's forward pass, captured with the tensor it is added to.

For a piecewise-linear network, ``F(x) = ∇ₓF·x + Σ_b ∇_bF·b`` (completeness, Srinivas & Fleuret
2019): the sum runs over every bias-like term, here

- the biases of ``F.conv1d/2d/3d`` and ``F.linear`` calls;
- eval-mode batch norm's effective bias ``β − μ·γ/√(var+ε)`` (``F.batch_norm``);
- the saturated constant of clamping activations (ReLU6: ``6·1[f≥6]``).

:func:`capture_biases` records, for each such term, the output tensor it is added to and the bias
(broadcastable to that output), so that ``∂F/∂output ⊙ bias`` is the term's *bias-gradient* map.
Like :func:`~pyexplain.core.activations.intercept_activations`, it never modifies the model.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PyExplainError
from .activations import ActivationCall, intercept_activations, refuse_unsupported


@dataclass(frozen=True)
class BiasSite:
    """One additive offset: ``output`` (in the autograd graph) contains ``+ bias`` (broadcast).

    Conv, linear and batch-norm sites hold the bias in ``value``; a saturation site holds its
    activation's input ``pre_activation`` (kept by autograd for the backward anyway) and
    ``(low, high)`` in ``clamp``, and derives the bias when asked."""

    kind: str  # "conv", "linear", "batchnorm" or "saturation"
    module_name: str
    output: Tensor
    value: Tensor | None = None
    pre_activation: Tensor | None = None
    clamp: tuple[float, float] | None = None

    @property
    def bias(self) -> Tensor:
        """The offset, broadcastable to ``output``; for a clamping activation
        ``c = φ(f) − φ'(f)·f`` (:func:`~pyexplain.core.linearize.activation_offset`)."""
        if self.clamp is None:
            return self.value
        f = self.pre_activation
        return torch.clamp(f, *self.clamp) - torch.ops.aten.hardtanh_backward(f, f, *self.clamp)

    @property
    def per_channel(self) -> bool:
        """Whether the bias holds one value per channel (dimension 1) of the output: conv and batch norm."""
        return self.kind in ("conv", "batchnorm")


def _channel_bias(bias: Tensor, output: Tensor) -> Tensor:
    """A per-channel bias shaped to broadcast against ``[N, C, ...]``."""
    return bias.reshape(1, -1, *([1] * (output.ndim - 2)))


def _effective_bn_bias(args, kwargs) -> Tensor | None:
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    bound = {**dict(zip(names, args)), **kwargs}
    mean, var = bound.get("running_mean"), bound.get("running_var")
    if bound.get("training", False) or mean is None or var is None:
        raise PyExplainError("batch norm must use running statistics (eval mode) for the bias decomposition")
    eps = bound.get("eps", 1e-5)
    weight, bias = bound.get("weight"), bound.get("bias")
    scale = torch.rsqrt(var + eps) * (weight if weight is not None else 1)
    effective = -mean * scale + (bias if bias is not None else 0)
    return effective.detach()


def _native_activation(call: ActivationCall, f: Tensor) -> Tensor:
    """The activation by its own ATen kernel, so that its backward is the native one (one float
    kernel; ``clamp``'s backward builds boolean masks and runs ``where``, several times slower)."""
    if call.kind == "relu":
        return torch.relu(f)
    if call.kind == "hardtanh":
        return F.hardtanh(f, call.low, call.high)
    return F.leaky_relu(f, call.negative_slope)


@contextlib.contextmanager
def capture_biases(model: nn.Module, method: str = "the bias decomposition") -> Iterator[list[BiasSite]]:
    """Run forward passes of ``model`` recording every :class:`BiasSite`, in execution order.

    The decomposition is exact only for piecewise-linear networks: on leaving the context, a model
    that called another nonlinearity (SiLU, GELU, sigmoid, ...) is refused with a one-line
    ``"METHOD needs a piecewise-linear network ...; found KIND at MODULE"``::

        with capture_biases(model) as sites:
            logits = model(x)
        grads = torch.autograd.grad(score, [s.output for s in sites])  # term_k = grads[k] * sites[k].bias
    """
    sites: list[BiasSite] = []
    holder: dict = {}

    def module() -> str:
        return holder["tracker"].current_module()

    def rule(call: ActivationCall, f: Tensor) -> Tensor:
        out = _native_activation(call, f)
        if call.kind == "hardtanh":
            sites.append(BiasSite("saturation", call.module_name, out, pre_activation=f.detach(),
                                  clamp=(call.low, call.high)))
        return out

    def affine(kind: str, bias_index: int):
        def handler(func, args, kwargs):
            out = func(*args, **kwargs)
            bias = args[bias_index] if len(args) > bias_index else kwargs.get("bias")
            if bias is not None:
                shaped = bias.detach() if kind == "linear" else _channel_bias(bias.detach(), out)
                sites.append(BiasSite(kind, module(), out, shaped))
            return out
        return handler

    def batch_norm(func, args, kwargs):
        out = func(*args, **kwargs)
        sites.append(BiasSite("batchnorm", module(), out, _channel_bias(_effective_bn_bias(args, kwargs), out)))
        return out

    handlers = {F.conv1d: affine("conv", 2), F.conv2d: affine("conv", 2), F.conv3d: affine("conv", 2),
                F.linear: affine("linear", 2), F.batch_norm: batch_norm}
    with intercept_activations(model, rule, handlers) as tracker:
        holder["tracker"] = tracker
        yield sites
    refuse_unsupported(tracker, method, "needs a piecewise-linear network (ReLU family, max/avg pooling, "
                       "conv/linear/eval-BN)")
