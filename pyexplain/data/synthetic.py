"""A procedurally generated shapes dataset whose evidence region is known per image (SPEC §8).

Each 32×32 RGB image shows one shape (the class: disk, square, triangle, cross, ring, diamond) of
random size, position and color on a smooth random background with pixel noise and two clutter
line segments that carry no class information. The shape's pixels are the image's *evidence
region*. ``two_class=True`` places two shapes of different classes, non-overlapping, in one image
(each with its own region) for cIM and class-sensitivity checks. Everything is deterministic from
``seed`` (a NumPy ``Generator``). Images are normalized with mean 0.5 and std 0.25 per channel, so
the reference input 0 is mid-gray.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .training import Split

SIZE = 32
CLASSES = ("disk", "square", "triangle", "cross", "ring", "diamond")
MEAN, STD = 0.5, 0.25


@dataclass
class SyntheticSet(Split):
    """``x [N, 3, H, W]`` normalized, ``y [N]`` the first shape's class, ``labels [N, L]`` every class
    present (L = 1, or 2 for two-class images) and ``regions [N, L, H, W]`` each class's evidence mask."""

    labels: Tensor = None  # type: ignore[assignment]
    regions: Tensor = None  # type: ignore[assignment]


def shape_mask(kind: int, cy: float, cx: float, r: float, size: int = SIZE) -> np.ndarray:
    """Boolean mask of shape ``CLASSES[kind]`` centred at ``(cy, cx)`` with radius ``r`` (pixels)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    name = CLASSES[kind]
    if name == "disk":
        return dy ** 2 + dx ** 2 <= r ** 2
    if name == "square":
        return np.maximum(np.abs(dy), np.abs(dx)) <= 0.8 * r
    if name == "triangle":
        return (dy <= 0.7 * r) & (np.abs(dx) <= 0.6 * (dy + r))
    if name == "cross":
        arm = r / 3
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    if name == "ring":
        d2 = dy ** 2 + dx ** 2
        return (d2 <= r ** 2) & (d2 >= (0.5 * r) ** 2)
    return np.abs(dy) + np.abs(dx) <= r  # diamond


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = torch.tensor(rng.uniform(0.15, 0.85, (1, 3, 4, 4)), dtype=torch.float32)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[0]
    image = smooth.numpy().transpose(1, 2, 0) + rng.normal(0, 0.04, (size, size, 3))
    for _ in range(2):  # clutter: line segments in random colors
        (y0, x0), (y1, x1) = rng.uniform(0, size - 1, (2, 2))
        t = np.linspace(0, 1, 2 * size)
        ys, xs = np.round(y0 + t * (y1 - y0)).astype(int), np.round(x0 + t * (x1 - x0)).astype(int)
        image[ys, xs] = rng.uniform(0, 1, 3)
    return image


def _contrasting_color(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    for _ in range(100):
        color = rng.uniform(0, 1, 3)
        if np.abs(color - under).mean() >= 0.3:
            return color
    return 1.0 - under


def _place(rng: np.random.Generator, size: int, count: int) -> list[tuple[float, float, float]]:
    """``count`` non-overlapping ``(cy, cx, r)`` (2 px apart at least), the whole set redrawn until it fits."""
    while True:
        radii = rng.uniform(5.0, 8.0, count)
        spots = [(*rng.uniform(r, size - 1 - r, 2), r) for r in radii]
        if all((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 > (a[2] + b[2] + 2) ** 2
               for i, a in enumerate(spots) for b in spots[i + 1:]):
            return spots


def make_synthetic(n: int, seed: int = 0, two_class: bool = False, size: int = SIZE) -> SyntheticSet:
    """``n`` images from ``seed``; classes are balanced and shuffled. ``two_class`` puts two different
    classes in each image (``y`` is the first, ``labels`` both)."""
    rng = np.random.default_rng(seed)
    shapes = 2 if two_class else 1
    images = np.empty((n, size, size, 3))
    labels = np.empty((n, shapes), dtype=np.int64)
    regions = np.zeros((n, shapes, size, size), dtype=bool)
    first = rng.permutation(np.arange(n) % len(CLASSES))
    for i in range(n):
        image = _background(rng, size)
        kinds = [int(first[i])]
        if two_class:
            kinds.append(int((first[i] + rng.integers(1, len(CLASSES))) % len(CLASSES)))
        for j, (kind, (cy, cx, r)) in enumerate(zip(kinds, _place(rng, size, len(kinds)))):
            mask = shape_mask(kind, cy, cx, r, size)
            image[mask] = _contrasting_color(rng, image[mask].mean(0))
            labels[i, j], regions[i, j] = kind, mask
        images[i] = image
    x = (torch.tensor(np.clip(images, 0, 1), dtype=torch.float32).permute(0, 3, 1, 2) - MEAN) / STD
    labels_t = torch.from_numpy(labels)
    return SyntheticSet(x.contiguous(), labels_t[:, 0].clone(), labels_t, torch.from_numpy(regions))


def to_unit_range(x: Tensor) -> Tensor:
    """Normalized synthetic images back to ``[0, 1]`` (for display)."""
    return (x * STD + MEAN).clamp(0, 1)
