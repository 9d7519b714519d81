"""Noisy linear imputation of removed pixels (Rong, Leemann, Borisov, Kasneci, Kasneci: A Consistent
and Efficient Evaluation Strategy for Attribution Methods, ICML 2022 — ROAD).

Each removed pixel ``i`` takes the weighted mean of its in-image 8-neighbours ``N(i)``:

    x_i = Σ_{j∈N(i)} w_ij x_j / Σ_{j∈N(i)} w_ij,   w_ij = 1/6 (direct neighbour), 1/12 (diagonal),

where removed neighbours are unknowns too. Per image (all channels share the matrix), the removed
pixels solve the sparse linear system

    (Σ_{j∈N(i)} w_ij) x_i − Σ_{j∈N(i) removed} w_ij x_j = Σ_{j∈N(i) known} w_ij x_j,

symmetric and diagonally dominant, hence uniquely solvable whenever the image keeps at least one
known pixel (every 8-connected removed region then borders a known one). Then ``x_i += ε_i``,
``ε ~ N(0, noise²)`` drawn from a generator seeded by ``seed``. Known pixels are never changed. An
image with every pixel removed has nothing to interpolate: it becomes the noise alone (around 0).

The imputed values are smooth continuations of the surround instead of a constant that outlines
the removal pattern for a retrained model to read.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve
from torch import Tensor

from ..errors import PyExplainError

#: ``(dy, dx, weight)`` of the 8 neighbours: direct 1/6, diagonal 1/12 (they sum to 1).
NEIGHBOURS = tuple((dy, dx, 1 / 6 if dy == 0 or dx == 0 else 1 / 12)
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
#: Default standard deviation of the noise added to the imputed pixels.
NOISE = 0.01


def _solve(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The imputed values ``[U, C]`` of the removed pixels of one ``image [C, H, W]`` (raster order)."""
    c, h, w = image.shape
    ys, xs = np.nonzero(removed)
    index = np.full((h, w), -1, dtype=np.int64)
    index[ys, xs] = np.arange(len(ys))
    diagonal = np.zeros(len(ys))
    rhs = np.zeros((len(ys), c))
    rows, cols, vals = [], [], []
    for dy, dx, weight in NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        diagonal[inside] += weight
        u, ny, nx = np.nonzero(inside)[0], ny[inside], nx[inside]
        unknown = removed[ny, nx]
        rows.append(u[unknown])
        cols.append(index[ny[unknown], nx[unknown]])
        vals.append(np.full(int(unknown.sum()), -weight))
        rhs[u[~unknown]] += weight * image[:, ny[~unknown], nx[~unknown]].T
    u = np.arange(len(ys))
    matrix = coo_matrix((np.concatenate(vals + [diagonal]), (np.concatenate(rows + [u]), np.concatenate(cols + [u]))),
                        shape=(len(ys), len(ys))).tocsc()
    return np.asarray(spsolve(matrix, rhs)).reshape(len(ys), c)


def linear_imputation(x: Tensor, removed: Tensor, noise: float = NOISE, seed: int = 0) -> Tensor:
    """``x [N, C, H, W]`` with the pixels ``removed [N, H, W]`` (bool, all channels) replaced by the
    noisy linear imputation (module docstring); same dtype and device as ``x``."""
    if removed.shape != (x.shape[0],) + x.shape[-2:]:
        raise PyExplainError(f"removal mask of shape {tuple(removed.shape)} does not match images {tuple(x.shape)}")
    if not noise >= 0:
        raise PyExplainError(f"noise must be >= 0, got {noise}")
    images = x.detach().cpu().double().numpy()
    mask = removed.cpu().bool().numpy()
    out = images.copy()
    for i in range(len(images)):
        if mask[i].all():
            out[i] = 0.0
        elif mask[i].any():
            out[i][:, mask[i]] = _solve(images[i], mask[i]).T
    result = torch.from_numpy(out).to(x.dtype)
    if noise > 0:
        eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * noise
        result = torch.where(removed.cpu()[:, None], result + eps.to(x.dtype), result)
    return result.to(x.device)
