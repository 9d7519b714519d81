"""The hot backward operations: fused C++/CUDA kernels, with a pure-PyTorch fallback.

- ``plugin_rule(g_out, f, f_ref, W) = g_out ⊙ tanh(W ⊙ (f − f_ref))`` — LPR's learned rule (SPEC §3).
- ``masked_relu_backward(g_out, f, mask, low, high) = g_out ⊙ 1[low < f < high] ⊙ mask`` — the
  ReLU (``high=inf``) / ReLU6 (``high=6``) gate times a mask (DMBP's σ, Guided Backprop).
- ``abs_channel_stats(g, weight, reference, threshold)`` — FullGrad's reduction of one bias site's
  gradient (per-channel extremes and weighted channel sum of ``|g|``); CPU only, no autograd.
- ``epsilon_divide(r, z, ε) = r / (z + ε·s(z))`` and ``proportional_split(r, a, b, ε) = (a·q, b·q)``
  with ``q = r / (a + b + ε·s(a + b))``, ``s(z) = +1`` for ``z ≥ 0`` (either zero), −1 below — ε-LRP's
  backward divisions, one pass each instead of five to eight; CPU only, no autograd.
- ``rescale(call, f, f_ref, eps) = (φ(f), m)``, ``m = (φ(f) − φ(f_ref)) / (f − f_ref)`` (``φ'(f)`` where
  ``|f − f_ref| ≤ eps``) — DeepLIFT's rescale rule for one activation call; fused in one pass for the
  ReLU family (relu, hardtanh/ReLU6, leaky relu) on CPU, no autograd.
- ``checksums(tensors) = [(Σᵢ tᵢ, Σᵢ (i + 1)·tᵢ) for t in tensors]`` — two sums of each tensor's values
  (the model cache key, :func:`pyexplain.core.model_state.model_state`); fused in one pass per
  tensor and one call for the whole list on CPU (float32/float64/int64, contiguous).

The first two are differentiable in every tensor argument, to second order, so LPR's ``create_graph=True``
optimization goes through them. When the compiled extension ``pyexplain._C`` is loaded, calls
whose arguments it takes (see :mod:`pyexplain._kernels`: CPU float32/float64, CUDA also half and
bfloat16; ``f_ref``/``W``/``mask`` full-size, per-channel or shared by the batch) run the fused
kernels, first and second order; other calls run the fallback below. :func:`backend` says which
implementation is in use; ``PYEXPLAIN_BACKEND=fallback`` in the environment forces the fallback.

Guard: the first fused call of each op on a device type of :data:`GUARDED_DEVICE_TYPES` (CUDA: its
kernels run on fewer machines than the CPU ones, which every test run checks) first compares the
op — value, first- and second-order gradients on a small tensor — with the fallback. On a mismatch
the fused kernels are disabled for that device type in this process, with a one-line warning, and
:func:`disabled_kernels` (shown by ``pyexplain info``) says why.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor

from . import _kernels
from .core.activations import ActivationCall
from .errors import PyExplainError

_forced_fallback = False
FUSED_OPS = ("plugin_rule", "masked_relu_backward")
GUARDED_DEVICE_TYPES: set[str] = {"cuda"}
_checked: set[tuple[str, str]] = set()
_disabled: dict[str, str] = {}


def _environment_forces_fallback() -> bool:
    value = os.environ.get("PYEXPLAIN_BACKEND", "auto").strip().lower() or "auto"
    if value not in ("auto", "fallback"):
        raise PyExplainError(f"PYEXPLAIN_BACKEND must be 'auto' or 'fallback', got {value!r}")
    return value == "fallback"


def backend() -> str:
    """``"extension"`` when the fused kernels are loaded and in use, else ``"fallback"``."""
    if _forced_fallback or _environment_forces_fallback() or not _kernels.available():
        return "fallback"
    return "extension"


@contextlib.contextmanager
def use_fallback() -> Iterator[None]:
    """Within this context every op runs the pure-PyTorch fallback (for comparisons and benchmarks)."""
    global _forced_fallback
    previous, _forced_fallback = _forced_fallback, True
    try:
        yield
    finally:
        _forced_fallback = previous


def _fused(op: str, f: Tensor) -> bool:
    """The extension is in use, trusted on ``f``'s device, and nothing is tracing: exporters and
    compilers (TorchScript tracing, fx, torch.compile / torch.export) see the fallback's standard ops."""
    if backend() != "extension" or isinstance(f, torch.fx.Proxy):
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return kernels_trusted(op, f.device)


def disabled_kernels() -> dict[str, str]:
    """Device types whose fused kernels the guard disabled in this process, with the reason."""
    return dict(_disabled)


def kernels_trusted(op: str, device: torch.device) -> bool:
    """False once the guard found ``op`` (or another op) wrong on ``device``'s type; runs the check
    the first time ``op`` meets a guarded device type."""
    kind = device.type
    if kind in _disabled:
        return False
    if kind not in GUARDED_DEVICE_TYPES or (op, kind) in _checked:
        return True
    _checked.add((op, kind))
    error = _self_check(op, device)
    if error > 1e-4:
        _disabled[kind] = f"fused {op} differs from the reference by {error:.2e} on {kind}"
        print(f"warning: pyexplain's fused {kind} kernels are disabled for this process: {_disabled[kind]}; "
              f"the pure-PyTorch ops are used instead", file=sys.stderr, flush=True)
        return False
    return True


def _derivatives(fn: Callable[..., Tensor], inputs: list[Tensor]) -> list[Tensor]:
    """The value of ``fn`` and its first- and second-order gradients with respect to every input."""
    with torch.enable_grad():
        args = [t.detach().clone().requires_grad_() for t in inputs]
        out = fn(*args)
        first = torch.autograd.grad(out.square().sum(), args, create_graph=True, allow_unused=True)
        first = [g if g is not None else torch.zeros_like(a) for g, a in zip(first, args)]
        total = sum((g * g).sum() for g in first if g.requires_grad)
        second = torch.autograd.grad(total, args, allow_unused=True) if torch.is_tensor(total) else [None] * len(args)
    second = [g if g is not None else torch.zeros_like(a) for g, a in zip(second, args)]
    return [t.detach() for t in (out, *first, *second)]


def _self_check(op: str, device: torch.device) -> float:
    """Largest relative difference between the fused ``op`` and its fallback on a small float32 probe."""
    generator = torch.Generator().manual_seed(0)
    shape = (2, 3, 4, 5)

    def draw(*size: int, low: float = -1.0, high: float = 1.0) -> Tensor:
        return (torch.rand(size, generator=generator) * (high - low) + low).to(device)

    if op == "plugin_rule":
        inputs = [draw(*shape), draw(*shape), draw(1, 3, 4, 5), draw(1, 3, 1, 1, low=-2.0, high=2.0)]
        fused, reference = _kernels.plugin_rule, plugin_rule_fallback
    else:
        inputs = [draw(*shape), draw(*shape, low=-2.0, high=8.0), draw(*shape, low=0.0, high=1.0)]
        fused = lambda g, f, m: _kernels.masked_relu_backward(g, f, m, 0.0, 6.0)  # noqa: E731
        reference = lambda g, f, m: masked_relu_backward_fallback(g, f, m, 0.0, 6.0)  # noqa: E731
    try:
        got = _derivatives(fused, inputs)
    except RuntimeError:
        return math.inf
    want = _derivatives(reference, inputs)
    return max(((a - b).abs().max() / (1.0 + b.abs().max())).item() for a, b in zip(got, want))


def plugin_rule(g_out: Tensor, f: Tensor, f_ref: Tensor | None, weight: Tensor) -> Tensor:
    """``g_out ⊙ tanh(W ⊙ (f − f_ref))`` (``f_ref`` and ``W`` broadcast against ``f``; ``None`` = 0)."""
    if _fused("plugin_rule", f):
        ref = f_ref if f_ref is not None else f.new_zeros(())
        if _kernels.supported(f, (g_out,), (ref, weight)):
            return _kernels.plugin_rule(g_out, f, ref, weight)
    return plugin_rule_fallback(g_out, f, f_ref, weight)


def masked_relu_backward(g_out: Tensor, f: Tensor, mask: Tensor | None, low: float = 0.0,
                         high: float = math.inf) -> Tensor:
    """``g_out ⊙ 1[low < f < high] ⊙ mask`` (``mask`` broadcast against ``f``; ``None`` = 1)."""
    if _fused("masked_relu_backward", f):
        m = mask if mask is not None else f.new_ones(())
        if _kernels.supported(f, (g_out,), (m,)):
            return _kernels.masked_relu_backward(g_out, f, m, low, high)
    return masked_relu_backward_fallback(g_out, f, mask, low, high)


def abs_channel_stats(g: Tensor, weight: Tensor, reference: Tensor | None = None,
                      threshold: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """For ``g`` ``[N, C, H, W]`` and ``m = |g|`` (``reference`` None) or ``m = |g|·1[reference > threshold]``
    (``threshold_backward``'s gate, which keeps a NaN reference): ``(min m, max m)`` over positions ``[N, C]`` and the weighted
    channel sum ``Σ_c weight_c·m_c`` ``[N, H, W]``. The fused kernel reads ``g`` once (CPU float32/float64,
    contiguous); it has no autograd (FullGrad calls it in backward hooks, on gradients)."""
    if _kernels.stats_supported(g, weight, reference) and _fused("abs_channel_stats", g):
        return _kernels.abs_channel_stats(g, weight, reference, threshold)
    return abs_channel_stats_fallback(g, weight, reference, threshold)


def abs_channel_stats_fallback(g: Tensor, weight: Tensor, reference: Tensor | None = None,
                               threshold: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """The pure-PyTorch :func:`abs_channel_stats`: ``m`` built, then ``amin``, ``amax`` and a matrix-vector product."""
    m = g.abs() if reference is None else torch.ops.aten.threshold_backward(g, reference, threshold).abs_()
    total = torch.matmul(weight, m.flatten(2)).view(m.shape[0], *m.shape[2:])
    return m.amin((2, 3)), m.amax((2, 3)), total


def epsilon_divide(r: Tensor, z: Tensor, epsilon: float) -> Tensor:
    """``r / (z + ε·s(z))``, ``s(z) = +1`` for ``z ≥ 0`` (±0 included), −1 for ``z < 0``. The fused kernel
    (CPU float32/float64, contiguous, equal shapes, no autograd) makes one pass; same operations, same rounding."""
    if _kernels.elementwise_supported("epsilon_divide", r, z) and _fused("epsilon_divide", r):
        return _kernels.epsilon_divide(r, z, epsilon)
    return epsilon_divide_fallback(r, z, epsilon)


def epsilon_divide_fallback(r: Tensor, z: Tensor, epsilon: float) -> Tensor:
    """The pure-PyTorch :func:`epsilon_divide`; ``s(z)`` is ``sign(sign(z) + ½)`` (float kernels only)."""
    return r / stabilize(z, epsilon)


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + ε·s(z)`` with ``s(z) = sign(sign(z) + ½)``: ±1 exactly, +1 at ±0."""
    return torch.add(z, torch.sign(z).add_(0.5).sign_(), alpha=epsilon)


def proportional_split(r: Tensor, a: Tensor, b: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """``(a·q, b·q)`` with ``q = r / (a + b + ε·s(a + b))``: the relevance ``r`` of ``a + b`` split in
    proportion to the summands. One pass when fused (as :func:`epsilon_divide`)."""
    if _kernels.elementwise_supported("proportional_split", r, a, b) and _fused("proportional_split", r):
        return _kernels.proportional_split(r, a, b, epsilon)
    return proportional_split_fallback(r, a, b, epsilon)


def proportional_split_fallback(r: Tensor, a: Tensor, b: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """The pure-PyTorch :func:`proportional_split`."""
    q = epsilon_divide_fallback(r, a + b, epsilon)
    return a * q, b * q


def rescale(call: ActivationCall, f: Tensor, f_ref: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """DeepLIFT's rescale rule for activation ``call`` at input ``f`` against reference input ``f_ref``
    (shaped like ``f``, or ``[1, ...]`` shared by the batch): ``(φ(f), m)`` with
    ``m = (φ(f) − φ(f_ref)) / (f − f_ref)`` where ``|f − f_ref| > eps`` and ``m = φ'(f)`` elsewhere
    (NaN where either input is NaN). The fused kernel (ReLU family, CPU float32/float64, contiguous)
    reads ``f`` and ``f_ref`` once; other calls run :func:`rescale_fallback`. Neither records autograd."""
    if _kernels.rescale_supported(call.kind, f, f_ref) and _fused("rescale", f):
        return _kernels.rescale(call.kind, f, f_ref, call.low, call.high, call.negative_slope, eps)
    return rescale_fallback(call, f, f_ref, eps)


def rescale_fallback(call: ActivationCall, f: Tensor, f_ref: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The pure-PyTorch :func:`rescale`, for every kind of ``call`` (float kernels only: boolean masks and
    ``torch.where`` are several times slower on CPU). With ``distinct = sign(threshold(|Δ|, eps, 0))``
    (``1[|Δ| > eps]``, 0 for a NaN Δ) and ``same = 1 − distinct``:
    ``m = (φ(f) − φ(f_ref)) / (Δ + same) · distinct + same · φ'(f)``."""
    with torch.no_grad():
        delta = f - f_ref
        distinct = torch.threshold_(delta.abs(), eps, 0.0).sign_()
        same = 1 - distinct
        value = call.forward(f)
        ratio = (value - call.forward(f_ref)).div_(delta.add_(same))
        return value, ratio.mul_(distinct).add_(call.gate(same, f))


def checksums(tensors: Sequence[Tensor]) -> list[tuple[float, float]]:
    """``(Σᵢ tᵢ, Σᵢ (i + 1)·tᵢ)`` of every tensor, flattened: the total, and a position-weighted sum that
    changes when values move (any exchange of two unequal values). The fused kernel (contiguous CPU
    float32/float64/int64 tensors, all in one call) and :func:`checksums_fallback` (other tensors) both
    accumulate in float64, in different orders: they agree to rounding, not bit for bit."""
    tensors = list(tensors)
    flags = _kernels.checksums_supported(tensors)
    if not any(flags) or not _fused("checksums", tensors[flags.index(True)]):
        return checksums_fallback(tensors)
    sums = iter(_kernels.checksums([t for t, ok in zip(tensors, flags) if ok]))
    return [tuple(next(sums)) if ok else checksums_fallback([t])[0] for t, ok in zip(tensors, flags)]


#: Elements per step of :func:`checksums_fallback`: its float64 temporaries stay a few megabytes.
_CHECKSUM_CHUNK = 1 << 20


def checksums_fallback(tensors: Iterable[Tensor]) -> list[tuple[float, float]]:
    """The pure-PyTorch :func:`checksums`, in float64 (complex128 for complex tensors), chunk by chunk."""
    pairs = []
    for t in tensors:
        flat = t.detach().reshape(-1)
        dtype = torch.complex128 if flat.is_complex() else torch.float64
        total = by_position = 0.0
        for start in range(0, flat.numel(), _CHECKSUM_CHUNK):
            chunk = flat[start:start + _CHECKSUM_CHUNK].to(dtype)
            positions = torch.arange(start + 1, start + chunk.numel() + 1, dtype=dtype, device=chunk.device)
            total += chunk.sum().item()
            by_position += torch.dot(chunk, positions).item()
        pairs.append((total, by_position))
    return pairs


def plugin_rule_fallback(g_out: Tensor, f: Tensor, f_ref: Tensor | None, weight: Tensor) -> Tensor:
    """The pure-PyTorch ``g_out ⊙ tanh(W ⊙ (f − f_ref))``."""
    return g_out * torch.tanh(weight * (f - f_ref if f_ref is not None else f))


def masked_relu_backward_fallback(g_out: Tensor, f: Tensor, mask: Tensor | None, low: float = 0.0,
                                  high: float = math.inf) -> Tensor:
    """The pure-PyTorch ``g_out ⊙ 1[low < f < high] ⊙ mask``."""
    gate = (f > low) & (f < high) if math.isfinite(high) else f > low
    out = g_out * gate.to(g_out.dtype)
    return out * mask if mask is not None else out
