"""A self-contained HTML page for an evaluation: the summary table, the curve plots and every map,
with all images inlined as base64 PNGs (no external files)."""
from __future__ import annotations

import base64
import html
import io

from PIL import Image
from torch import Tensor

from .evaluation import METRICS, Evaluation
from .plots import to_pil
from .registry import get_method

THUMBNAIL = 160


def _img(picture: Image.Image | bytes, width: int | None = None) -> str:
    if isinstance(picture, Image.Image):
        if width and picture.width < width:
            picture = picture.resize((width, round(picture.height * width / picture.width)), Image.Resampling.NEAREST)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        picture = buffer.getvalue()
    return f'<img src="data:image/png;base64,{base64.b64encode(picture).decode()}">'


def scale_text(attribution_map, sign: str) -> str:
    """The ends of a map's colour scale: ``±s`` signed, ``low – high`` non-negative."""
    from .visualize import map_norm

    norm = map_norm(attribution_map, sign)
    return f"±{norm.vmax:.3g}" if sign == "signed" else f"{norm.vmin:.3g} – {norm.vmax:.3g}"


def legend(sign: str) -> bytes:
    """A horizontal colour bar for the thumbnails of one sign, its ends as labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import CenteredNorm, Normalize
    from matplotlib.figure import Figure

    from .visualize import colorbar, colormap

    figure = Figure(figsize=(2.4, 0.4), dpi=100)
    FigureCanvasAgg(figure)
    cax = figure.add_axes([0.05, 0.5, 0.9, 0.45])
    norm = CenteredNorm(0.0, 1.0) if sign == "signed" else Normalize(0.0, 1.0)
    colorbar(figure, cax, ScalarMappable(norm, colormap(sign)), sign, [], orientation="horizontal", label=False)
    ticks = ([-1, 0, 1], ["−s", "0", "+s"]) if sign == "signed" else ([0, 1], ["low", "high"])
    cax.set_xticks(*ticks)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.03)
    return buffer.getvalue()


def summary_table(evaluation: Evaluation) -> str:
    """Methods × metrics means, the best of each column in bold (↑ higher / ↓ lower is better)."""
    summary = evaluation.summary()
    metrics = evaluation.metrics
    best = {}
    for metric in metrics:
        column = [summary[m][metric] for m in summary if summary[m][metric] == summary[m][metric]]
        if column:
            best[metric] = max(column) if METRICS[metric][1] else min(column)
    head = "".join(f"<th>{k} {'↑' if METRICS[k][1] else '↓'}</th>" for k in metrics)
    body = []
    for method, values in summary.items():
        cells = "".join(
            f"<td>{'<b>' if values[k] == best.get(k) else ''}{values[k]:.4f}{'</b>' if values[k] == best.get(k) else ''}</td>"
            for k in metrics)
        body.append(f"<tr><td>{html.escape(method)}</td>{cells}<td>{evaluation.seconds[method]:.2f}</td></tr>")
    return f"<table><tr><th>method</th>{head}<th>explain s</th></tr>{''.join(body)}</table>"


def render(evaluation: Evaluation, display: Tensor, plots: dict[str, bytes], title: str, labels=None) -> str:
    """The page: ``display [N, 3, H, W]`` are the images in ``[0, 1]``, ``plots`` curve PNGs by metric."""
    label = (lambda i: labels(i)) if labels else str
    parts = [f"<h1>{html.escape(title)}</h1>", summary_table(evaluation)]
    if evaluation.errors:
        parts.append("<h2>Methods not run</h2><ul>" + "".join(
            f"<li>{html.escape(m)}: {html.escape(r)}</li>" for m, r in evaluation.errors.items()) + "</ul>")
    if plots:
        parts.append("<h2>Curves (mean over images)</h2>" + "".join(_img(png) for png in plots.values()))
    from .visualize import heatmap

    methods = list(evaluation.maps)
    signs = {m: get_method(m).map_sign() for m in methods}
    parts.append("<h2>Maps</h2><p>Each map on its own scale, given under it. Signed maps (red = evidence for "
                 f"the target, blue = against): {_img(legend('signed'))} &nbsp; non-negative maps (relevance): "
                 f"{_img(legend('nonnegative'))}</p>"
                 "<table><tr><th>image</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in methods) + "</tr>")
    for i, name in enumerate(evaluation.data.names):
        t = int(evaluation.targets[i])
        cells = "".join(
            f"<td>{_img(heatmap(array, signs[m]), THUMBNAIL)}<br>{scale_text(array, signs[m])}</td>"
            for m in methods for array in [evaluation.maps[m][i].float().cpu().numpy()])
        parts.append(f"<tr><td>{_img(to_pil(display[i]), THUMBNAIL)}<br>{html.escape(name)}<br>target: "
                     f"{html.escape(label(t))}</td>{cells}</tr>")
    parts.append("</table>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:4px;text-align:center;font-size:12px}img{image-rendering:pixelated}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
