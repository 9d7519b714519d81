"""Heatmaps people can look at: diverging colors, red = evidence for, blue = against, white = none."""
from __future__ import annotations

import numpy as np
from PIL import Image


def signed_normalize(attribution_map: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """Scale a signed map to ``[-1, 1]`` by its ``percentile`` of ``|a|`` (robust to a few extreme pixels)."""
    scale = np.percentile(np.abs(attribution_map), percentile)
    if not np.isfinite(scale) or scale <= 0:
        scale = np.abs(attribution_map).max()
    if scale <= 0:
        return np.zeros_like(attribution_map, dtype=np.float64)
    return np.clip(attribution_map / scale, -1.0, 1.0)


def diverging_colors(values: np.ndarray) -> np.ndarray:
    """``[-1, 1]`` → RGB uint8: −1 blue (0,0,255)… 0 white … +1 red (255,0,0), linear in between."""
    v = values[..., None]
    white = np.ones(values.shape + (3,))
    red = np.array([1.0, 0.0, 0.0])
    blue = np.array([0.0, 0.0, 1.0])
    rgb = np.where(v >= 0, white + v * (red - white), white + (-v) * (blue - white))
    return np.round(rgb * 255).astype(np.uint8)


def heatmap(attribution_map: np.ndarray) -> Image.Image:
    """The map alone as a diverging-color image."""
    return Image.fromarray(diverging_colors(signed_normalize(attribution_map)), "RGB")


def overlay(image: Image.Image, attribution_map: np.ndarray, image_weight: float = 0.35) -> Image.Image:
    """The heatmap over a faded grayscale copy of ``image`` (resized to the map), side by side with the image.

    Left: the image the model saw. Right: ``(1-w)·heatmap + w·gray(image)``, so unattributed regions
    stay light and the scene is still recognizable.
    """
    height, width = attribution_map.shape
    base = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    gray = np.asarray(base.convert("L").convert("RGB"), dtype=np.float64)
    colors = diverging_colors(signed_normalize(attribution_map)).astype(np.float64)
    blended = np.round((1 - image_weight) * colors + image_weight * gray).astype(np.uint8)
    canvas = Image.new("RGB", (2 * width, height), "white")
    canvas.paste(base, (0, 0))
    canvas.paste(Image.fromarray(blended, "RGB"), (width, 0))
    return canvas
