"""FullGrad: full-gradient representation (Srinivas & Fleuret, NeurIPS 2019; SPEC §5).

For a piecewise-linear network the target logit decomposes exactly (completeness):

    F_t(x) = Σ ∇ₓF_t ⊙ x  +  Σ_l Σ ∇_{b_l}F_t ⊙ b_l

over every bias-like term ``b_l`` (:mod:`pyexplain.core.biases`: conv/linear biases, eval-BN's
effective bias ``β − μγ/√(var+ε)``, ReLU6's saturated constant). :func:`fullgrad_decompose` returns
that raw decomposition. The saliency map aggregates it as in the paper's reference code:

    S = ψ(∇ₓF ⊙ x) + Σ_{l spatial} upsample(ψ(∇_{b_l}F ⊙ b_l)),    ψ(t) = (|t| − min|t|) / (max|t| − min|t| + 1e-6),

with ``ψ`` taken per image over all channels and positions, each term then summed over its
channels, bias terms upsampled bilinearly (``align_corners=True``) to the input size; non-spatial
(linear-layer) terms enter the decomposition but not the map. The attribution spreads ``S`` (≥ 0)
evenly over the input channels, so its channel sum is ``S``.

A model with a nonlinearity that is not piecewise linear (SiLU, GELU, Hardswish, sigmoid/tanh gates,
...) is refused: its bias-gradients no longer complete the logit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.biases import capture_biases
from ..core.targets import Targets
from ..errors import PyExplainError
from ..registry import register_method


@dataclass(frozen=True)
class BiasTerm:
    """One bias-gradient term ``∇_bF ⊙ b``, shaped like the output it is added to (``[N, ...]``)."""

    kind: str
    module_name: str
    value: Tensor


@dataclass(frozen=True)
class FullGradDecomposition:
    """``input_term`` ``∇ₓF ⊙ x`` ``[N, C, H, W]`` and every bias term; for a piecewise-linear model,
    :meth:`total` equals the target logit."""

    input_term: Tensor
    bias_terms: list[BiasTerm]

    def total(self) -> Tensor:
        """``Σ input_term + Σ_l Σ bias_term_l`` per row, ``[N]``."""
        total = self.input_term.flatten(1).sum(1)
        for term in self.bias_terms:
            total = total + term.value.flatten(1).sum(1)
        return total


def fullgrad_decompose(model: nn.Module, x: Tensor, targets: Targets) -> FullGradDecomposition:
    """One forward and one backward: the input-gradient term and every bias-gradient term of the
    target logit."""
    if targets.score != "logit":
        raise PyExplainError("fullgrad decomposes the logit; use score='logit'")
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with capture_biases(model, "fullgrad") as sites:
            logits = model(x)
        targets.resolve(logits)
        grads = torch.autograd.grad(targets.scores(logits).sum(), [x] + [s.output for s in sites], allow_unused=True)
    terms = [BiasTerm(site.kind, site.module_name,
                      (torch.zeros_like(site.output) if grad is None else grad).detach() * site.bias)
             for site, grad in zip(sites, grads[1:])]
    return FullGradDecomposition(grads[0] * x.detach(), terms)


def _normalized_channel_sum(term: Tensor, eps: float = 1e-6) -> Tensor:
    """``Σ_c ψ(term)`` ``[N, ...]``, ``ψ`` the absolute value min–max scaled per image over all channels
    and positions: ``(Σ_c |t| − C·min|t|) / (max|t| − min|t| + eps)``."""
    magnitude = term.abs()
    flat = magnitude.flatten(1)
    low, high = flat.amin(1), flat.amax(1)  # two fast reductions (aminmax over a dim is slower here)
    shape = (-1,) + (1,) * (term.ndim - 2)
    return (magnitude.sum(1) - term.shape[1] * low.view(shape)) / (high - low + eps).view(shape)


def fullgrad_map(decomposition: FullGradDecomposition, size: tuple[int, int]) -> Tensor:
    """The FullGrad saliency ``S`` ``[N, H, W]`` from a decomposition.

    Upsampling is linear, so the channel-summed bias maps of one resolution are added first and
    upsampled once per resolution."""
    saliency = _normalized_channel_sum(decomposition.input_term)
    by_size: dict[tuple[int, int], Tensor] = {}
    for term in decomposition.bias_terms:
        if term.value.ndim == 4:
            channel_sum = _normalized_channel_sum(term.value)
            key = tuple(channel_sum.shape[-2:])
            by_size[key] = channel_sum if key not in by_size else by_size[key] + channel_sum
    for channel_sum in by_size.values():
        saliency = saliency + F.interpolate(channel_sum[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]
    return saliency


@register_method(
    "fullgrad",
    description="input-gradient plus upsampled bias-gradient maps of every conv/BN layer",
    paper="Srinivas, Fleuret: Full-Gradient Representation for Neural Network Visualization (NeurIPS 2019)",
    cost="1 forward + 1 backward",
    sign="nonnegative",  # ψ = |·| min–max scaled, summed
)
def fullgrad(model: nn.Module, x: Tensor, targets: Targets) -> Tensor:
    """``S = ψ(∇ₓF ⊙ x) + Σ_l upsample(ψ(∇_{b_l}F ⊙ b_l))``, spread evenly over the input channels."""
    saliency = fullgrad_map(fullgrad_decompose(model, x, targets), tuple(x.shape[-2:]))
    return saliency[:, None].expand(-1, x.shape[1], -1, -1) / x.shape[1]
