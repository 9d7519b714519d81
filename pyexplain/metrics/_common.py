"""Helpers shared by the perturbation metrics: pixel ranks, step counts, blended-image curves, AUC."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..api import eval_mode, model_device
from ..core.targets import ScoreSpec, target_scores
from ..errors import PyExplainError


def as_map(attribution: Tensor, x: Tensor) -> Tensor:
    """An attribution ``[N, C, H, W]`` or a map ``[N, H, W]`` → the map ``[N, H, W]``, checked against ``x``."""
    if attribution.ndim == 4:
        attribution = attribution.sum(1)
    if attribution.ndim != 3 or attribution.shape[0] != x.shape[0] or attribution.shape[-2:] != x.shape[-2:]:
        raise PyExplainError(
            f"attribution of shape {tuple(attribution.shape)} does not match images {tuple(x.shape)}; "
            "give [N, C, H, W] or [N, H, W] maps of the images' size"
        )
    if not torch.isfinite(attribution).all():
        raise PyExplainError("attribution contains NaN or infinite values")
    return attribution.to(x.device)


def pixel_ranks(attribution_map: Tensor, descending: bool) -> Tensor:
    """Rank of each pixel ``[N, H*W]`` (0 = first removed/inserted) in the order of the map.

    Ties keep the raster order (stable sort), so the ranking is deterministic.
    """
    flat = attribution_map.flatten(1)
    order = torch.sort(flat, dim=1, descending=descending, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


def step_counts(total: int, last: int, steps: int) -> list[int]:
    """``steps + 1`` pixel counts from 0 to ``last`` in equal steps (rounded): ``round(k·last/steps)``."""
    if steps < 1:
        raise PyExplainError(f"steps must be at least 1, got {steps}")
    return [min(total, int(math.floor(k * last / steps + 0.5))) for k in range(steps + 1)]


def blended_curve(
    model: nn.Module,
    inside: Tensor,
    outside: Tensor,
    ranks: Tensor,
    counts: Sequence[int],
    classes: Tensor,
    score: ScoreSpec,
    batch_size: int = 64,
) -> Tensor:
    """Scores along a pixel-replacement path: ``[N, len(counts), M]``.

    Step ``k`` shows ``inside`` at the pixels of rank ``< counts[k]`` (all channels) and ``outside``
    elsewhere; the model's ``score`` of each of the ``M`` classes ``classes[:, m]`` is recorded.
    Every (image, step) pair is one row of a batched forward pass on the model's device.
    """
    device = model_device(model)
    inside, outside, ranks, classes = inside.to(device), outside.to(device), ranks.to(device), classes.to(device)
    n, c, h, w = inside.shape
    counts_t = torch.tensor(list(counts), device=device)
    pairs = [(i, k) for i in range(n) for k in range(len(counts))]
    out = torch.empty(n, len(counts), classes.shape[1], device=device)
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            rows = torch.tensor([p[0] for p in chunk], device=device)
            steps = torch.tensor([p[1] for p in chunk], device=device)
            keep = (ranks[rows] < counts_t[steps][:, None]).reshape(-1, 1, h, w)
            logits = model(torch.where(keep, inside[rows], outside[rows]))
            for m in range(classes.shape[1]):
                out[rows, steps, m] = target_scores(logits, classes[rows, m], score).float()
    return out


def trapezoid_auc(curve: Tensor) -> Tensor:
    """Area under ``curve[..., S]`` sampled at ``S`` equally spaced points of ``[0, 1]`` (trapezoid rule)."""
    if curve.shape[-1] < 2:
        raise PyExplainError("a curve needs at least two points for an AUC")
    return (curve[..., 1:] + curve[..., :-1]).sum(-1) / (2 * (curve.shape[-1] - 1))


def resolve_targets(model: nn.Module, x: Tensor, targets: Tensor | int | None) -> Tensor:
    """Class per image: given, or the top-1 class on the clean image."""
    if targets is None:
        with eval_mode(model), torch.no_grad():
            return model(x.to(model_device(model))).argmax(1)
    return torch.as_tensor(targets, dtype=torch.long, device=x.device).expand(x.shape[0]).clone()
