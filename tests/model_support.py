"""Helpers for the tests' small models."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

Range = tuple[float, float]


def randomize_batchnorm(layers: Iterable[nn.Module], *, mean: Range, var: Range, weight: Range, bias: Range) -> None:
    """Give each batch-norm layer non-trivial statistics and affine parameters: running mean, running
    variance, weight and bias drawn uniformly from their ranges, in that order, from torch's RNG."""
    with torch.no_grad():
        for bn in layers:
            bn.running_mean.uniform_(*mean)
            bn.running_var.uniform_(*var)
            bn.weight.uniform_(*weight)
            bn.bias.uniform_(*bias)
