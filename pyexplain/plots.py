"""Figures for evaluations (matplotlib's Agg canvas, no global backend change): mean metric curves
and map comparisons drawn with :mod:`pyexplain.visualize`. Every function returns PNG bytes."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from torch import Tensor

if TYPE_CHECKING:
    from .visualize import MapSign

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


def compare_figure(image: Tensor, maps: dict[str, Tensor], signs: dict[str, MapSign], title: str = "") -> bytes:
    """The image, then each method's map on its own scale (:mod:`pyexplain.visualize`: diverging for
    signed maps, sequential for non-negative ones), a colour bar under each; 6 panels a row."""
    from matplotlib.figure import Figure

    from .visualize import Picture, colorbar, show_image, show_map

    picture = Picture(to_pil(image))
    pixels = (picture.image.width, picture.image.height)
    panels = 1 + len(maps)
    columns = min(panels, 6)
    rows = -(-panels // columns)
    figure = Figure(figsize=(2.3 * columns, 2.8 * rows))
    cells = figure.add_gridspec(rows, columns, hspace=0.25, wspace=0.12)

    def cell(k: int):
        return cells[divmod(k, columns)].subgridspec(2, 1, height_ratios=[1, 0.06], hspace=0.06)

    show_image(figure.add_subplot(cell(0)[0]), picture, pixels)
    figure.axes[0].set_title("image", fontsize=9)
    for k, (name, attribution_map) in enumerate(maps.items(), start=1):
        values = attribution_map.float().cpu().numpy()
        axes = figure.add_subplot(cell(k)[0])
        mappable = show_map(axes, values, signs[name], picture)
        axes.set_title(name, fontsize=9)
        colorbar(figure, figure.add_subplot(cell(k)[1]), mappable, signs[name], values, orientation="horizontal",
                 label=False)
    if title:
        figure.suptitle(title, fontsize=10)
    return _png(figure)
