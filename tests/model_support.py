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


def calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every batch-norm layer's running statistics to those of ``model``'s activations on ``x`` (tens of
    images: a few leave near-zero variances in the 1×1 late layers, which then blow up other inputs; one
    train-mode pass, no gradient), then eval mode: randomly initialized deep networks (EfficientNet,
    MobileNetV3) otherwise shrink their activations to ~1e-15 by the logits."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one pass, exactly that pass's statistics
    model.train()
    with torch.no_grad():
        model(x)
    for bn in norms:
        bn.momentum = 0.1
    return model.eval()
