"""Localization against a known evidence region: the pointing game (Zhang et al.: Top-down Neural
Attention by Excitation Backprop, ECCV 2016) and relevance mass (Arras, Osman, Samek: CLEVR-XAI,
Information Fusion 2022).

- Pointing game: a hit when the map's maximum (the first in raster order on ties) lies within
  ``tolerance`` pixels (Euclidean, pixel centres) of the true region; 15 px at 224×224, scaled by
  ``sqrt(H·W)/224``.
- Relevance mass: the share of the map's *positive* attribution that falls inside the region,
  ``Σ_{p∈R} max(a_p, 0) / Σ_p max(a_p, 0)`` (0 for a map with no positive value).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import PyExplainError

TOLERANCE_AT_224 = 15.0


def _check(attribution: Tensor, regions: Tensor) -> tuple[Tensor, Tensor]:
    attribution_map = attribution.sum(1) if attribution.ndim == 4 else attribution
    regions = regions.to(attribution_map.device).bool()
    if attribution_map.ndim != 3 or regions.shape != attribution_map.shape:
        raise PyExplainError(f"regions {tuple(regions.shape)} must match the maps {tuple(attribution_map.shape)} ([N, H, W])")
    if not regions.flatten(1).any(1).all():
        raise PyExplainError("every image needs a non-empty ground-truth region")
    return attribution_map, regions


def default_tolerance(height: int, width: int) -> float:
    """15 px at 224×224, scaled with the image's side (geometric mean of height and width)."""
    return TOLERANCE_AT_224 * math.sqrt(height * width) / 224


def pointing_game(attribution: Tensor, regions: Tensor, tolerance: float | None = None) -> Tensor:
    """Hits ``[N]`` (bool) of each map's maximum on the region ``regions [N, H, W]``."""
    attribution_map, regions = _check(attribution, regions)
    n, h, w = attribution_map.shape
    tol = default_tolerance(h, w) if tolerance is None else tolerance
    flat = attribution_map.flatten(1)
    is_max = flat == flat.max(1, keepdim=True).values
    rank = torch.arange(h * w, 0, -1, device=flat.device)
    index = (is_max * rank).argmax(1)  # first maximum in raster order, deterministic on any device
    py, px = (index // w).float(), (index % w).float()
    yy, xx = torch.meshgrid(torch.arange(h, device=flat.device).float(), torch.arange(w, device=flat.device).float(), indexing="ij")
    d2 = (yy[None] - py[:, None, None]) ** 2 + (xx[None] - px[:, None, None]) ** 2
    nearest = torch.where(regions, d2, torch.full_like(d2, float("inf"))).flatten(1).min(1).values
    return nearest <= tol ** 2


def relevance_mass(attribution: Tensor, regions: Tensor) -> Tensor:
    """Share ``[N]`` of the positive attribution inside the region ``regions [N, H, W]``."""
    attribution_map, regions = _check(attribution, regions)
    positive = attribution_map.clamp(min=0).flatten(1)
    total = positive.sum(1)
    inside = (positive * regions.flatten(1)).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(total.dtype).tiny), torch.zeros_like(total))
