"""The local affine form of a piecewise-linear network, replayed as a *gated forward* pass.

A network of conv/linear layers, eval-mode BN, average and max pooling, residual adds and
ReLU/ReLU6/LeakyReLU is affine on a neighbourhood of a given input ``x₀``: each activation acts as
``φ(f) = gate(f₀) ⊙ f + offset(f₀)`` (ReLU: gate ``1[f₀>0]``; ReLU6: ``1[0<f₀<6]`` with the
saturated constant ``6·1[f₀≥6]`` as offset; LeakyReLU: its slope) and each max-pool picks the
argmax it picked at ``x₀``. :func:`linearize` runs the clean pass and freezes those gates, offsets
and argmax indices; :func:`gated_forward` replays the model with them frozen and with activation
call ``l``'s output multiplied by a mask ``m_l``::

    G(x; m) = network in which call l returns m_l ⊙ (gate_l ⊙ f + offset_l), pools use frozen indices.

``G(x₀; 1) = F(x₀)``. ``G`` is affine in ``x`` and in every additive offset of the network (conv,
linear and BN biases, saturation constants), so ``G(x₀; m) = ∇ₓG·x₀ + Σ_b ∇_bG·b``, and ``∇G`` is
the gradient of ``F`` with the gradient at every activation output multiplied by ``m_l``: the
gated forward *is* the masked-backward decomposition of DMBP (Ruiz et al., ICCV 2021), evaluated
without a double backward.

Non-piecewise-linear nonlinearities are refused unless ``smooth=True``, which linearizes them too
(documented in :func:`linearize`).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PyExplainError
from .activations import ACTIVATIONS, GATES, ActivationCall, intercept_activations


def activation_offset(call: ActivationCall, pre: Tensor) -> Tensor | None:
    """The constant part ``c`` of a piecewise-linear activation at ``pre``: ``φ(f) = φ'(f)·f + c``.

    Only clamping activations (ReLU6/hardtanh) have one: their saturated value; ``None`` otherwise.
    """
    if call.kind != "hardtanh":
        return None
    # φ'(f)·f is hardtanh's backward of f itself (float kernels only, no boolean masks).
    return call.forward(pre) - torch.ops.aten.hardtanh_backward(pre, pre, call.low, call.high)


# Self-gated activations φ(f) = f · g(f): linearized as g(f₀) ⊙ f, like ReLU = f · 1[f>0].
def _gelu_gate(f: Tensor, approximate: str = "none") -> Tensor:
    if approximate == "tanh":
        return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (f + 0.044715 * f ** 3)))
    return 0.5 * (1 + torch.erf(f / math.sqrt(2)))


_SELF_GATED: dict[Callable, tuple[str, Callable[[Tensor, dict], Tensor]]] = {
    F.silu: ("silu", lambda f, kw: torch.sigmoid(f)),
    F.gelu: ("gelu", lambda f, kw: _gelu_gate(f, kw.get("approximate", "none"))),
    F.hardswish: ("hardswish", lambda f, kw: torch.clamp(f + 3, 0, 6) / 6),
    F.mish: ("mish", lambda f, kw: torch.tanh(F.softplus(f))),
}
_SELF_GATED_KINDS = {kind for kind, _ in _SELF_GATED.values()}
# Saturating gates (squeeze-excitation, attention gates): their clean output is frozen as a constant.
_FROZEN_OUTPUT: dict[Callable, str] = {
    torch.sigmoid: "sigmoid", torch.Tensor.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    F.hardsigmoid: "hardsigmoid", torch.tanh: "tanh", torch.Tensor.tanh: "tanh", F.tanh: "tanh",
}
_UNSUPPORTED = {F.elu: "elu", F.selu: "selu", F.softplus: "softplus", F.celu: "celu"}


@dataclass(frozen=True)
class FrozenUnit:
    """One activation call with its clean-pass state frozen: ``φ(f) ≈ gate ⊙ f + offset``.

    ``gate`` is the derivative at the clean pre-activation (ReLU ``1[f₀>0]``, ReLU6 ``1[0<f₀<6]``,
    LeakyReLU its slope; ``g(f₀)`` for self-gated activations under ``smooth=True``), ``offset``
    the saturated constant of clamping units (None otherwise). Frozen-output units (``smooth=True``
    sigmoid/tanh gates) keep ``constant`` instead and take no mask.
    """

    index: int
    kind: str
    module_name: str
    gate: Tensor | None = None
    offset: Tensor | None = None
    constant: Tensor | None = None

    @property
    def masked(self) -> bool:
        """Whether the unit takes a mask (every unit except frozen-output gates)."""
        return self.constant is None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple((self.gate if self.constant is None else self.constant).shape)

    def apply(self, f: Tensor, mask: Tensor | None) -> Tensor:
        """``mask ⊙ (gate ⊙ f + offset)`` (``mask=None``: no mask). ``f`` may hold the clean batch
        repeated ``k`` times; the frozen state broadcasts over the repeats."""
        frozen = self.gate if self.constant is None else self.constant
        folded_shape = (f.shape[0] // frozen.shape[0], *frozen.shape)
        if self.constant is not None:
            return self.constant.expand(folded_shape).reshape(f.shape)
        folded = f.reshape(folded_shape)
        value = self.gate * folded if self.offset is None else torch.addcmul(self.offset, self.gate, folded)
        value = value.view(f.shape)
        return value if mask is None else value * mask


@dataclass(frozen=True)
class Linearization:
    """A network's frozen state at one input batch: activation units and max-pool indices, in call
    order, and the clean logits."""

    units: list[FrozenUnit]
    pool_indices: list[Tensor]
    logits: Tensor

    @property
    def masked_units(self) -> list[FrozenUnit]:
        """The units a mask applies to, in call order (the order :func:`gated_forward` expects masks)."""
        return [u for u in self.units if u.masked]


_POOL_SIGNATURE = inspect.signature(F._max_pool2d)
_ADAPTIVE_SIGNATURE = inspect.signature(F.adaptive_max_pool2d_with_indices)
_MAX_POOLS = {F.max_pool2d: _POOL_SIGNATURE, F.max_pool2d_with_indices: _POOL_SIGNATURE,
              torch.max_pool2d: _POOL_SIGNATURE, F.adaptive_max_pool2d: _ADAPTIVE_SIGNATURE,
              F.adaptive_max_pool2d_with_indices: _ADAPTIVE_SIGNATURE}
# Data-dependent operations the linearization does not freeze: refused, not silently mishandled.
_REFUSED = (F.max_pool1d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool3d, torch.max_pool1d,
            torch.max_pool3d, F.layer_norm, F.group_norm, F.instance_norm, F.softmax, F.log_softmax,
            torch.softmax, torch.Tensor.softmax, torch.log_softmax, torch.Tensor.log_softmax)


def _wants_indices(func, bound: dict) -> bool:
    return func in (F.max_pool2d_with_indices, F.adaptive_max_pool2d_with_indices) or bool(bound.get("return_indices"))


def _pool_with_indices(func, args, kwargs) -> tuple[Tensor, Tensor, bool]:
    """Run a 2-D max-pool call with indices: ``(output, indices, caller_wants_indices)``."""
    bound = _MAX_POOLS[func].bind(*args, **kwargs).arguments
    x = bound["input"]
    if "output_size" in bound:
        out, idx = F.adaptive_max_pool2d_with_indices(x, bound["output_size"])
    else:
        stride = bound.get("stride") or None  # torch.max_pool2d's default stride is []
        out, idx = F.max_pool2d_with_indices(x, bound["kernel_size"], stride, bound.get("padding", 0),
                                             bound.get("dilation", 1), bound.get("ceil_mode", False))
    return out, idx, _wants_indices(func, bound)


def _gather_pool(x: Tensor, idx: Tensor) -> Tensor:
    """Max-pool output at frozen argmax ``idx`` (flat indices into each ``H·W`` plane) of ``x``,
    which may hold the clean batch repeated ``k`` times."""
    n, c = idx.shape[:2]
    if x.shape[1] != c or x.shape[0] % n:
        raise PyExplainError("a max-pool's input changed shape between the clean and the gated pass")
    k = x.shape[0] // n
    planes = x.reshape(k, n * c, -1).gather(2, idx.reshape(1, n * c, -1).expand(k, -1, -1))
    return planes.view(k * n, *idx.shape[1:])


def _refuser(holder: dict):
    """An ``op_handlers`` entry refusing the data-dependent operations the linearization does not freeze."""
    def refuse(func, args, kwargs):
        tracker = holder.get("tracker")
        module = (tracker.current_module() if tracker is not None else "") or "the model's own forward"
        raise PyExplainError(f"dmbp needs a piecewise-linear network (ReLU family, max/avg pooling); found "
                             f"{getattr(func, '__name__', func)} at {module}, which the linearization does not "
                             "support (1-D/3-D max-pooling, layer/group/instance norm, softmax)")
    return refuse


def linearize(model: nn.Module, x: Tensor, *, smooth: bool = False) -> Linearization:
    """Run ``model(x)`` once (no grad) and freeze its activation gates/offsets and max-pool indices.

    A model with a nonlinearity that is not piecewise linear raises :class:`PyExplainError`, unless
    ``smooth=True``, which linearizes them at the clean pass as well:

    - self-gated activations ``φ(f) = f·g(f)`` — SiLU (``g = sigmoid``), GELU (``g = Φ``), Hardswish,
      Mish — keep ``g(f₀)`` as a frozen gate, ``φ ≈ g(f₀) ⊙ f``, and are masked like ReLUs;
    - sigmoid, hard-sigmoid and tanh (the gates of squeeze-excitation or attention blocks) are
      frozen at their clean output, a constant, and take no mask;
    - ELU, SELU, CELU and softplus are refused.

    With ``smooth=True``, ``G(x₀; 1) = F(x₀)`` still holds, but ``∇ₓG`` is no longer ``F``'s gradient.
    """
    units: list[FrozenUnit] = []
    pools: list[Tensor] = []
    holder: dict = {}

    def rule(call: ActivationCall, f: Tensor) -> Tensor:
        pre = f.detach()
        units.append(FrozenUnit(len(units), call.kind, call.module_name, gate=call.derivative(pre),
                                offset=activation_offset(call, pre)))
        return call.forward(f)

    def pool(func, args, kwargs):
        out, idx, wants = _pool_with_indices(func, args, kwargs)
        pools.append(idx)
        return (out, idx) if wants else out

    def self_gated(func, args, kwargs):
        kind, gate = _SELF_GATED[func]
        options = {k: v for k, v in kwargs.items() if k != "inplace"}  # run out of place
        units.append(FrozenUnit(len(units), kind, holder["tracker"].current_module(),
                                gate=gate(args[0].detach(), options)))
        return func(args[0], **options)

    def frozen_output(func, args, kwargs):
        out = func(*args, **kwargs)
        units.append(FrozenUnit(len(units), _FROZEN_OUTPUT[func], holder["tracker"].current_module(),
                                constant=out.detach().clone()))
        return out

    handlers = {func: pool for func in _MAX_POOLS}
    handlers.update({func: _refuser(holder) for func in _REFUSED})
    if smooth:
        handlers.update({func: self_gated for func in _SELF_GATED})
        handlers.update({func: frozen_output for func in _FROZEN_OUTPUT})
    with torch.no_grad(), intercept_activations(model, rule, handlers) as tracker:
        holder["tracker"] = tracker
        logits = model(x)
    unsupported = tracker.first_other((ACTIVATIONS | GATES) - frozenset(_UNSUPPORTED.values()))
    if unsupported is not None:
        raise PyExplainError(f"dmbp needs a piecewise-linear network (ReLU family, max/avg pooling); found "
                             f"{unsupported.kind} at {unsupported.where}, which linearize=True does not cover either "
                             "(it covers silu, gelu, hardswish, mish, sigmoid, hardsigmoid, tanh)")
    other = tracker.first_other()
    if other is not None:
        raise PyExplainError(f"dmbp needs a piecewise-linear network (ReLU family, max/avg pooling); found "
                             f"{other.kind} at {other.where}, which is not piecewise linear; pass linearize=True to "
                             "freeze SiLU/GELU/Hardswish/Mish and sigmoid/tanh gates at the clean pass")
    return Linearization(units, pools, logits)


def gated_forward(model: nn.Module, x: Tensor, state: Linearization, masks: Sequence[Tensor] | None = None) -> Tensor:
    """``G(x; masks)``: ``model(x)`` with ``state``'s gates, offsets and max-pool indices frozen and
    mask ``masks[k]`` on the ``k``-th masked unit (``None``: no masks, so ``G(x₀) = F(x₀)``).

    ``x`` has the clean batch's size or a multiple of it: ``k`` stacked copies, ``torch.cat([x₀] * k)``
    (the frozen state broadcasts; masks have the stacked size). Differentiable in ``x`` and the masks.
    """
    if masks is not None and len(masks) != len(state.masked_units):
        raise PyExplainError(f"got {len(masks)} masks for {len(state.masked_units)} masked activation calls")
    counters = {"unit": 0, "mask": 0, "pool": 0}

    def next_unit(f: Tensor) -> FrozenUnit:
        k = counters["unit"]
        shape = state.units[k].shape if k < len(state.units) else None
        if shape is None or shape[1:] != tuple(f.shape[1:]) or f.shape[0] % shape[0]:
            raise PyExplainError("the model's activation calls differ from the clean pass "
                                 "(data-dependent control flow or a different batch size)")
        counters["unit"] += 1
        return state.units[k]

    def apply(unit: FrozenUnit, f: Tensor) -> Tensor:
        mask = None
        if unit.masked and masks is not None:
            mask = masks[counters["mask"]]
            counters["mask"] += 1
        return unit.apply(f, mask)

    def rule(call: ActivationCall, f: Tensor) -> Tensor:
        return apply(next_unit(f), f)

    def smooth_unit(func, args, kwargs):
        return apply(next_unit(args[0]), args[0])

    def pool(func, args, kwargs):
        bound = _MAX_POOLS[func].bind(*args, **kwargs).arguments
        k = counters["pool"]
        if k >= len(state.pool_indices):
            raise PyExplainError("the model's max-pool calls differ from the clean pass")
        counters["pool"] += 1
        idx = state.pool_indices[k]
        out = _gather_pool(bound["input"], idx)
        if not _wants_indices(func, bound):
            return out
        return out, idx.repeat(out.shape[0] // idx.shape[0], *([1] * (idx.ndim - 1)))

    handlers = {func: pool for func in _MAX_POOLS}
    handlers.update({func: _refuser({}) for func in _REFUSED})
    if any(u.kind in _SELF_GATED_KINDS or not u.masked for u in state.units):
        handlers.update({func: smooth_unit for func in (*_SELF_GATED, *_FROZEN_OUTPUT)})
    with intercept_activations(model, rule, handlers):
        logits = model(x)
    if counters["unit"] != len(state.units) or counters["pool"] != len(state.pool_indices):
        raise PyExplainError("the model's activation calls differ from the clean pass (data-dependent control flow)")
    return logits

