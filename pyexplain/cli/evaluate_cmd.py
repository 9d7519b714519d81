"""``pyexplain evaluate --model M --methods a,b --images builtin --metrics morf,insertion``: score
methods' maps; prints a table and writes CSV, JSON, curve PNGs and a self-contained HTML report."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Optional

import torch
import typer

from ..errors import PyExplainError
from ..evaluation import CURVE_METRICS, METRICS, Evaluation, display_images, evaluate, load_eval_set
from ..html_report import render
from ..io import atomic_write
from ..models import DEFAULT_MODEL, load_model
from ..plots import curve_plot
from ..registry import get_method, list_methods
from . import app
from .options import parse_method_options, resolve_device

DEFAULT_METRICS = "morf,lerf,insertion,deletion"


def parse_methods(text: str) -> list[str]:
    """``all`` or a comma-separated list of registered methods (each checked)."""
    names = [info.name for info in list_methods()] if text.strip() == "all" else [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise PyExplainError("--methods is empty")
    for name in names:
        get_method(name)
    return names


def parse_per_method_options(pairs: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``["gradcam.layer=features.3"]`` → ``{"gradcam": {"layer": "features.3"}}``."""
    options: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        method, dot, rest = pair.partition(".")
        if not dot or "=" in method:
            raise PyExplainError(f"option {pair!r} is not METHOD.KEY=VALUE")
        if method not in methods:
            raise PyExplainError(f"option {pair!r} names method {method!r}, which is not in --methods")
        options.setdefault(method, {}).update(parse_method_options([rest]))
    return options


def format_table(evaluation: Evaluation) -> str:
    """Plain-text methods × metrics means (arrows: which direction is better)."""
    metrics = evaluation.metrics
    head = f"{'method':24s}" + "".join(f"{k + (' ↑' if METRICS[k][1] else ' ↓'):>12s}" for k in metrics) + f"{'seconds':>10s}"
    lines = [head]
    for method, values in evaluation.summary().items():
        cells = "".join(f"{values[k]:12.4f}" for k in metrics)
        lines.append(f"{method:24s}{cells}{evaluation.seconds[method]:10.2f}")
    lines.extend(f"{method:24s}not run: {reason}" for method, reason in evaluation.errors.items())
    return "\n".join(lines)


def write_outputs(evaluation: Evaluation, out: Path, display: torch.Tensor, title: str, settings: dict[str, Any],
                  label=None) -> list[Path]:
    """CSV (one row per method, image, metric), JSON summary, one PNG per curve metric, HTML report."""
    written = []

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["method", "image", "target", "metric", "value"])
            writer.writeheader()
            writer.writerows(evaluation.rows())

    written.append(atomic_write(out / "results.csv", write_csv))
    summary = {k: {m: (None if math.isnan(v) else v) for m, v in per.items()} for k, per in evaluation.summary().items()}
    document = {**settings, "images": evaluation.data.names, "targets": evaluation.targets.tolist(), "summary": summary,
                "seconds": evaluation.seconds, "errors": evaluation.errors}
    written.append(atomic_write(out / "summary.json", lambda tmp: tmp.write_text(json.dumps(document, indent=2))))
    plots = {}
    for metric in (m for m in evaluation.metrics if m in CURVE_METRICS):
        curves = {method: per[metric] for method, per in evaluation.curves.items()}
        if curves:
            plots[metric] = curve_plot(curves, metric, f"{metric}: {title}")
            written.append(atomic_write(out / f"curves_{metric}.png", lambda tmp, png=plots[metric]: tmp.write_bytes(png)))
    page = render(evaluation, display, plots, title, label)
    written.append(atomic_write(out / "report.html", lambda tmp: tmp.write_text(page, encoding="utf-8")))
    return written


@app.command("evaluate")
def evaluate_command(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Model name (e.g. digits_cnn, synthetic_vgg)."),
    methods: str = typer.Option("gradxinput,saliency", "--methods", help="Comma-separated methods, or 'all'."),
    images: str = typer.Option("builtin", "--images", help="'builtin', 'builtin:two_class' (synthetic models) or a directory."),
    metrics: str = typer.Option(DEFAULT_METRICS, "--metrics", help=f"Comma-separated, from: {', '.join(METRICS)}."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="At most this many images (builtin small-model sets: 32)."),
    out: Path = typer.Option(Path("pyexplain-eval"), "--out", "-o", help="Output directory."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="State-dict file (weights_only)."),
    option: list[str] = typer.Option([], "--option", "-O", help="Method option METHOD.KEY=VALUE (repeatable)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Rows per forward pass."),
    flip_steps: int = typer.Option(20, "--flip-steps", help="MoRF/LeRF steps up to 5% of the image."),
    insertion_step: Optional[int] = typer.Option(None, "--insertion-step", help="Pixels per insertion/deletion step (default: 224 at 224x224, scaled)."),
    seed: int = typer.Option(0, "--seed", help="Seed for torch's RNG and the synthetic images."),
) -> None:
    """Score methods' maps with the metrics; print a table, write results.csv, summary.json, curves_*.png, report.html."""
    method_names = parse_methods(methods)
    metric_names = [m.strip() for m in metrics.split(",") if m.strip()]
    per_method = parse_per_method_options(option, method_names)
    if limit is not None and limit < 1:
        raise PyExplainError(f"--limit must be at least 1, got {limit}")
    torch.manual_seed(seed)
    net, preprocess = load_model(model, weights, resolve_device(device))
    data = load_eval_set(model, preprocess, images, limit, seed)
    result = evaluate(net, data, method_names, metric_names, options=per_method, batch_size=batch_size,
                      flip_steps=flip_steps, insertion_pixels_per_step=insertion_step)
    if not result.values:
        raise PyExplainError("no method could be run: " + "; ".join(f"{m}: {r}" for m, r in result.errors.items()))
    print(format_table(result))
    settings = {"model": model, "images_source": images, "methods": method_names, "metrics": metric_names,
                "flip_steps": flip_steps, "insertion_step": insertion_step, "seed": seed, "options": per_method}
    title = f"{model} on {images} ({len(data.names)} images)"
    written = write_outputs(result, out, display_images(data.x, preprocess), title, settings, preprocess.label)
    print("wrote " + ", ".join(str(p) for p in written))
