"""Occlusion: slide a patch of constant value over the image and record the score drop."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..core.targets import Targets, target_scores
from ..errors import PyExplainError
from ..registry import register_method
from ._perturb import check_positive, per_pass, progress_bar


def _pair(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2:
        raise PyExplainError(f"{name} must be an integer or a pair of integers, got {value!r}")
    for v in pair:
        check_positive(name, v, integer=True)
    return pair  # type: ignore[return-value]


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets ``0, s, 2s, …`` along one axis: ``⌈(size − window)/stride⌉ + 1`` of them, so the
    windows cover the whole axis (the last one is cut at the border when it overhangs)."""
    if window > size:
        raise PyExplainError(f"occlusion window {window} is larger than the image side {size}")
    return [i * stride for i in range(math.ceil((size - window) / stride) + 1)]


@register_method(
    "occlusion",
    description="score drop when a sliding patch (all channels) is replaced by a constant",
    paper="Zeiler, Fergus: Visualizing and Understanding Convolutional Networks (ECCV 2014)",
    cost="(⌈(H−window)/stride⌉+1)·(⌈(W−window)/stride⌉+1) + 1 forwards (170 at 224 px with the defaults)",
    iterative=True,
)
def occlusion(
    model: nn.Module, x: Tensor, targets: Targets, *, window: int | tuple[int, int] = 32,
    stride: int | tuple[int, int] = 16, fill: float = 0.0, internal_batch_size: int | None = None,
    progress: bool = False,
) -> Tensor:
    """``a(p) = mean_{W ∋ p} [F_t(x) − F_t(x with W set to fill)]`` over the windows ``W`` covering
    pixel ``p``; the map is spread evenly over the channels (``A.sum(1) = a``).

    ``fill`` is in the model's normalized input space (0 = the dataset's mean colour).
    ``internal_batch_size`` rows go into one forward pass (None: 4 on a CPU, 64 on a GPU).
    """
    (wh, ww), (sh, sw) = _pair("window", window), _pair("stride", stride)
    n, c, h, w = x.shape
    t = targets.resolve_with(model, x)
    clean = target_scores(targets.logits, t, targets.score)
    positions = [(i, j) for i in window_starts(h, wh, sh) for j in window_starts(w, ww, sw)]
    per_batch = per_pass(internal_batch_size, x)
    total = torch.zeros(n, h, w, dtype=x.dtype, device=x.device)
    count = torch.zeros(h, w, dtype=x.dtype, device=x.device)
    chunks = range(0, len(positions), per_batch)
    for start in progress_bar(chunks, len(chunks), progress, "occlusion"):
        masks = torch.zeros(len(positions[start:start + per_batch]), h, w, dtype=x.dtype, device=x.device)
        for k, (i, j) in enumerate(positions[start:start + per_batch]):
            masks[k, i:i + wh, j:j + ww] = 1
        hidden = masks[:, None, None]  # [k, 1, 1, H, W]
        occluded = (x[None] * (1 - hidden) + fill * hidden).reshape(-1, c, h, w)
        with torch.no_grad():
            scores = target_scores(model(occluded), t.repeat(len(masks)), targets.score).reshape(len(masks), n)
        total += torch.einsum("kn,khw->nhw", clean[None] - scores, masks)
        count += masks.sum(0)
    return (total / count)[:, None].expand(-1, c, -1, -1) / c
