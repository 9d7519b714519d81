"""DeepLIFT with the rescale rule, on the shared activation-call interception.

The rescale multiplier ``(φ(f) − φ(f_ref)) / (f − f_ref)`` is defined for any elementwise
nonlinearity, and DeepLIFT (Shrikumar et al. 2017) applies it to sigmoid and tanh as well as ReLU:
it goes on every call of the ReLU family, SiLU, GELU, Hardswish, Mish, ELU, SELU, CELU, softplus
and of sigmoid/hard-sigmoid/tanh gates. Operations that combine two input-dependent tensors
(the product of a squeeze-excitation gate with its features, attention, layer norm) have no
rescale rule and keep their gradient, so summation-to-delta is exact only for networks without them.

Cost: one forward pass in which each activation call computes its value and multiplier
(:func:`pyexplain.ops.rescale`: one fused pass over ``f`` and ``f_ref`` for the ReLU family on CPU,
about a dozen elementwise torch passes otherwise), one backward pass multiplying by the multipliers,
and the cache key of the constant reference's pass (:func:`model_state`, one pass over the weights).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..core.activations import ACTIVATIONS, GATES, ActivationCall, inplace_safe, intercept_activations
from ..core.model_state import model_state
from ..core.targets import Targets
from ..errors import PyExplainError
from ..registry import register_method

#: Every elementwise nonlinearity gets the rescale rule.
RESCALED_KINDS = ACTIVATIONS | GATES
_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def reference_like(reference: float | Tensor, x: Tensor, name: str = "reference") -> Tensor:
    """``reference`` (a number or a tensor broadcastable to ``x``) expanded to ``x``'s shape."""
    ref = torch.as_tensor(reference, dtype=x.dtype, device=x.device)
    try:
        return ref.expand_as(x).contiguous()
    except RuntimeError:
        raise PyExplainError(
            f"{name} of shape {tuple(ref.shape)} does not broadcast to the input {tuple(x.shape)}") from None


class _Rescaled(torch.autograd.Function):
    """An activation's precomputed ``value`` forwards; ``g_in = g_out ⊙ multiplier`` backwards."""

    @staticmethod
    def forward(ctx, f: Tensor, value: Tensor, multiplier: Tensor) -> Tensor:
        ctx.multiplier = multiplier
        return value

    @staticmethod
    def backward(ctx, g: Tensor):
        return g * ctx.multiplier, None, None


def _pool_call(args: tuple, kwargs: dict) -> tuple[Tensor, Callable[[Tensor], tuple[Tensor, Tensor]], bool]:
    """Split a ``F.max_pool2d`` call into its input, a pooling function returning indices, and whether
    the caller asked for the indices."""
    params = dict(zip(_POOL_ARGS, args), **kwargs)
    wants_indices = bool(params.pop("return_indices", False))
    x = params.pop("input")
    return x, lambda t: F.max_pool2d(t, **params, return_indices=True), wants_indices


class _RescaleMaxPool(torch.autograd.Function):
    """Max-pooling whose backward hands out ``Δout = out − out_ref`` as DeepLIFT contributions.

    Per window, ``max(out, out_ref) − out_ref`` goes to the input's winning position and
    ``out − max(out, out_ref)`` (non-zero only when the reference's maximum is larger) to the
    reference's winning position; overlapping windows add. The multiplier passed down is the
    contribution divided by ``x − x_ref`` (the plain max-pool gradient where ``|x − x_ref| < eps``).
    """

    @staticmethod
    def forward(ctx, x, x_ref, pool, eps):
        out, idx = pool(x)
        out_ref, idx_ref = pool(x_ref)
        high = torch.maximum(out, out_ref)
        ctx.save_for_backward(x - x_ref, high - out_ref, out - high, idx, idx_ref)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, g):
        delta, won_by_input, won_by_reference, idx, idx_ref = ctx.saved_tensors
        idx, idx_ref = idx.flatten(-2), idx_ref.expand_as(idx).flatten(-2)  # a shared reference row
        contribution = torch.zeros_like(delta).flatten(-2)
        contribution.scatter_add_(-1, idx, (g * won_by_input).flatten(-2))
        contribution.scatter_add_(-1, idx_ref, (g * won_by_reference).flatten(-2))
        gradient = torch.zeros_like(contribution).scatter_add_(-1, idx, g.flatten(-2))
        flat = delta.flatten(-2)
        distinct = flat.abs() >= ctx.eps
        g_in = torch.where(distinct, contribution / torch.where(distinct, flat, torch.ones_like(flat)), gradient)
        return g_in.view_as(delta), None, None, None


@dataclass(frozen=True)
class ReferencePass:
    """What the reference's forward pass hands DeepLIFT: every activation call's input ``f_ref`` and
    every max-pool call's input, in call order (batch 1 when every image shares the reference)."""

    activations: list[Tensor]
    pools: list[Tensor]


def _record_reference(model: nn.Module, reference: Tensor) -> ReferencePass:
    """One no-grad forward pass of ``reference``, recording its activation and max-pool inputs."""
    recorded = ReferencePass([], [])

    def record(call: ActivationCall, x: Tensor) -> Tensor:
        recorded.activations.append(x.detach())
        return call.forward(x)

    def record_pool(func, args, kwargs):
        recorded.pools.append(args[0].detach() if args else kwargs["input"].detach())
        return func(*args, **kwargs)

    handlers = {F.max_pool2d: record_pool}
    with torch.no_grad(), intercept_activations(model, record, handlers, kinds=RESCALED_KINDS):
        model(reference)
    return recorded


#: The last constant reference's pass of each model, with the key it was computed for.
_REFERENCES: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, ReferencePass]]" = weakref.WeakKeyDictionary()


def reference_pass(model: nn.Module, reference: float | Tensor, x: Tensor) -> ReferencePass:
    """The reference's recorded forward pass. A constant reference (a number) runs once per model
    state, value and image shape, at batch 1, and is reused while :func:`model_state` is unchanged;
    a tensor runs at batch 1 when its batch dimension is 1 (or absent), else at full batch."""
    if isinstance(reference, Tensor):
        ref = reference_like(reference, x)
        shared = reference.ndim < x.ndim or reference.shape[0] == 1
        return _record_reference(model, ref[:1] if shared else ref)
    key = (float(reference), tuple(x.shape[1:]), x.dtype, x.device, model_state(model))
    cached = _REFERENCES.get(model)
    if cached is None or cached[0] != key:
        cached = (key, _record_reference(model, reference_like(reference, x[:1])))
        _REFERENCES[model] = cached
    return cached[1]


def _mismatch(what: str) -> PyExplainError:
    return PyExplainError(f"the model's forward pass on the reference differs from the one on the input ({what}); "
                          "DeepLIFT needs the same sequence of operations for both")


@register_method(
    "deeplift",
    description="DeepLIFT rescale rule: differences from a reference (zero by default) propagated as multipliers",
    paper="Shrikumar, Greenside, Kundaje: Learning Important Features Through Propagating Activation Differences "
          "(ICML 2017)",
    cost="1 forward + 1 backward (+ 1 forward of a constant reference per model state and image shape, at batch 1)",
)
def deeplift(
    model: nn.Module, x: Tensor, targets: Targets, *, reference: float | Tensor = 0.0, maxpool: str = "rescale",
    eps: float = 1e-10,
) -> Tensor:
    """``A = (x − x_ref) ⊙ m``, where ``m`` is the gradient of ``F_t`` with every activation's
    derivative replaced by the rescale multiplier ``(φ(f) − φ(f_ref)) / (f − f_ref)`` (its own
    derivative where ``|f − f_ref| ≤ eps``).

    ``maxpool="rescale"`` hands out each max-pool window's output difference as in
    :class:`_RescaleMaxPool`; ``maxpool="gradient"`` passes multipliers to the input's winning
    position only (the plain max-pool gradient, the DeepLIFT reference implementation's default),
    which breaks summation to delta where the reference wins a window.

    ``f_ref`` are the activation inputs recorded from a forward pass of the reference (a number or
    a tensor broadcastable to the input; 0 = the all-zero normalized image); a constant reference's
    pass is computed once per model state and image shape (:func:`reference_pass`), and its batch-1
    ``f_ref`` is shared by the images. Each call's value and multiplier come from
    :func:`pyexplain.ops.rescale` (fused for the ReLU family). Summation to delta:
    ``ΣA = F_t(x) − F_t(x_ref)`` for networks of elementwise activations (ReLU family, SiLU, GELU,
    ..., sigmoid, tanh), max/avg pooling (``maxpool="rescale"``) and affine layers.
    """
    if maxpool not in ("rescale", "gradient"):
        raise PyExplainError(f"maxpool must be 'rescale' or 'gradient', got {maxpool!r}")
    ref = reference_like(reference, x)
    recorded = reference_pass(model, reference, x)
    ref_activations, ref_pools = recorded.activations, recorded.pools
    pool_calls = 0

    def rescale(call: ActivationCall, f: Tensor) -> Tensor:
        if call.index >= len(ref_activations) or ref_activations[call.index].shape[1:] != f.shape[1:]:
            raise _mismatch(f"activation call {call.index}")
        value, multiplier = ops.rescale(call, f.detach(), ref_activations[call.index], eps)
        return _Rescaled.apply(f, value, multiplier)

    inplace_safe(rescale)  # keeps only the multiplier, never f

    def pool(func, args, kwargs):
        nonlocal pool_calls
        f, pooling, wants_indices = _pool_call(args, kwargs)
        if pool_calls >= len(ref_pools) or ref_pools[pool_calls].shape[1:] != f.shape[1:]:
            raise _mismatch(f"max-pool call {pool_calls}")
        out = _RescaleMaxPool.apply(f, ref_pools[pool_calls], pooling, eps)
        pool_calls += 1
        return (out, pooling(f.detach())[1]) if wants_indices else out

    inputs = x.detach().requires_grad_(True)
    with torch.enable_grad():
        handlers = {F.max_pool2d: pool} if maxpool == "rescale" else {}
        with intercept_activations(model, rescale, handlers, kinds=RESCALED_KINDS) as tracker:
            logits = model(inputs)
        if len(tracker.calls) != len(ref_activations) or (handlers and pool_calls != len(ref_pools)):
            raise _mismatch("number of activation or max-pool calls")
        targets.resolve(logits)
        (grad,) = torch.autograd.grad(targets.scores(logits).sum(), inputs)
    return (x - ref) * grad
