"""Figures for evaluations (matplotlib's Agg canvas, no global backend change): mean metric curves
and side-by-side map comparisons. Every function returns PNG bytes."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image
from torch import Tensor

from .visualize import overlay

CURVE_LABELS = {
    "morf": ("fraction of pixels removed (most relevant first)", "F_t(masked) / F_t(I)"),
    "lerf": ("fraction of pixels removed (least relevant first)", "F_t(masked) / F_t(I)"),
    "insertion": ("fraction of pixels inserted into the blurred image", "p(target)"),
    "deletion": ("fraction of pixels deleted", "p(target)"),
    "cim": ("fraction inserted (lowest attribution first)", "p(other true classes)"),
    "roar": ("fraction of pixels removed (most relevant first), model retrained", "test accuracy"),
}


def _png(figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def to_pil(image: Tensor) -> Image.Image:
    """``[3, H, W]`` in ``[0, 1]`` → an RGB PIL image."""
    return Image.fromarray(np.round(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8), "RGB")


def map_overlay(image: Tensor, attribution_map: Tensor) -> Image.Image:
    """The map as a red/blue heatmap over a faded copy of ``image`` ``[3, H, W]``."""
    array = attribution_map.float().cpu().numpy()
    return overlay(to_pil(image), array).crop((array.shape[1], 0, 2 * array.shape[1], array.shape[0]))


def curve_plot(curves: dict[str, tuple[Tensor, Tensor]], metric: str, title: str = "") -> bytes:
    """Mean curve (over images) per method for one curve metric."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for method, (fractions, curve) in curves.items():
        axes.plot(fractions.numpy(), curve.float().nanmean(0).numpy(), label=method, linewidth=1.5)
    xlabel, ylabel = CURVE_LABELS[metric]
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title or metric)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    return _png(figure)


def compare_figure(image: Tensor, maps: dict[str, Tensor], title: str = "") -> bytes:
    """One row: the image, then each method's map over it (red = for the target, blue = against)."""
    from matplotlib.figure import Figure

    panels = [("image", to_pil(image))] + [(name, map_overlay(image, m)) for name, m in maps.items()]
    columns = min(len(panels), 6)
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(2.2 * columns, 2.4 * rows))
    for k, (name, picture) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, k + 1)
        axes.imshow(np.asarray(picture), interpolation="nearest")
        axes.set_title(name, fontsize=9)
        axes.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    return _png(figure)
