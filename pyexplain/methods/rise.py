"""RISE: randomized input sampling — the score-weighted mean of random smooth masks."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.targets import Targets, target_scores
from ..registry import register_method
from ._perturb import check_fraction, check_positive, per_pass, progress_bar


def draw_masks(count: int, size: tuple[int, int], cells: int, keep: float,
               generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """The random part of ``count`` RISE masks, on ``generator``'s device: Bernoulli(``keep``) grids
    ``[count, 1, cells, cells]`` and crop offsets ``dy, dx`` ``[count]`` of less than one cell."""
    device = generator.device
    grid = torch.rand(count, 1, cells, cells, generator=generator, device=device) < keep
    dy = torch.randint(0, math.ceil(size[0] / cells), (count,), generator=generator, device=device)
    dx = torch.randint(0, math.ceil(size[1] / cells), (count,), generator=generator, device=device)
    return grid, dy, dx


def render_masks(grid: Tensor, dy: Tensor, dx: Tensor, size: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """RISE masks ``[k, 1, H, W]`` in [0, 1]: each ``cells × cells`` grid upsampled bilinearly to
    ``(cells + 1)·⌈H/cells⌉ × (cells + 1)·⌈W/cells⌉`` and cropped to ``H × W`` at ``(dy, dx)``."""
    (h, w), cells = size, grid.shape[-1]
    up_size = ((cells + 1) * math.ceil(h / cells), (cells + 1) * math.ceil(w / cells))
    up = F.interpolate(grid.to(dtype), size=up_size, mode="bilinear", align_corners=False)
    rows = (dy[:, None] + torch.arange(h, device=grid.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=grid.device))[:, None, :]
    return up[torch.arange(len(grid), device=grid.device)[:, None, None], 0, rows, cols][:, None]


@register_method(
    "rise",
    description="mean of random smooth masks weighted by the target's probability on the masked image",
    paper="Petsiuk, Das, Saenko: RISE: Randomized Input Sampling for Explanation of Black-box Models (BMVC 2018)",
    cost="masks forwards (1000 by default)",
    iterative=True,
    sign=lambda options: "nonnegative" if options["probability"] else "signed",  # logits can be < 0
)
def rise(
    model: nn.Module, x: Tensor, targets: Targets, *, masks: int = 1000, cells: int = 7, keep: float = 0.5,
    seed: int = 0, probability: bool = True, internal_batch_size: int | None = None,
    progress: bool = False,
) -> Tensor:
    """``S = 1/(N·p) Σ_i P_t(x ⊙ M_i) · M_i`` over ``N = masks`` masks (:func:`render_masks`) with
    ``p = keep``; the map is spread evenly over the channels (``A.sum(1) = S``).

    ``P_t`` is the target's softmax probability (as in the paper); ``probability=False`` uses the
    score given to :func:`pyexplain.explain` instead (the logit by default). Every image of a
    batch sees the same masks: their random grids and offsets are drawn at once from ``seed`` on
    the model's device, and the masks are rendered there batch by batch, ``internal_batch_size``
    masked images per forward pass (None: 4 on a CPU, 64 on a GPU).
    """
    check_positive("masks", masks, integer=True)
    check_positive("cells", cells, integer=True)
    check_fraction("keep", keep)
    n, c, h, w = x.shape
    t = targets.resolve_with(model, x)
    score = "probability" if probability else targets.score
    grid, dy, dx = draw_masks(masks, (h, w), cells, keep, torch.Generator(device=x.device).manual_seed(seed))
    per_batch = per_pass(internal_batch_size, x)
    total = torch.zeros(n, h, w, dtype=x.dtype, device=x.device)
    chunks = range(0, masks, per_batch)
    for start in progress_bar(chunks, len(chunks), progress, "rise"):
        part = slice(start, start + per_batch)
        batch = render_masks(grid[part], dy[part], dx[part], (h, w), x.dtype)
        with torch.no_grad():
            logits = model((x[None] * batch[:, None]).reshape(-1, c, h, w))
        scores = target_scores(logits, t.repeat(len(batch)), score).reshape(len(batch), n)
        total += torch.einsum("kn,khw->nhw", scores, batch[:, 0])
    return (total / (masks * keep))[:, None].expand(-1, c, -1, -1) / c
