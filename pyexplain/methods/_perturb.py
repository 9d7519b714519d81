"""Helpers shared by the path, sampling and perturbation methods: Gaussian blur, masked blending,
progress bars and option checks."""
from __future__ import annotations

import math
import sys
from typing import Iterable

import torch
from torch import Tensor
from tqdm import tqdm

from ..errors import PyExplainError

#: The blur kernel is cut at ``TRUNCATE · σ`` (as ``scipy.ndimage.gaussian_filter``'s default).
TRUNCATE = 4.0


def blur_matrix(size: int, sigma: float, *, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> Tensor:
    """The ``[size, size]`` matrix of a 1-D Gaussian blur with zero padding.

    ``B[i, j] = g(i − j)`` for ``|i − j| ≤ r = ⌊TRUNCATE·σ + ½⌋``, where ``g`` is the Gaussian of
    standard deviation ``σ`` normalized over ``[−r, r]``; ``σ = 0`` gives the identity. This is
    ``scipy.ndimage.gaussian_filter(mode="constant", cval=0)`` along one axis.
    """
    if sigma <= 0:
        return torch.eye(size, dtype=dtype, device=device)
    radius = int(TRUNCATE * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    index = torch.arange(size)
    diff = index[:, None] - index[None, :]
    inside = diff.abs() <= radius
    matrix = torch.where(inside, kernel[(diff + radius).clamp(0, 2 * radius)], torch.zeros((), dtype=torch.float64))
    return matrix.to(dtype=dtype, device=device)


def gaussian_blur(x: Tensor, sigma: float | Iterable[float]) -> Tensor:
    """Blur ``x`` ``[N, C, H, W]`` spatially with a Gaussian of std ``sigma`` pixels, zero padding.

    With several sigmas the result is ``[S, N, C, H, W]``, one blurred batch per sigma. The blur is
    separable and applied as ``B_H · x · B_Wᵀ`` with :func:`blur_matrix`.
    """
    sigmas = [float(sigma)] if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    h, w = x.shape[-2:]
    rows = torch.stack([blur_matrix(h, s, dtype=x.dtype, device=x.device) for s in sigmas])
    cols = torch.stack([blur_matrix(w, s, dtype=x.dtype, device=x.device) for s in sigmas])
    blurred = torch.einsum("shi,nciw,svw->snchv", rows, x, cols)
    return blurred[0] if isinstance(sigma, (int, float)) else blurred


def blend(x: Tensor, background: Tensor, mask: Tensor) -> Tensor:
    """``x ⊙ m + background ⊙ (1 − m)``: keep the image where the mask is 1, replace it where it is 0."""
    return background + mask * (x - background)


#: Rows per forward pass when ``internal_batch_size`` is None: small batches are fastest on a CPU
#: (measured for EfficientNet-Lite0 and ResNet-18 at 224 px: ``benchmarks/RESULTS.md``), large on a GPU.
ROWS_PER_PASS = {"cpu": 4, "cuda": 64}


def per_pass(internal_batch_size: int | None, x: Tensor) -> int:
    """How many perturbed copies of each of the ``N`` images of ``x`` go into one forward pass:
    ``internal_batch_size // N`` (at least 1); ``None`` picks :data:`ROWS_PER_PASS` for the device."""
    rows = internal_batch_size if internal_batch_size is not None else ROWS_PER_PASS.get(x.device.type, 64)
    check_positive("internal_batch_size", rows, integer=True)
    return max(1, rows // x.shape[0])


def progress_bar(iterable: Iterable, total: int, enabled: bool, desc: str) -> Iterable:
    """A tqdm bar on stderr around ``iterable`` when ``enabled``."""
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=False)


def check_positive(name: str, value: float, *, integer: bool = False) -> None:
    """One-line error unless ``value`` is a positive (integer) number."""
    if integer and (not isinstance(value, int) or isinstance(value, bool)):
        raise PyExplainError(f"{name} must be an integer, got {value!r}")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise PyExplainError(f"{name} must be a positive number, got {value!r}")


def check_fraction(name: str, value: float) -> None:
    """One-line error unless ``0 < value < 1``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
        raise PyExplainError(f"{name} must be strictly between 0 and 1, got {value!r}")
