"""RemOve And Retrain, ROAR (Hooker et al.: A Benchmark for Interpretability Methods in Deep Neural
Networks, NeurIPS 2019), as in the LPR paper's Table 1.

For each fraction ``k``: in every training and test image, the ``k·H·W`` pixels with the highest
attribution (map ``a = A.sum(1)``, ties in raster order) are replaced by the per-channel mean of the
training set; a new model is trained *from scratch* on the modified training set and its accuracy on
the modified test set is reported. A faster drop (lower accuracy) means the map found the pixels
the task depends on.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..data.training import Split, accuracy
from ..errors import PyExplainError
from ._common import as_map, pixel_ranks

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def remove_top(x: Tensor, attribution: Tensor, fraction: float, fill: Tensor) -> Tensor:
    """``x`` with its top ``fraction`` pixels by attribution set to ``fill [C]`` (all channels)."""
    if not 0 <= fraction <= 1:
        raise PyExplainError(f"fraction must be in [0, 1], got {fraction}")
    ranks = pixel_ranks(as_map(attribution, x), descending=True)
    n, _, h, w = x.shape
    removed = (ranks < round(fraction * h * w)).reshape(n, 1, h, w)
    return torch.where(removed, fill.to(x).reshape(1, -1, 1, 1), x)


def roar(
    train: Split, test: Split, train_attribution: Tensor, test_attribution: Tensor,
    fit: Callable[[Split], nn.Module], fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> dict[float, float]:
    """``{fraction: test accuracy}`` of models ``fit`` (a fresh model trained from scratch on the
    given split) on data with the top fraction of each map removed."""
    fill = train.x.mean(dim=(0, 2, 3))
    results = {}
    for fraction in fractions:
        modified_train = Split(remove_top(train.x, train_attribution, fraction, fill), train.y)
        modified_test = Split(remove_top(test.x, test_attribution, fraction, fill), test.y)
        results[float(fraction)] = accuracy(fit(modified_train), modified_test)
    return results
