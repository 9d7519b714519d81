"""Learned perturbation masks: Meaningful Perturbation and Extremal Perturbation.

Both replace the image by a Gaussian-blurred copy where a mask is 0 (``x ⊙ m + blur(x) ⊙ (1 − m)``)
and optimize the mask against the model's score; the model's own parameters get no gradients.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.targets import Targets, target_scores
from ..errors import PyExplainError
from ..registry import MethodResult, register_method
from ._perturb import blend, check_fraction, check_positive, gaussian_blur, progress_bar


def total_variation(m: Tensor, beta: float) -> Tensor:
    """``mean |∂_y m|^β + mean |∂_x m|^β`` per row of ``m`` ``[N, 1, h, w]``."""
    dy = (m[..., 1:, :] - m[..., :-1, :]).abs().pow(beta).flatten(1).mean(1)
    dx = (m[..., :, 1:] - m[..., :, :-1]).abs().pow(beta).flatten(1).mean(1)
    return dy + dx


def _upsample(m: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)


@register_method(
    "meaningful_perturbation",
    description="learned smooth deletion mask: the smallest blurred region that removes the target's probability",
    paper="Fong, Vedaldi: Interpretable Explanations of Black Boxes by Meaningful Perturbation (ICCV 2017)",
    cost="iterations forwards + iterations backwards (300 by default)",
    iterative=True,
    sign="nonnegative",  # the deletion mask 1 − m ∈ [0, 1]
)
def meaningful_perturbation(
    model: nn.Module, x: Tensor, targets: Targets, *, iterations: int = 300, learning_rate: float = 0.1,
    area_weight: float = 0.01, tv_weight: float = 0.2, tv_beta: float = 3.0, mask_size: int = 28,
    blur_sigma: float = 10.0, probability: bool = True, progress: bool = False,
) -> MethodResult:
    """Minimize ``P_t(x ⊙ m↑ + blur(x) ⊙ (1 − m↑)) + λ₁ mean|1 − m| + λ₂ TV_β(m)`` over a
    ``mask_size²`` mask ``m ∈ [0, 1]`` (1 = keep), upsampled bilinearly (``m↑``) to the image.

    Adam (``learning_rate``), ``m`` starts at 1 and is clipped to [0, 1] after every step; the blur
    has std ``blur_sigma`` pixels. The attribution is the deletion map ``1 − m↑`` spread evenly over
    the channels; extras: ``mask`` ``[N, 1, H, W]`` (``m↑``) and ``loss_history`` ``[N, iterations]``.
    ``P_t`` is the softmax probability (``probability=False``: the score given to ``explain``).
    """
    for name, value in (("learning_rate", learning_rate), ("tv_beta", tv_beta), ("blur_sigma", blur_sigma)):
        check_positive(name, value)
    check_positive("iterations", iterations, integer=True)
    check_positive("mask_size", mask_size, integer=True)
    if area_weight < 0 or tv_weight < 0:
        raise PyExplainError("area_weight and tv_weight must not be negative")
    n, c, h, w = x.shape
    t = targets.resolve_with(model, x)
    score = "probability" if probability else targets.score
    background = gaussian_blur(x, blur_sigma)
    mask = torch.ones(n, 1, mask_size, mask_size, dtype=x.dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.Adam([mask], lr=learning_rate)
    history = torch.zeros(n, iterations, dtype=x.dtype, device=x.device)
    for i in progress_bar(range(iterations), iterations, progress, "meaningful_perturbation"):
        with torch.enable_grad():
            scores = target_scores(model(blend(x, background, _upsample(mask, (h, w)))), t, score)
            area = (1 - mask).abs().flatten(1).mean(1)
            loss = scores + area_weight * area + tv_weight * total_variation(mask, tv_beta)
            (mask.grad,) = torch.autograd.grad(loss.sum(), mask)
        optimizer.step()
        with torch.no_grad():
            mask.clamp_(0, 1)
        history[:, i] = loss.detach()
    kept = _upsample(mask.detach(), (h, w))
    return MethodResult((1 - kept).expand(-1, c, -1, -1) / c, {"mask": kept, "loss_history": history})


class SmoothMask:
    """Extremal Perturbation's smooth masks from a parameter grid ``p ∈ [0, 1]`` of one value per
    ``step × step`` pixels: a soft-max convolution
    ``m̄(v) = smax_{|v'−v| ≤ r} k(v − v') p(v')``, ``k(d) = exp(−|d|² step² / (2 sigma²))``,
    ``smax(a) = Σ a softmax(temperature · a)`` (a soft maximum: never above the largest value),
    upsampled bilinearly to the image. With ``k(0) = 1`` and ``k ≤ 1`` the mask stays in [0, 1],
    is close to 1 around a parameter at 1 and falls off no faster than ``k``.
    """

    def __init__(self, size: tuple[int, int], step: int, sigma: float, temperature: float, like: Tensor) -> None:
        self.size = size
        self.grid = (math.ceil(size[0] / step), math.ceil(size[1] / step))
        self.radius = max(1, math.ceil(2 * sigma / step))
        offsets = torch.arange(-self.radius, self.radius + 1, dtype=like.dtype, device=like.device)
        distance2 = (offsets[:, None] ** 2 + offsets[None, :] ** 2) * step ** 2
        self.kernel = torch.exp(-distance2 / (2 * sigma ** 2)).reshape(1, -1, 1)
        self.temperature = temperature

    def __call__(self, params: Tensor) -> Tensor:
        k = params.shape[0]
        neighbours = F.unfold(params, 2 * self.radius + 1, padding=self.radius) * self.kernel
        pooled = (neighbours * torch.softmax(self.temperature * neighbours, dim=1)).sum(1)
        return _upsample(pooled.reshape(k, 1, *self.grid), self.size)


def _areas(areas: float | tuple[float, ...] | list[float]) -> list[float]:
    values = [areas] if isinstance(areas, (int, float)) else list(areas)
    if not values:
        raise PyExplainError("areas must name at least one area")
    for a in values:
        check_fraction("area", a)
    return [float(a) for a in values]


@register_method(
    "extremal_perturbation",
    description="smooth masks of fixed areas that best preserve (or delete) the target score; one map per area",
    paper="Fong, Patrick, Vedaldi: Understanding Deep Networks via Extremal Perturbations and Smooth Masks (ICCV 2019)",
    cost="iterations forwards + iterations backwards per area (300 by default)",
    iterative=True,
    sign="nonnegative",  # the mean of masks in [0, 1]
)
def extremal_perturbation(
    model: nn.Module, x: Tensor, targets: Targets, *, areas: float | tuple[float, ...] = 0.1,
    iterations: int = 300, learning_rate: float = 0.05, step: int = 7, sigma: float = 21.0,
    temperature: float = 20.0, blur_sigma: float = 20.0, area_weight: float = 30.0,
    area_weight_growth: float = 164.0, variant: str = "preserve", jitter: bool = True, progress: bool = False,
) -> MethodResult:
    """For each area ``a``, maximize ``F_t(x ⊙ m + blur(x) ⊙ (1 − m))`` (``variant="preserve"``; with
    ``"delete"``, minimize it with ``1 − m`` in place of ``m``) minus ``λ ‖sort(m) − r_a‖²/HW``, where
    ``r_a`` is ``(1 − a)·HW`` zeros followed by ``a·HW`` ones: the ranking form of the constraint
    "``m`` keeps a fraction ``a`` of the image".

    ``m`` is a :class:`SmoothMask` (``step``, ``sigma``, ``temperature``); its parameters start at 1
    and are optimized by Adam (``learning_rate``) and clipped to [0, 1]. ``λ`` grows geometrically
    from ``area_weight`` to ``area_weight · area_weight_growth`` over the run; with ``jitter`` the
    perturbed image is flipped left-right on every other iteration. ``step``, ``sigma`` and
    ``blur_sigma`` are in pixels, chosen for 224 × 224 inputs; scale them with the image. The score
    is the one given to ``explain`` (the logit by default). The attribution is the mean of the
    areas' masks, spread evenly over the channels; extras: ``masks`` ``[N, len(areas), H, W]`` and
    ``loss_history`` ``[N, iterations]`` (summed over areas).
    """
    values = _areas(areas)
    if variant not in ("preserve", "delete"):
        raise PyExplainError(f"variant must be 'preserve' or 'delete', got {variant!r}")
    check_positive("iterations", iterations, integer=True)
    check_positive("step", step, integer=True)
    for name, value in (("learning_rate", learning_rate), ("sigma", sigma), ("temperature", temperature),
                        ("blur_sigma", blur_sigma), ("area_weight", area_weight),
                        ("area_weight_growth", area_weight_growth)):
        check_positive(name, value)
    n, c, h, w = x.shape
    t = targets.resolve_with(model, x)
    rows = torch.arange(n, device=x.device).repeat(len(values))  # area-major: row k*n + i
    generator = SmoothMask((h, w), step, sigma, temperature, x)
    params = torch.ones(len(rows), 1, *generator.grid, dtype=x.dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.Adam([params], lr=learning_rate)
    fractions = torch.tensor(values, dtype=x.dtype, device=x.device).repeat_interleave(n)
    ranks = torch.arange(h * w, dtype=x.dtype, device=x.device)
    reference = (ranks[None] >= (1 - fractions[:, None]) * h * w).to(x.dtype)  # [rows, HW]
    background = gaussian_blur(x, blur_sigma)
    sign = 1.0 if variant == "preserve" else -1.0
    growth = area_weight_growth ** (1 / max(iterations - 1, 1))
    history = torch.zeros(n, iterations, dtype=x.dtype, device=x.device)
    for i in progress_bar(range(iterations), iterations, progress, "extremal_perturbation"):
        with torch.enable_grad():
            mask = generator(params)
            kept = mask if variant == "preserve" else 1 - mask
            perturbed = blend(x[rows], background[rows], kept)
            if jitter and i % 2 == 0:
                perturbed = perturbed.flip(-1)
            reward = sign * target_scores(model(perturbed), t[rows], targets.score)
            area_loss = (mask.flatten(1).sort(dim=1).values - reference).pow(2).mean(1)
            energy = area_weight * growth ** i * area_loss - reward
            (params.grad,) = torch.autograd.grad(energy.sum(), params)
        optimizer.step()
        with torch.no_grad():
            params.clamp_(0, 1)
        history[:, i] = energy.detach().reshape(len(values), n).sum(0)
    with torch.no_grad():
        masks = generator(params).reshape(len(values), n, h, w).transpose(0, 1)
    attribution = masks.mean(1, keepdim=True).expand(-1, c, -1, -1) / c
    return MethodResult(attribution, {"masks": masks, "loss_history": history})
