"""The two hot backward operations, with a pure-PyTorch fallback.

- ``plugin_rule(g_out, f, f_ref, W) = g_out ⊙ tanh(W ⊙ (f − f_ref))`` — LPR's learned rule (SPEC §3).
- ``masked_relu_backward(g_out, f, mask, low, high) = g_out ⊙ 1[low < f < high] ⊙ mask`` — the
  ReLU (``high=inf``) / ReLU6 (``high=6``) gate times a mask (DMBP's σ, Guided Backprop).

Both are differentiable in every tensor argument, to second order, so LPR's ``create_graph=True``
optimization goes through them. :func:`backend` says which implementation is in use.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def backend() -> str:
    """``"fallback"``: the pure-PyTorch implementation below."""
    return "fallback"


def plugin_rule(g_out: Tensor, f: Tensor, f_ref: Tensor, weight: Tensor) -> Tensor:
    """``g_out ⊙ tanh(W ⊙ (f − f_ref))`` (``f_ref`` and ``W`` broadcast against ``f``)."""
    return g_out * torch.tanh(weight * (f - f_ref))


def masked_relu_backward(g_out: Tensor, f: Tensor, mask: Tensor, low: float = 0.0, high: float = math.inf) -> Tensor:
    """``g_out ⊙ 1[low < f < high] ⊙ mask``."""
    gate = (f > low) & (f < high) if math.isfinite(high) else f > low
    return g_out * gate.to(g_out.dtype) * mask
