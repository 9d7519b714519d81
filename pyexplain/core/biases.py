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
import weakref
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PyExplainError
from .activations import PIECEWISE_LINEAR, activation_functions, intercept_activations, refuse_unsupported


@dataclass(frozen=True)
class BiasSite:
    """One additive offset: ``output`` (in the autograd graph) contains ``+ bias`` (broadcast).

    Conv, linear and batch-norm sites hold the bias in ``value``. A saturation site holds its
    activation's ``(low, high)`` in ``clamp`` and, in ``reference``, the tensor autograd keeps for
    the activation's backward: its input ``f``, or its output ``y`` for an in-place call (``y`` is
    at a bound exactly where ``f`` is beyond it); it derives the bias when asked."""

    kind: str  # "conv", "linear", "batchnorm" or "saturation"
    module_name: str
    output: Tensor
    value: Tensor | None = None
    reference: Tensor | None = None
    clamp: tuple[float, float] | None = None

    @property
    def bias(self) -> Tensor:
        """The offset, broadcastable to ``output``; for a clamping activation
        ``c = φ(f) − φ'(f)·f`` (:func:`~pyexplain.core.linearize.activation_offset`, also right when
        computed from ``y``)."""
        if self.clamp is None:
            return self.value
        f = self.reference
        return torch.clamp(f, *self.clamp) - torch.ops.aten.hardtanh_backward(f, f, *self.clamp)

    @property
    def per_channel(self) -> bool:
        """Whether the bias holds one value per channel (dimension 1) of the output: conv and batch norm."""
        return self.kind in ("conv", "batchnorm")


def _channel_bias(bias: Tensor, output: Tensor) -> Tensor:
    """A per-channel bias shaped to broadcast against ``[N, C, ...]``."""
    return bias.reshape(1, -1, *([1] * (output.ndim - 2)))


#: Effective batch-norm biases by ``id`` of the running variance (dropped when it is freed):
#: ``(state, (var, mean, weight, bias) with var held weakly, bias)``.
_BN_BIASES: dict[int, tuple] = {}


def _effective_bn_bias(args, kwargs) -> Tensor:
    """``β − μ·γ/√(var+ε)`` of an eval-mode ``F.batch_norm`` call, remembered while its tensors keep
    their identity, version counter and storage (a model explained again reuses it)."""
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    bound = {**dict(zip(names, args)), **kwargs}
    mean, var = bound.get("running_mean"), bound.get("running_var")
    if bound.get("training", False) or mean is None or var is None:
        raise PyExplainError("batch norm must use running statistics (eval mode) for the bias decomposition")
    eps = bound.get("eps", 1e-5)
    weight, bias = bound.get("weight"), bound.get("bias")
    others = (mean, weight, bias)
    state = (eps, *((None if t is None else (t._version, t.data_ptr())) for t in (var, *others)))
    cached = _BN_BIASES.get(id(var))
    if (cached is not None and cached[0] == state and cached[1][0]() is var
            and all(a is b for a, b in zip(cached[1][1:], others))):
        return cached[2]
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    effective = (torch.addcmul(bias, mean, scale, value=-1) if bias is not None else -mean * scale).detach()
    if id(var) not in _BN_BIASES:
        weakref.finalize(var, _BN_BIASES.pop, id(var), None)
    _BN_BIASES[id(var)] = (state, (weakref.ref(var), *others), effective)
    return effective


@contextlib.contextmanager
def capture_biases(model: nn.Module, method: str = "the bias decomposition",
                   on_site: Callable[[BiasSite], None] | None = None) -> Iterator[list[BiasSite]]:
    """Run forward passes of ``model`` recording every :class:`BiasSite`, in execution order, and
    calling ``on_site`` on each as it is recorded.

    Every activation runs as the model calls it, in place when asked: a site's output may then be
    overwritten later (a batch norm's output by ``ReLU(inplace=True)``). Take gradients with tensor
    hooks registered in ``on_site`` — a hook registered before an in-place operation receives the
    gradient of the value before it::

        grads = {}
        def keep(site):
            site.output.register_hook(lambda g: grads.__setitem__(id(site), g))
        with capture_biases(model, on_site=keep) as sites:
            logits = model(x)
        torch.autograd.grad(score, x)  # term of site s: grads[id(s)] * s.bias (no entry: zero)

    The decomposition is exact only for piecewise-linear networks: on leaving the context, a model
    that called another nonlinearity (SiLU, GELU, sigmoid, ...) is refused with a one-line
    ``"METHOD needs a piecewise-linear network ...; found KIND at MODULE"``.
    """
    sites: list[BiasSite] = []
    holder: dict = {}

    def module() -> str:
        return holder["tracker"].current_module()

    def record(site: BiasSite) -> None:
        sites.append(site)
        if on_site is not None:
            on_site(site)

    def clamping(parse: Callable):
        def handler(func, args, kwargs):
            f, params, inplace = parse(args, kwargs)
            out = func(*args, **kwargs)
            reference = (out if inplace else f).detach()
            record(BiasSite("saturation", module(), out, reference=reference, clamp=(params["low"], params["high"])))
            return out
        return handler

    def unchanged(func, args, kwargs):
        return func(*args, **kwargs)

    def affine(kind: str, bias_index: int):
        def handler(func, args, kwargs):
            out = func(*args, **kwargs)
            bias = args[bias_index] if len(args) > bias_index else kwargs.get("bias")
            if bias is not None:
                shaped = bias.detach() if kind == "linear" else _channel_bias(bias.detach(), out)
                record(BiasSite(kind, module(), out, shaped))
            return out
        return handler

    def batch_norm(func, args, kwargs):
        out = func(*args, **kwargs)
        record(BiasSite("batchnorm", module(), out, _channel_bias(_effective_bn_bias(args, kwargs), out)))
        return out

    handlers = {func: clamping(parse) if kind == "hardtanh" else unchanged
                for func, (kind, parse) in activation_functions(PIECEWISE_LINEAR).items()}
    handlers.update({F.conv1d: affine("conv", 2), F.conv2d: affine("conv", 2), F.conv3d: affine("conv", 2),
                     F.linear: affine("linear", 2), F.batch_norm: batch_norm})
    with intercept_activations(model, op_handlers=handlers, kinds=frozenset()) as tracker:
        holder["tracker"] = tracker
        yield sites
    refuse_unsupported(tracker, method, "needs a piecewise-linear network (ReLU family, max/avg pooling, "
                       "conv/linear/eval-BN)")
