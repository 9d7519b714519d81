"""Blur Integrated Gradients: integrated gradients along a path in scale space."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.targets import Targets
from ..registry import register_method
from ._common import gradient_of_scores
from ._perturb import check_positive, gaussian_blur, per_pass, progress_bar


@register_method(
    "blur_ig",
    description="integrated gradients along the path from a maximally blurred copy of the image to the image",
    paper="Xu, Venugopalan, Sundararajan: Attribution in Scale and Space (CVPR 2020)",
    cost="steps forwards + steps backwards",
    iterative=True,
)
def blur_ig(
    model: nn.Module, x: Tensor, targets: Targets, *, max_sigma: float = 50.0, steps: int = 100,
    internal_batch_size: int | None = None, progress: bool = False,
) -> Tensor:
    """``A = Σ_i (x_{σ_i} − x_{σ_{i+1}}) ⊙ ∇F_t((x_{σ_i} + x_{σ_{i+1}})/2)``.

    ``x_σ`` is ``x`` blurred by a Gaussian of std ``σ`` pixels (zero padding in the normalized input
    space, kernel cut at 4σ), ``σ_i = i · max_sigma / steps`` for ``i = 0..steps`` (a linear
    schedule: ``x_{σ_0} = x``). The path integral is taken along the polyline through the blurred
    images, each segment by the midpoint rule, so ``ΣA ≈ F_t(x) − F_t(x_{max_sigma})`` and the sum
    is exact for models quadratic in the input. ``internal_batch_size`` rows go into one
    forward/backward pass (None: 4 on a CPU, 64 on a GPU).
    """
    check_positive("max_sigma", max_sigma)
    check_positive("steps", steps, integer=True)
    t = targets.resolve_with(model, x)
    sigmas = [max_sigma * i / steps for i in range(steps + 1)]
    per_batch = per_pass(internal_batch_size, x)
    total = torch.zeros_like(x)
    starts = range(0, steps, per_batch)
    for start in progress_bar(starts, len(starts), progress, "blur_ig"):
        stop = min(start + per_batch, steps)
        path = gaussian_blur(x, sigmas[start:stop + 1])  # [k+1, N, C, H, W]
        midpoints = 0.5 * (path[:-1] + path[1:])
        grads = gradient_of_scores(model, midpoints.reshape(-1, *x.shape[1:]), t.repeat(stop - start), targets)
        total += ((path[:-1] - path[1:]) * grads.reshape(midpoints.shape)).sum(0)
    return total
