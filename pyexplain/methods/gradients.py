"""Plain-gradient methods: Saliency, Grad×Input, Integrated Gradients, SmoothGrad, SmoothGrad²."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..core.targets import Targets
from ..errors import PyExplainError
from ..registry import register_method
from ._common import gradient_of_scores, input_gradient, per_image_range


@register_method(
    "saliency",
    description="absolute input gradient |∂F_t/∂x|",
    paper="Simonyan, Vedaldi, Zisserman: Deep Inside Convolutional Networks (ICLR-W 2014)",
    cost="1 forward + 1 backward",
    sign=lambda options: "nonnegative" if options["absolute"] else "signed",
)
def saliency(model: nn.Module, x: Tensor, targets: Targets, *, absolute: bool = True) -> Tensor:
    """``A = |∂F_t(x)/∂x|`` (signed gradient with ``absolute=False``)."""
    grad = input_gradient(model, x, targets)
    return grad.abs() if absolute else grad


@register_method(
    "gradxinput",
    description="input gradient times input ∂F_t/∂x ⊙ x",
    paper="Shrikumar et al.: Not Just a Black Box (arXiv 2016)",
    cost="1 forward + 1 backward",
)
def gradxinput(model: nn.Module, x: Tensor, targets: Targets) -> Tensor:
    """``A = ∂F_t(x)/∂x ⊙ x``."""
    return input_gradient(model, x, targets) * x


def _check_count(name: str, value: int) -> None:
    if value < 1:
        raise PyExplainError(f"{name} must be at least 1, got {value}")


@register_method(
    "integrated_gradients",
    description="path integral of gradients from a baseline (zero by default)",
    paper="Sundararajan, Taly, Yan: Axiomatic Attribution for Deep Networks (ICML 2017)",
    cost="steps forwards + steps backwards",
)
def integrated_gradients(
    model: nn.Module, x: Tensor, targets: Targets, *, steps: int = 50, baseline: float | Tensor = 0.0,
    internal_batch_size: int = 32,
) -> Tensor:
    """``A = (x − x̄) ⊙ ∫₀¹ ∂F_t(x̄ + α(x − x̄))/∂x dα``, the integral by ``steps``-point Gauss–Legendre
    quadrature (completeness: ``ΣA ≈ F_t(x) − F_t(x̄)``)."""
    _check_count("steps", steps)
    t = targets.resolve_with(model, x)
    base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand_as(x)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = torch.tensor(0.5 * (nodes + 1), dtype=x.dtype, device=x.device)
    weights = torch.tensor(0.5 * weights, dtype=x.dtype, device=x.device)
    n = x.shape[0]
    per_batch = max(1, internal_batch_size // n)
    total = torch.zeros_like(x)
    for start in range(0, steps, per_batch):
        a = alphas[start:start + per_batch]
        w = weights[start:start + per_batch]
        scaled = (base[None] + a.reshape(-1, 1, 1, 1, 1) * (x - base)[None]).reshape(-1, *x.shape[1:])
        grads = gradient_of_scores(model, scaled, t.repeat(len(a)), targets).reshape(len(a), *x.shape)
        total += (w.reshape(-1, 1, 1, 1, 1) * grads).sum(0)
    return (x - base) * total


def _noisy_gradients(model, x, targets, samples, noise_level, seed, internal_batch_size, reduce):
    _check_count("samples", samples)
    t = targets.resolve_with(model, x)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    sigma = noise_level * per_image_range(x)
    noise = torch.randn((x.shape[0] * samples, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
    rows = torch.arange(x.shape[0], device=x.device).repeat_interleave(samples)  # image-major, as Captum
    total = torch.zeros_like(x)
    for start in range(0, rows.shape[0], internal_batch_size):
        r = rows[start:start + internal_batch_size]
        noisy = x[r] + noise[start:start + internal_batch_size] * sigma[r]
        grads = reduce(gradient_of_scores(model, noisy, t[r], targets))
        total.index_add_(0, r, grads)
    return total / samples


@register_method(
    "smoothgrad",
    description="gradient averaged over Gaussian-noised copies of the input",
    paper="Smilkov et al.: SmoothGrad: removing noise by adding noise (ICML-W 2017)",
    cost="samples forwards + samples backwards",
)
def smoothgrad(
    model: nn.Module, x: Tensor, targets: Targets, *, samples: int = 50, noise_level: float = 0.15, seed: int = 0,
    internal_batch_size: int = 32,
) -> Tensor:
    """``A = 1/n Σ_k ∂F_t(x + ε_k)/∂x``, ``ε_k ~ N(0, σ²)``, ``σ = noise_level · (max x − min x)`` per image."""
    return _noisy_gradients(model, x, targets, samples, noise_level, seed, internal_batch_size, lambda g: g)


@register_method(
    "smoothgrad_sq",
    description="squared gradient averaged over Gaussian-noised copies of the input",
    paper="Hooker et al.: A Benchmark for Interpretability Methods in Deep Neural Networks (NeurIPS 2019)",
    cost="samples forwards + samples backwards",
    sign="nonnegative",  # mean of squared gradients
)
def smoothgrad_sq(
    model: nn.Module, x: Tensor, targets: Targets, *, samples: int = 50, noise_level: float = 0.15, seed: int = 0,
    internal_batch_size: int = 32,
) -> Tensor:
    """``A = 1/n Σ_k (∂F_t(x + ε_k)/∂x)²`` with SmoothGrad's noise."""
    return _noisy_gradients(model, x, targets, samples, noise_level, seed, internal_batch_size, lambda g: g * g)
