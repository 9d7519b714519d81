"""A self-contained HTML page for an evaluation: the summary table, the curve plots and every map,
with all images inlined as base64 PNGs (no external files)."""
from __future__ import annotations

import base64
import html
import io

from PIL import Image
from torch import Tensor

from .evaluation import METRICS, Evaluation
from .plots import map_overlay, to_pil

THUMBNAIL = 160


def _img(picture: Image.Image | bytes, width: int | None = None) -> str:
    if isinstance(picture, Image.Image):
        if width and picture.width < width:
            picture = picture.resize((width, round(picture.height * width / picture.width)), Image.Resampling.NEAREST)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        picture = buffer.getvalue()
    return f'<img src="data:image/png;base64,{base64.b64encode(picture).decode()}">'


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
    methods = list(evaluation.maps)
    parts.append("<h2>Maps</h2><p>red = evidence for the target, blue = against.</p><table><tr><th>image</th>"
                 + "".join(f"<th>{html.escape(m)}</th>" for m in methods) + "</tr>")
    for i, name in enumerate(evaluation.data.names):
        t = int(evaluation.targets[i])
        cells = "".join(f"<td>{_img(map_overlay(display[i], evaluation.maps[m][i]), THUMBNAIL)}</td>" for m in methods)
        parts.append(f"<tr><td>{_img(to_pil(display[i]), THUMBNAIL)}<br>{html.escape(name)}<br>target: "
                     f"{html.escape(label(t))}</td>{cells}</tr>")
    parts.append("</table>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:4px;text-align:center;font-size:12px}img{image-rendering:pixelated}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
