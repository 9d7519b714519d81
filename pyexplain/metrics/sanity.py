"""Model-randomization sanity check (Adebayo et al.: Sanity Checks for Saliency Maps, NeurIPS 2018),
as reported by DMBP (Table 3: Guided Backprop ≈ 0.99, DMBP ≈ 0.0).

The map of a trained model is compared, by Spearman rank correlation over pixels, with the map of
the same method on a copy whose last learnable layer (``Conv2d``/``Linear``, in module order) is
re-initialized from a normal distribution — ``W ~ N(0, 2/fan_in)``, bias 0 — and, for the cascading
variant, with copies re-initialized from the top layer down to each layer in turn (batch-norm
statistics are kept). The explained class is the trained model's (top-1 unless given) in every
copy. Low correlation = the map depends on the learned parameters (good). Ties get average ranks.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from ..api import explain
from ..errors import PyExplainError
from ._common import resolve_targets


def average_ranks(values: Tensor) -> Tensor:
    """Ranks ``0…P−1`` along the last dim of ``[N, P]``, ties sharing their average rank."""
    out = torch.empty_like(values, dtype=torch.float64)
    for row, v in enumerate(values):
        ordered, order = torch.sort(v, stable=True)
        _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
        starts = counts.cumsum(0) - counts
        out[row, order] = (starts + (counts - 1) / 2).double()[inverse]
    return out


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per row of ``[N, ...]`` tensors (NaN where a row is constant)."""
    ra, rb = average_ranks(a.flatten(1)), average_ranks(b.flatten(1).to(a.device))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denominator = (ra.norm(dim=1) * rb.norm(dim=1))
    return torch.where(denominator > 0, (ra * rb).sum(1) / denominator.clamp(min=1e-300), torch.full_like(denominator, math.nan))


def learnable_layers(model: nn.Module) -> list[str]:
    """Names of the ``Conv2d``/``Linear`` modules in module order (the last is the output layer)."""
    return [name for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]


def randomized_copy(model: nn.Module, layer_names: list[str], seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with the named layers re-drawn: ``W ~ N(0, 2/fan_in)``, bias 0."""
    clone = copy.deepcopy(model)
    modules = dict(clone.named_modules())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in layer_names:
            weight = modules[name].weight
            std = math.sqrt(2.0 / weight[0].numel())
            weight.copy_(torch.randn(weight.shape, generator=generator) * std)
            if modules[name].bias is not None:
                modules[name].bias.zero_()
    return clone


def model_randomization(
    model: nn.Module, x: Tensor, method: str, targets: Tensor | int | None = None, *, cascading: bool = False,
    seed: int = 0, absolute: bool = False, batch_size: int | None = None, options: dict[str, Any] | None = None,
) -> dict[str, Tensor]:
    """Spearman correlation ``[N]`` between ``method``'s maps on ``model`` and on randomized copies.

    Returns ``{layer: rho}``: the last layer only, or (``cascading``) one entry per layer from the top
    down, each copy randomizing that layer and every layer above it. ``absolute`` compares ``|map|``;
    ``options`` are the method's own.
    """
    layers = learnable_layers(model)
    if not layers:
        raise PyExplainError("the model has no Conv2d or Linear layer to randomize")
    t = resolve_targets(model, x, targets)

    def attribution_map(net: nn.Module) -> Tensor:
        m = explain(net, x, method, target=t.tolist(), batch_size=batch_size, **(options or {})).map
        return m.abs() if absolute else m

    reference = attribution_map(model)
    stages = range(len(layers) - 1, -1, -1) if cascading else [len(layers) - 1]
    return {layers[k]: spearman(reference, attribution_map(randomized_copy(model, layers[k:], seed))).float().cpu()
            for k in stages}
