"""RemOve And Retrain, ROAR (Hooker et al.: A Benchmark for Interpretability Methods in Deep Neural
Networks, NeurIPS 2019), as in the LPR paper's Table 1.

For each fraction ``k``: in every training and test image, the ``k·H·W`` pixels with the highest
attribution (map ``a = A.sum(1)``, ties in raster order) are removed; a new model is trained *from
scratch* on the modified training set and its accuracy on the modified test set is reported. A
faster drop (lower accuracy) means the map found the pixels the task depends on.

Removal (``fill``): ``"mean"`` sets the pixels to the training set's per-channel mean (Hooker et
al.); ``"linear"`` uses the noisy linear imputation of ROAD (:mod:`pyexplain.metrics.imputation`:
each removed pixel the 1/6–1/12-weighted mean of its 8 neighbours, solved jointly, plus
``N(0, noise²)``), which paints no constant over the removed pixels: with a constant fill the
pattern alone can reveal the class (Rong et al., ICML 2022). The imputation reduces that leak but
need not remove it (``benchmarks/REPORT.md`` measures it on the digits).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..data.training import Split, accuracy
from ..errors import PyExplainError
from ._common import as_map, pixel_ranks
from .imputation import NOISE, linear_imputation

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
FILLS = ("mean", "linear")


def check_fill(fill: str) -> None:
    """One-line error unless ``fill`` is one of :data:`FILLS`."""
    if fill not in FILLS:
        raise PyExplainError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")


def top_mask(x: Tensor, attribution: Tensor, fraction: float) -> Tensor:
    """``[N, H, W]`` bool: the top ``round(fraction·H·W)`` pixels of each map (ties in raster order)."""
    if not 0 <= fraction <= 1:
        raise PyExplainError(f"fraction must be in [0, 1], got {fraction}")
    ranks = pixel_ranks(as_map(attribution, x), descending=True)
    n, _, h, w = x.shape
    return (ranks < round(fraction * h * w)).reshape(n, h, w)


def remove_top(x: Tensor, attribution: Tensor, fraction: float, fill: Tensor | str, *, noise: float = NOISE,
               seed: int = 0) -> Tensor:
    """``x`` with its top ``fraction`` pixels by attribution removed (all channels): set to
    ``fill [C]``, or with ``fill="linear"`` replaced by the noisy linear imputation (noise std
    ``noise``, generator seeded by ``seed``)."""
    removed = top_mask(x, attribution, fraction)
    if isinstance(fill, str):
        if fill != "linear":
            raise PyExplainError(f"fill must be a per-channel value or 'linear', got {fill!r}")
        return linear_imputation(x, removed, noise, seed)
    return torch.where(removed[:, None], fill.to(x).reshape(1, -1, 1, 1), x)


def roar(
    train: Split, test: Split, train_attribution: Tensor, test_attribution: Tensor,
    fit: Callable[[Split], nn.Module], fractions: Sequence[float] = DEFAULT_FRACTIONS, *, fill: str = "mean",
    noise: float = NOISE, seed: int = 0,
) -> dict[float, float]:
    """``{fraction: test accuracy}`` of models ``fit`` (a fresh model trained from scratch on the
    given split) on data with the top fraction of each map removed by ``fill`` (``"mean"`` or
    ``"linear"``; the linear fill's noise is seeded by ``seed`` for training, ``seed + 1`` for test)."""
    check_fill(fill)
    value: Tensor | str = train.x.mean(dim=(0, 2, 3)) if fill == "mean" else "linear"
    results = {}
    for fraction in fractions:
        modified_train = Split(remove_top(train.x, train_attribution, fraction, value, noise=noise, seed=seed), train.y)
        modified_test = Split(remove_top(test.x, test_attribution, fraction, value, noise=noise, seed=seed + 1), test.y)
        results[float(fraction)] = accuracy(fit(modified_train), modified_test)
    return results
