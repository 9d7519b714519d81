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

:func:`fullgrad` does not build the terms: a hook reduces each site's gradient while the backward
pass produces it (``|∇_bF ⊙ b| = |b_c|·|∇_bF|`` for a per-channel bias), keeping per term only the
per-channel extremes and the weighted channel sum (one pass over the gradient with the compiled
kernel, :func:`pyexplain.ops.abs_channel_stats`); ψ's scaling and the upsampling follow, batched.

A model with a nonlinearity that is not piecewise linear (SiLU, GELU, Hardswish, sigmoid/tanh gates,
...) is refused: its bias-gradients no longer complete the logit.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..core.biases import BiasSite, capture_biases
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


@contextlib.contextmanager
def _bias_sites(model: nn.Module, x: Tensor, targets: Targets,
                on_site: Callable[[BiasSite], None]) -> Iterator[tuple[Tensor, list[BiasSite], Tensor]]:
    """One recording forward pass (:func:`~pyexplain.core.biases.capture_biases`), in grad mode for the
    context's body: the input leaf, every bias site and the summed target logits."""
    if targets.score != "logit":
        raise PyExplainError("fullgrad decomposes the logit; use score='logit'")
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with capture_biases(model, "fullgrad", on_site) as sites:
            logits = model(x)
        targets.resolve(logits)
        yield x, sites, targets.scores(logits).sum()


def fullgrad_decompose(model: nn.Module, x: Tensor, targets: Targets) -> FullGradDecomposition:
    """One forward and one backward: the input-gradient term and every bias-gradient term of the
    target logit."""
    grads: dict[int, Tensor] = {}
    count = itertools.count()

    def keep(site: BiasSite) -> None:
        index = next(count)
        if site.output.requires_grad:
            site.output.register_hook(lambda grad: grads.__setitem__(index, grad))

    with _bias_sites(model, x, targets, keep) as (leaf, sites, score):
        (input_grad,) = torch.autograd.grad(score, leaf)
    terms = [BiasTerm(site.kind, site.module_name, grads[i] * site.bias if i in grads else torch.zeros_like(site.output))
             for i, site in enumerate(sites)]
    return FullGradDecomposition(input_grad * x.detach(), terms)


@dataclass
class _Magnitudes:
    """For terms ``t_s`` (``[N, C_s, H_s, W_s]``) written ``|t_s| = w_s ⊙ m_s`` with a per-channel weight
    ``w_s ≥ 0``: per term, the per-channel extremes of ``m_s`` and the weighted channel sum
    ``Σ_c w_c m_c``; :meth:`saliency` scales them by ψ's per-image extremes, all terms at once."""

    lows: list[Tensor] = field(default_factory=list)  # min over positions of m_s, [N, C_s]
    highs: list[Tensor] = field(default_factory=list)  # max over positions of m_s, [N, C_s]
    weights: list[Tensor] = field(default_factory=list)  # w_s, [C_s]
    channel_sums: list[Tensor] = field(default_factory=list)  # Σ_c w_c m_c, [N, H_s, W_s]

    def add(self, term: Tensor) -> None:
        """One term ``t`` not written with a per-channel weight (``m = |t|``, ``w = 1``), reduced by the
        pure-PyTorch :func:`pyexplain.ops.abs_channel_stats_fallback`."""
        weight = term.new_ones(term.shape[1])
        self.add_reduced(weight, *ops.abs_channel_stats_fallback(term, weight))

    def add_reduced(self, weight: Tensor, low: Tensor, high: Tensor, channel_sum: Tensor) -> None:
        """One term already reduced: ``w``, the extremes of ``m`` and ``Σ_c w_c m_c``."""
        self.weights.append(weight)
        self.lows.append(low)
        self.highs.append(high)
        self.channel_sums.append(channel_sum)

    def saliency(self, size: tuple[int, int], eps: float = 1e-6) -> Tensor:
        """``Σ_s upsample(Σ_c ψ(t_s))`` ``[N, *size]``, ``ψ(t) = (|t| − lo) / (hi − lo + eps)`` with ``lo``,
        ``hi`` the extremes of ``|t_s|`` per image: ``lo_s = min_c w_c·min m_c`` (``w ≥ 0``: scaling
        preserves order, also in float rounding). The constants ``C_s·lo_s`` are subtracted once per image
        (bilinear upsampling keeps a constant); maps of one resolution are added before one upsampling."""
        weights = torch.cat(self.weights)
        sizes = [w.numel() for w in self.weights]
        term = torch.repeat_interleave(torch.arange(len(sizes), device=weights.device),
                                       torch.tensor(sizes, device=weights.device)).expand(self.lows[0].shape[0], -1)
        extremes = torch.cat(self.lows, 1).mul_(weights), torch.cat(self.highs, 1).mul_(weights)
        zeros = extremes[0].new_zeros(term.shape[0], len(sizes))
        low = zeros.scatter_reduce(1, term, extremes[0], "amin", include_self=False)
        high = zeros.scatter_reduce(1, term, extremes[1], "amax", include_self=False)
        scale = (high - low).add_(eps).reciprocal_()  # [N, terms]
        constant = (low * scale * torch.tensor(sizes, dtype=scale.dtype, device=scale.device)).sum(1)
        by_size: dict[tuple[int, int], list[int]] = {}
        for s, channel_sum in enumerate(self.channel_sums):
            by_size.setdefault(tuple(channel_sum.shape[-2:]), []).append(s)
        saliency = -constant.view(-1, 1, 1)
        for key, members in by_size.items():
            maps = torch.einsum("snhw,ns->nhw", torch.stack([self.channel_sums[s] for s in members]), scale[:, members])
            if key != tuple(size):
                maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]
            saliency = saliency + maps
        return saliency


@functools.lru_cache(maxsize=None)
def _below(value: float, dtype: torch.dtype) -> float:
    """The largest number of ``dtype`` below ``value``: ``f > _below(high)`` iff ``f ≥ high``."""
    high = torch.tensor(value, dtype=dtype)
    return torch.nextafter(high, high.new_tensor(-math.inf)).item()


def _term_reducer(site: BiasSite, magnitudes: _Magnitudes) -> Callable[[Tensor], None]:
    """The hook that adds ``|∇_bF ⊙ b| = w ⊙ m`` to ``magnitudes`` from ``∇_bF``, without building ``b``: a
    conv/BN bias gives ``m = |∇_bF|``, ``w = |b_c|``; ReLU6-like saturation (``low = 0 < high``,
    ``c = high·1[f ≥ high]``) gives ``m = |∇_bF ⊙ 1[f ≥ high]|``, ``w = high``. Both reduce in one pass
    over the gradient (:func:`pyexplain.ops.abs_channel_stats`), with ``w`` made when the site is
    recorded; other sites build ``|∇_bF ⊙ b|``."""
    if site.per_channel:
        weight = site.value.detach().flatten().abs()
        return lambda grad: magnitudes.add_reduced(weight, *ops.abs_channel_stats(grad, weight))
    if site.clamp is not None and site.clamp[0] == 0 < site.clamp[1]:
        high = site.clamp[1]
        weight = site.output.new_full((site.output.shape[1],), high)
        threshold = _below(high, site.reference.dtype)  # f ≥ high iff the reference is above _below(high)
        return lambda grad: magnitudes.add_reduced(weight, *ops.abs_channel_stats(grad, weight, site.reference, threshold))
    return lambda grad: magnitudes.add(grad * site.bias)


def _saliency(model: nn.Module, x: Tensor, targets: Targets) -> Tensor:
    """The FullGrad saliency ``S`` ``[N, H, W]`` in one forward and one backward to the input. Each bias
    site's term is reduced (:class:`_Magnitudes`) by a hook while the backward pass produces its
    gradient, so no term and no site gradient is kept."""
    magnitudes = _Magnitudes()

    def reduce_term(site: BiasSite) -> None:
        if site.output.ndim == 4 and site.output.requires_grad:  # spatial terms only enter the map
            site.output.register_hook(_term_reducer(site, magnitudes))

    with _bias_sites(model, x, targets, reduce_term) as (leaf, _, score):
        (input_grad,) = torch.autograd.grad(score, leaf)
    magnitudes.add(torch.mul(input_grad, x))
    return magnitudes.saliency(tuple(x.shape[-2:]))


@register_method(
    "fullgrad",
    description="input-gradient plus upsampled bias-gradient maps of every conv/BN layer",
    paper="Srinivas, Fleuret: Full-Gradient Representation for Neural Network Visualization (NeurIPS 2019)",
    cost="1 forward + 1 backward",
    sign="nonnegative",  # ψ = |·| min–max scaled, summed
)
def fullgrad(model: nn.Module, x: Tensor, targets: Targets) -> Tensor:
    """``S = ψ(∇ₓF ⊙ x) + Σ_l upsample(ψ(∇_{b_l}F ⊙ b_l))``, spread evenly over the input channels."""
    saliency = _saliency(model, x, targets)
    return saliency[:, None].expand(-1, x.shape[1], -1, -1) / x.shape[1]
