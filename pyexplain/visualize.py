"""Attribution figures a person can read: the image beside (or under) its map, a colour bar and a title.

A *signed* map (evidence for and against the target) is drawn on a diverging colormap centred at zero
(``RdBu_r``: red = for, blue = against, near-white = none), from −s to +s with s the 99.5th percentile
of ``|a|``. A *non-negative* map (relevance only: Grad-CAM, FullGrad, RISE, perturbation masks,
saliency, SmoothGrad²) is drawn on a sequential colormap (``inferno``: black = least, yellow = most)
from its 0.5th to its 99.5th percentile. Percentiles keep a few extreme pixels from washing out the
rest; values beyond the scale take its end colours (the colour bar's arrows). Methods declare which
kind their map is (:meth:`pyexplain.registry.MethodInfo.map_sign`).

Everything is drawn with matplotlib's colormaps and norms on its Agg canvas: no pyplot, no global
backend change, no state left behind.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Literal

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import CenteredNorm, Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Rectangle
from matplotlib.textpath import TextToPath
from matplotlib.ticker import FormatStrFormatter, MaxNLocator
from PIL import Image

MapSign = Literal["signed", "nonnegative"]
Layout = Literal["side-by-side", "overlay"]
View = Literal["image", "model"]
Box = tuple[float, float, float, float]

COLORMAPS: dict[str, str] = {"signed": "RdBu_r", "nonnegative": "inferno"}
PERCENTILE = 99.5
#: Longest and shortest panel side in output pixels: larger images are scaled down, tiny ones up.
MAX_PANEL, MIN_PANEL = 1024, 192
OUTSIDE_VIEW = "#c8c8c8"  # where the map panel lies outside the model's view
DPI = 100
_FONT = 10.0  # title size in points


def colormap(sign: MapSign) -> Colormap:
    """The colormap for a map of this sign (``RdBu_r`` signed, ``inferno`` non-negative)."""
    if sign not in COLORMAPS:
        raise ValueError(f"map sign must be 'signed' or 'nonnegative', not {sign!r}")
    return colormaps[COLORMAPS[sign]]


def map_norm(attribution_map: np.ndarray, sign: MapSign, percentile: float = PERCENTILE) -> Normalize:
    """The colour scale of a map, robust to a few extreme pixels.

    Signed: centred at 0, half-range = the ``percentile`` of ``|a|`` (its maximum if that is 0).
    Non-negative: from the ``100 − percentile`` to the ``percentile`` percentile of ``a`` (its
    minimum and maximum if those coincide). A constant or all-zero map gets a unit scale.
    """
    values = np.asarray(attribution_map, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        values = np.zeros(1)
    if sign == "signed":
        magnitude = np.abs(values)
        half = float(np.percentile(magnitude, percentile)) or float(magnitude.max()) or 1.0
        return CenteredNorm(vcenter=0.0, halfrange=half, clip=True)
    colormap(sign)  # rejects an unknown sign
    low, high = float(np.percentile(values, 100 - percentile)), float(np.percentile(values, percentile))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        high = low + 1.0
    return Normalize(vmin=low, vmax=high, clip=True)


def colorize(attribution_map: np.ndarray, sign: MapSign = "signed", norm: Normalize | None = None) -> np.ndarray:
    """The map through its norm and colormap: RGB ``uint8`` ``[H, W, 3]``."""
    norm = norm or map_norm(attribution_map, sign)
    return colormap(sign)(norm(np.asarray(attribution_map, dtype=np.float64)), bytes=True)[..., :3]


def strength(attribution_map: np.ndarray, sign: MapSign, norm: Normalize) -> np.ndarray:
    """How far each pixel is from "nothing", in ``[0, 1]``: ``|norm(a) − ½|·2`` signed, ``norm(a)`` non-negative."""
    scaled = np.asarray(norm(np.asarray(attribution_map, dtype=np.float64)), dtype=np.float64)
    scaled = np.nan_to_num(scaled, nan=0.0)
    return np.abs(scaled - 0.5) * 2 if sign == "signed" else scaled


def heatmap(attribution_map: np.ndarray, sign: MapSign = "signed") -> Image.Image:
    """The map alone as an RGB image, one pixel per map value."""
    return Image.fromarray(colorize(attribution_map, sign), "RGB")


def overlay(image: Image.Image, attribution_map: np.ndarray, sign: MapSign = "signed",
            opacity: float = 0.85) -> Image.Image:
    """The map's colours over a faded grayscale copy of ``image`` (resized to the map), each pixel
    ``α·colour + (1−α)·gray`` with ``α = opacity·strength``: weak attribution leaves the scene visible."""
    height, width = attribution_map.shape
    gray = _faded(image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)).astype(np.float64)
    norm = map_norm(attribution_map, sign)
    alpha = (opacity * strength(attribution_map, sign, norm))[..., None]
    colors = colorize(attribution_map, sign, norm).astype(np.float64)
    return Image.fromarray(np.round(alpha * colors + (1 - alpha) * gray).astype(np.uint8), "RGB")


def _faded(image: Image.Image) -> np.ndarray:
    """A light grayscale copy: the scene stays recognizable under the colours without competing with them."""
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    return np.repeat((0.45 * gray + 0.55 * 255)[..., None], 3, axis=2).round().astype(np.uint8)


def title_line(model: str, method: str, target: int, label: str, probability: float | None = None,
               image: str | None = None, logit: float | None = None) -> str:
    """``"chelsea · efficientnet_lite0 · gradxinput — target: Egyptian cat (285), p = 0.799"``; empty
    parts are left out, and the target's logit is given where its probability is not known."""
    head = " · ".join(part for part in (image, model, method) if part)
    scores = [f"p = {probability:.3f}" if probability is not None else "",
              f"logit = {logit:.3g}" if logit is not None else ""]
    named = f"{label} ({target})" if label != str(target) else str(target)
    return ", ".join([f"{head} — target: {named}"] + [s for s in scores if s])


def model_view_box(image_size: tuple[int, int], input_size: tuple[int, int], resize: int | None) -> Box:
    """Where the model's input lies in the original image, ``(left, top, right, bottom)`` in its pixels.

    ``resize=None``: the whole image was resized to the input (the whole image). Otherwise the
    shorter side was resized to ``resize`` and the centre ``input_size = (height, width)`` cropped,
    as torchvision's ``resize`` (longer side truncated) and ``center_crop`` (offsets rounded) do.
    """
    width, height = image_size
    if resize is None:
        return 0.0, 0.0, float(width), float(height)
    if width <= height:
        new_width, new_height = resize, int(resize * height / width)
    else:
        new_width, new_height = int(resize * width / height), resize
    crop_height, crop_width = input_size
    top, left = int(round((new_height - crop_height) / 2)), int(round((new_width - crop_width) / 2))
    sx, sy = width / new_width, height / new_height
    return left * sx, top * sy, (left + crop_width) * sx, (top + crop_height) * sy


@dataclass(frozen=True)
class Picture:
    """An image and where an attribution map lies on it (``box`` in the image's pixels; None: all of it)."""

    image: Image.Image
    box: Box | None = None

    def extent(self) -> Box:
        """The map's extent for ``imshow``: ``(left, right, bottom, top)``."""
        left, top, right, bottom = self.box or (0.0, 0.0, float(self.image.width), float(self.image.height))
        return left, right, bottom, top

    def covers_all(self) -> bool:
        return self.box is None or np.allclose(self.box, (0, 0, self.image.width, self.image.height), atol=0.5)


def model_picture(image: Image.Image, preprocess, view: View = "image") -> Picture:
    """``image`` as a figure shows it for a model with ``preprocess`` (a
    :class:`pyexplain.models.Preprocess`): ``image``: the whole image at its own resolution, the
    model's centre crop (if any) framed and the map placed on it; ``model``: the resized/cropped
    image the model saw, the map covering it."""
    if view == "model":
        return Picture(preprocess.view(image))
    if view != "image":
        raise ValueError(f"view must be 'image' or 'model', not {view!r}")
    rgb = image.convert("RGB")
    return Picture(rgb, model_view_box(rgb.size, (preprocess.size, preprocess.size), preprocess.resize))


def sign_of(attribution_map: np.ndarray) -> MapSign:
    """For a map no method declares (a method's extra outputs): non-negative when no value is below 0."""
    values = np.asarray(attribution_map)
    return "nonnegative" if not (values < 0).any() else "signed"


def panel_size(width: int, height: int) -> tuple[int, int]:
    """A panel's size in output pixels: the image's own, scaled to at most :data:`MAX_PANEL` on the
    longer side and (tiny images) at least :data:`MIN_PANEL` on the shorter side."""
    scale = min(MAX_PANEL / max(width, height), max(1.0, MIN_PANEL / min(width, height)))
    return max(1, round(width * scale)), max(1, round(height * scale))


def show_image(axes: Axes, picture: Picture, pixels: tuple[int, int], faded: bool = False) -> None:
    """The image on ``axes`` in its own pixel coordinates, pre-scaled to ``pixels``; a dashed frame
    marks the model's view when it is only part of the image."""
    width, height = picture.image.size
    shown = picture.image.convert("RGB").resize(pixels, Image.Resampling.LANCZOS)
    axes.imshow(_faded(shown) if faded else np.asarray(shown), extent=(0, width, height, 0), interpolation="none")
    if not picture.covers_all():
        left, top, right, bottom = picture.box
        for colour, style in (("black", "-"), ("white", "--")):  # visible on light and dark images
            axes.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor=colour,
                                     linestyle=style, linewidth=1.2))
    axes.set_xlim(0, width)
    axes.set_ylim(height, 0)
    axes.set_axis_off()


def show_map(axes: Axes, attribution_map: np.ndarray, sign: MapSign, picture: Picture | None = None,
             on_image: bool = False, opacity: float = 0.85) -> ScalarMappable:
    """The map on ``axes`` (over ``picture``'s box, or alone in its own pixels) with its robust scale;
    ``on_image``: over the faded image, each pixel's opacity its :func:`strength`. Returns the mappable
    for the colour bar."""
    values = np.asarray(attribution_map, dtype=np.float64)
    norm = map_norm(values, sign)
    height, width = values.shape
    picture = picture or Picture(Image.new("RGB", (width, height), "white"))
    image_width, image_height = picture.image.size
    if on_image:
        pixels = axes.get_window_extent().size.round().astype(int)
        show_image(axes, picture, (max(1, int(pixels[0])), max(1, int(pixels[1]))), faded=True)
    elif not picture.covers_all():
        axes.add_patch(Rectangle((0, 0), image_width, image_height, color=OUTSIDE_VIEW, zorder=0))
    alpha = opacity * strength(values, sign, norm) if on_image else None
    axes.imshow(values, cmap=colormap(sign), norm=norm, alpha=alpha, extent=picture.extent(),
                interpolation="bilinear", interpolation_stage="data", resample=True)
    axes.set_xlim(0, image_width)
    axes.set_ylim(image_height, 0)
    axes.set_axis_off()
    return ScalarMappable(norm=norm, cmap=colormap(sign))


def colorbar(figure: Figure, cax: Axes, mappable: ScalarMappable, sign: MapSign, values: np.ndarray,
             orientation: str = "vertical", label: bool = True) -> None:
    """A colour bar on ``cax``; arrows at the ends whose values lie beyond the scale."""
    norm = mappable.norm
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    below = finite.size and finite.min() < norm.vmin - 1e-12 * abs(norm.vmin)
    above = finite.size and finite.max() > norm.vmax + 1e-12 * abs(norm.vmax)
    extend = {(True, True): "both", (True, False): "min", (False, True): "max"}.get((bool(below), bool(above)), "neither")
    bar = figure.colorbar(mappable, cax=cax, orientation=orientation, extend=extend)
    ticks = 5 if orientation == "vertical" else 3
    if sign == "signed":  # symmetric ticks: 0 and the scale's ends ±s
        bar.set_ticks(np.linspace(-norm.vmax, norm.vmax, ticks))
    else:
        bar.locator = MaxNLocator(ticks)
    bar.formatter = FormatStrFormatter("%.3g")
    bar.ax.tick_params(labelsize=7, length=2, pad=1)
    if label:
        text = "against ← 0 → for the target" if sign == "signed" else "relevance (more →)"
        bar.set_label(text, fontsize=8)


def fit_title(title: str, width: float) -> tuple[float, list[str]]:
    """A font size and lines for ``title`` within ``width`` pixels: one line at :data:`_FONT` points,
    else one line at down to 8 points, else wrapped at 8 points."""
    measured, _, _ = TextToPath().get_text_width_height_descent(title, FontProperties(size=_FONT), ismath=False)
    pixels = measured * DPI / 72
    if pixels <= width:
        return _FONT, [title]
    font = max(8.0, _FONT * width / pixels)
    if pixels * font / _FONT <= width:
        return font, [title]
    return font, textwrap.wrap(title, max(10, int(len(title) * width / (pixels * font / _FONT))))


def explanation_figure(picture: Picture, attribution_map: np.ndarray, sign: MapSign, title: str,
                       layout: Layout = "side-by-side") -> Figure:
    """One figure: ``side-by-side`` (the image, then the map alone over the model's view) or
    ``overlay`` (the map over a faded copy of the image), a colour bar and the ``title`` above,
    the panels at the image's own pixel size (see :func:`panel_size`)."""
    if layout not in ("side-by-side", "overlay"):
        raise ValueError(f"layout must be 'side-by-side' or 'overlay', not {layout!r}")
    panel_w, panel_h = panel_size(*picture.image.size)
    margin, gap, bar_w, bar_room = 8, 10, 14, 64
    panels = 2 if layout == "side-by-side" else 1
    width = margin + panels * panel_w + (panels - 1) * gap + gap + bar_w + bar_room
    font, lines = fit_title(title, width - 2 * margin)
    title_h = 8 + round(1.6 * font) * len(lines)
    height = title_h + panel_h + margin

    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(figure)

    def box(left: float, w: float, bottom: float = margin, h: float = panel_h) -> list[float]:
        return [left / width, bottom / height, w / width, h / height]

    figure.text(0.5, 1 - 4 / height, "\n".join(lines), ha="center", va="top", fontsize=font)
    x = margin
    if layout == "side-by-side":
        show_image(figure.add_axes(box(x, panel_w)), picture, (panel_w, panel_h))
        x += panel_w + gap
    mappable = show_map(figure.add_axes(box(x, panel_w)), attribution_map, sign, picture, on_image=layout == "overlay")
    x += panel_w + gap
    colorbar(figure, figure.add_axes(box(x, bar_w, margin + 4, panel_h - 8)), mappable, sign, attribution_map)
    return figure


def figure_image(figure: Figure) -> Image.Image:
    """The figure rendered on its Agg canvas, as an RGB image of exactly its pixel size."""
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy(), "RGB")


def explanation_image(picture: Picture, attribution_map: np.ndarray, sign: MapSign, title: str,
                      layout: Layout = "side-by-side") -> Image.Image:
    """:func:`explanation_figure` as an RGB image (for ``save_png``)."""
    return figure_image(explanation_figure(picture, attribution_map, sign, title, layout))
