"""Insertion and deletion curves (Petsiuk, Das, Saenko: RISE, BMVC 2018), as used by DMBP's IM.

Pixels are ranked by decreasing attribution (map ``a = A.sum(1)``). *Insertion* starts from a
blurred copy of the image (Gaussian, kernel 11, σ 5, reflect padding) and puts the original pixels
back in that order; *deletion* starts from the image and sets them to 0 (the reference input).
Each step moves ``max(1, round(H·W/224))`` pixels — 224 pixels per step at 224×224, scaled with the
image — until every pixel has moved, so a curve has ``ceil(H·W/step) + 1`` points. The score is the
softmax probability of the target; the AUC is the trapezoid rule over the normalized x-axis
``[0, 1]`` (insertion: higher is better; deletion: lower is better).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from ._common import as_map, blended_curve, pixel_ranks, resolve_targets, trapezoid_auc
from .pixel_flipping import Curve

BLUR_KERNEL, BLUR_SIGMA = 11, 5.0
PIXELS_PER_STEP_AT_224 = 224


def rise_step_counts(total: int, pixels_per_step: int | None = None) -> list[int]:
    """``[0, s, 2s, …, total]`` with ``s = max(1, round(total·224/224²))`` unless given."""
    step = pixels_per_step or max(1, round(total * PIXELS_PER_STEP_AT_224 / 224 ** 2))
    n_steps = math.ceil(total / step)
    return [min(total, k * step) for k in range(n_steps + 1)]


def blurred(x: Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> Tensor:
    """The insertion metric's starting image: ``x`` blurred per channel (kernel clipped to the image)."""
    size = min(kernel, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)  # reflect padding needs kernel//2 < side
    return gaussian_blur(x, [size, size], [sigma, sigma])


def insertion_curve(
    model: nn.Module, x: Tensor, attribution: Tensor, classes: Tensor, *, descending: bool = True,
    pixels_per_step: int | None = None, batch_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Probabilities of each of ``classes [N, M]`` as pixels of ``x`` are inserted into its blurred
    copy in the map's order: ``([N, S, M], fractions [S])``."""
    attribution_map = as_map(attribution, x)
    total = x.shape[-1] * x.shape[-2]
    counts = rise_step_counts(total, pixels_per_step)
    ranks = pixel_ranks(attribution_map, descending=descending)
    curve = blended_curve(model, x, blurred(x), ranks, counts, classes, "probability", batch_size)
    return curve, torch.tensor(counts, dtype=torch.float32) / total


def insertion(
    model: nn.Module, x: Tensor, attribution: Tensor, targets: Tensor | int | None = None, *,
    pixels_per_step: int | None = None, batch_size: int = 64,
) -> Curve:
    """RISE insertion: probability of the target (default top-1) as the most attributed pixels are
    inserted first into the blurred image; higher AUC is better."""
    t = resolve_targets(model, x, targets)
    curve, fractions = insertion_curve(model, x, attribution, t[:, None].cpu(), pixels_per_step=pixels_per_step, batch_size=batch_size)
    return Curve(curve[..., 0].cpu(), fractions, trapezoid_auc(curve[..., 0]).cpu(), t.cpu())


def deletion(
    model: nn.Module, x: Tensor, attribution: Tensor, targets: Tensor | int | None = None, *,
    pixels_per_step: int | None = None, reference: float | Tensor = 0.0, batch_size: int = 64,
) -> Curve:
    """RISE deletion: probability of the target as the most attributed pixels are set to
    ``reference`` first; lower AUC is better."""
    t = resolve_targets(model, x, targets)
    attribution_map = as_map(attribution, x)
    total = x.shape[-1] * x.shape[-2]
    counts = rise_step_counts(total, pixels_per_step)
    removed = torch.as_tensor(reference, dtype=x.dtype, device=x.device).expand_as(x)
    ranks = pixel_ranks(attribution_map, descending=True)
    curve = blended_curve(model, removed, x, ranks, counts, t[:, None], "probability", batch_size)[..., 0]
    fractions = torch.tensor(counts, dtype=torch.float32) / total
    return Curve(curve.cpu(), fractions, trapezoid_auc(curve).cpu(), t.cpu())
