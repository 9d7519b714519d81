"""Helpers shared by the gradient-based methods."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.activations import ActivationRule, ActivationTracker, identity_rule, intercept_activations
from ..core.targets import Targets, target_scores


def _rule_context(model: nn.Module, rule: ActivationRule):
    """Interception only when a rule changes something: the identity rule runs the plain model
    (no per-operation dispatch through the interception mode)."""
    return contextlib.nullcontext() if rule is identity_rule else intercept_activations(model, rule)


def input_gradient(
    model: nn.Module, x: Tensor, targets: Targets, rule: ActivationRule = identity_rule, *, clean: bool = True,
    check: Callable[[ActivationTracker], None] | None = None,
) -> Tensor:
    """``∂ score_t / ∂ x`` for every row, with ``rule`` applied at each activation call.

    ``clean=True`` marks ``x`` as the unmodified input, so its logits resolve top-1 targets.
    ``check`` sees what the (ruled) forward pass met, before the backward, and may refuse the model.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with _rule_context(model, rule) as tracker:
            logits = model(x)
        if check is not None and tracker is not None:
            check(tracker)
        if clean:
            targets.resolve(logits)
        (grad,) = torch.autograd.grad(targets.scores(logits).sum(), x)
    return grad


def upsample_to_input(cam: Tensor, x: Tensor, mode: str = "bilinear") -> Tensor:
    """Upsample a coarse map ``[N, h, w]`` to the input's size, broadcast over channels so the
    attribution's channel sum equals the upsampled map."""
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    up = F.interpolate(cam[:, None], size=x.shape[-2:], mode=mode, **kwargs)
    return up.expand(-1, x.shape[1], -1, -1) / x.shape[1]


def per_image_range(x: Tensor) -> Tensor:
    """``max − min`` of each image, shaped ``[N, 1, 1, 1]`` for broadcasting."""
    flat = x.flatten(1)
    return (flat.max(1).values - flat.min(1).values).reshape(-1, 1, 1, 1)


def batched(fn: Callable[[Tensor], Tensor], inputs: Tensor, batch: int) -> Tensor:
    """Apply ``fn`` to ``inputs`` in slices of ``batch`` rows and concatenate."""
    return torch.cat([fn(inputs[i:i + batch]) for i in range(0, inputs.shape[0], batch)])


def gradient_of_scores(
    model: nn.Module, inputs: Tensor, target_indices: Tensor, targets: Targets, rule: ActivationRule = identity_rule
) -> Tensor:
    """``∂ score / ∂ inputs`` for arbitrary rows (noisy or scaled copies) with explicit class indices."""
    inputs = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        with _rule_context(model, rule):
            logits = model(inputs)
        (grad,) = torch.autograd.grad(target_scores(logits, target_indices, targets.score).sum(), inputs)
    return grad
