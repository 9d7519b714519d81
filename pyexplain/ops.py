"""The two hot backward operations: fused C++/CUDA kernels, with a pure-PyTorch fallback.

- ``plugin_rule(g_out, f, f_ref, W) = g_out ⊙ tanh(W ⊙ (f − f_ref))`` — LPR's learned rule (SPEC §3).
- ``masked_relu_backward(g_out, f, mask, low, high) = g_out ⊙ 1[low < f < high] ⊙ mask`` — the
  ReLU (``high=inf``) / ReLU6 (``high=6``) gate times a mask (DMBP's σ, Guided Backprop).

Both are differentiable in every tensor argument, to second order, so LPR's ``create_graph=True``
optimization goes through them. When the compiled extension ``pyexplain._C`` is loaded, calls
whose arguments it takes (see :mod:`pyexplain._kernels`: CPU float32/float64, CUDA also half and
bfloat16; ``f_ref``/``W``/``mask`` full-size, per-channel or shared by the batch) run the fused
kernels, first and second order; other calls run the fallback below. :func:`backend` says which
implementation is in use; ``PYEXPLAIN_BACKEND=fallback`` in the environment forces the fallback.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Iterator

import torch
from torch import Tensor

from . import _kernels
from .errors import PyExplainError

_forced_fallback = False


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


def _fused(f: Tensor) -> bool:
    """The extension is in use and nothing is tracing: exporters and compilers (TorchScript tracing,
    fx, torch.compile / torch.export) see the fallback's standard ops."""
    if backend() != "extension" or isinstance(f, torch.fx.Proxy):
        return False
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling())


def plugin_rule(g_out: Tensor, f: Tensor, f_ref: Tensor | None, weight: Tensor) -> Tensor:
    """``g_out ⊙ tanh(W ⊙ (f − f_ref))`` (``f_ref`` and ``W`` broadcast against ``f``; ``None`` = 0)."""
    if _fused(f):
        ref = f_ref if f_ref is not None else f.new_zeros(())
        if _kernels.supported(f, (g_out,), (ref, weight)):
            return _kernels.plugin_rule(g_out, f, ref, weight)
    return plugin_rule_fallback(g_out, f, f_ref, weight)


def masked_relu_backward(g_out: Tensor, f: Tensor, mask: Tensor | None, low: float = 0.0,
                         high: float = math.inf) -> Tensor:
    """``g_out ⊙ 1[low < f < high] ⊙ mask`` (``mask`` broadcast against ``f``; ``None`` = 1)."""
    if _fused(f):
        m = mask if mask is not None else f.new_ones(())
        if _kernels.supported(f, (g_out,), (m,)):
            return _kernels.masked_relu_backward(g_out, f, m, low, high)
    return masked_relu_backward_fallback(g_out, f, mask, low, high)


def plugin_rule_fallback(g_out: Tensor, f: Tensor, f_ref: Tensor | None, weight: Tensor) -> Tensor:
    """The pure-PyTorch ``g_out ⊙ tanh(W ⊙ (f − f_ref))``."""
    return g_out * torch.tanh(weight * (f - f_ref if f_ref is not None else f))


def masked_relu_backward_fallback(g_out: Tensor, f: Tensor, mask: Tensor | None, low: float = 0.0,
                                  high: float = math.inf) -> Tensor:
    """The pure-PyTorch ``g_out ⊙ 1[low < f < high] ⊙ mask``."""
    gate = (f > low) & (f < high) if math.isfinite(high) else f > low
    out = g_out * gate.to(g_out.dtype)
    return out * mask if mask is not None else out
