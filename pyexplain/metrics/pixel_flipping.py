"""MoRF / LeRF pixel-flipping curves (Yang et al., Learning Propagation Rules, ECCV 2020, §4.1).

Protocol (SPEC §6): rank the pixels by the attribution map ``a = A.sum(1)``; MoRF removes the most
positive pixels first, LeRF the least positive (most negative) first. Up to ``max_fraction`` = 5%
of the image is removed in ``steps`` = 20 equal steps (step ``k`` removes ``round(k·0.05·H·W/20)``
pixels). The curve records ``F_t(masked) / F_t(I)`` (``F_t`` = the target's logit) at each of the
21 points, the first being 1; the AUC is the trapezoid area over the normalized x-axis ``[0, 1]``
(the fraction of the 5% budget). MoRF: lower is better; LeRF: higher is better.

*Removing* a pixel sets all its channels to the reference value, 0 in the model's normalized input
space (the SPEC's reference input: the dataset mean for mean/std-normalized models, black for
``[0, 1]`` inputs such as the digits CNN). Ties in the map keep raster order (stable sort). The
ratio is meaningful when ``F_t(I) > 0``, as it is for a top-1 class of a trained model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.targets import ScoreSpec
from ..errors import PyExplainError
from ._common import as_map, blended_curve, pixel_ranks, resolve_targets, step_counts, trapezoid_auc

DEFAULT_MAX_FRACTION = 0.05
DEFAULT_STEPS = 20


@dataclass
class Curve:
    """A perturbation curve per image: ``curve [N, S]`` at x-positions ``fractions [S]`` (the fraction
    of the image's pixels changed), ``auc [N]`` over the normalized x-axis, and the classes scored."""

    curve: Tensor
    fractions: Tensor
    auc: Tensor
    targets: Tensor


def pixel_flipping(
    model: nn.Module,
    x: Tensor,
    attribution: Tensor,
    targets: Tensor | int | None = None,
    *,
    order: str = "morf",
    max_fraction: float = DEFAULT_MAX_FRACTION,
    steps: int = DEFAULT_STEPS,
    reference: float | Tensor = 0.0,
    score: ScoreSpec = "logit",
    batch_size: int = 64,
) -> Curve:
    """The MoRF (``order="morf"``) or LeRF (``order="lerf"``) curve of ``attribution`` on images ``x``.

    ``attribution``: ``[N, C, H, W]`` or a map ``[N, H, W]``; ``targets``: class per image (default
    top-1). ``curve[:, k] = F_t(x with the first n_k pixels set to reference) / F_t(x)``.
    """
    if order not in ("morf", "lerf"):
        raise PyExplainError(f"order must be 'morf' or 'lerf', got {order!r}")
    if not 0 < max_fraction <= 1:
        raise PyExplainError(f"max_fraction must be in (0, 1], got {max_fraction}")
    attribution_map = as_map(attribution, x)
    t = resolve_targets(model, x, targets)
    total = x.shape[-1] * x.shape[-2]
    counts = step_counts(total, max_fraction * total, steps)
    ranks = pixel_ranks(attribution_map, descending=(order == "morf"))
    removed = torch.as_tensor(reference, dtype=x.dtype, device=x.device).expand_as(x)
    scores = blended_curve(model, removed, x, ranks, counts, t[:, None], score, batch_size)[..., 0]
    curve = scores / scores[:, :1]
    fractions = torch.tensor(counts, dtype=torch.float32) / total
    return Curve(curve.cpu(), fractions, trapezoid_auc(curve).cpu(), t.cpu())


def morf(model: nn.Module, x: Tensor, attribution: Tensor, targets: Tensor | int | None = None, **kwargs) -> Curve:
    """Most-relevant-first pixel flipping (lower AUC is better); see :func:`pixel_flipping`."""
    return pixel_flipping(model, x, attribution, targets, order="morf", **kwargs)


def lerf(model: nn.Module, x: Tensor, attribution: Tensor, targets: Tensor | int | None = None, **kwargs) -> Curve:
    """Least-relevant-first pixel flipping (higher AUC is better); see :func:`pixel_flipping`."""
    return pixel_flipping(model, x, attribution, targets, order="lerf", **kwargs)
