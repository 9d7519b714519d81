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
from ..evaluation import CURVE_METRICS, METRICS, Evaluation, display_images, evaluate, evaluate_roar, load_eval_set
from ..metrics.roar import DEFAULT_FRACTIONS, FILLS
from ..html_report import render
from ..io import atomic_write
from ..models import DEFAULT_MODEL, load_model
from ..plots import curve_plot
from ..registry import get_method, list_methods
from . import app
from .options import OfflineOption
from .options import (
    DeviceOption, PerMethodOptions, WeightsOption, parse_method_options, resolve_device)

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


def format_roar(results: dict[str, dict[float, float]], errors: dict[str, str]) -> str:
    """Plain-text ROAR table: test accuracy of the retrained model per removed fraction (lower is better),
    and the methods that could not run."""
    fractions = list(next(iter(results.values())))
    lines = ["ROAR (test accuracy after removing the top fraction and retraining; lower is better)",
             f"{'method':24s}" + "".join(f"{f:>8.0%}" for f in fractions) + f"{'mean':>8s}"]
    lines += [f"{m:24s}" + "".join(f"{acc[f]:8.3f}" for f in fractions) + f"{sum(acc.values()) / len(acc):8.3f}"
              for m, acc in results.items()]
    lines += [f"{method:24s}not run: {reason}" for method, reason in errors.items()]
    return "\n".join(lines)


def parse_fractions(text: str) -> list[float]:
    try:
        fractions = [float(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise PyExplainError(f"--roar-fractions must be comma-separated numbers in [0, 1], got {text!r}") from None
    if not fractions or not all(0 <= f <= 1 for f in fractions):
        raise PyExplainError(f"--roar-fractions must be comma-separated numbers in [0, 1], got {text!r}")
    return fractions


def write_outputs(evaluation: Evaluation, out: Path, display: torch.Tensor, title: str, settings: dict[str, Any],
                  label=None, roar_results: dict[str, dict[float, float]] | None = None) -> list[Path]:
    """CSV (one row per method, image, metric), JSON summary, one PNG per curve metric, HTML report;
    with ROAR results also roar.csv (method, fraction, accuracy) and curves_roar.png."""
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
    if roar_results:
        document["roar"] = {m: {str(f): acc for f, acc in per.items()} for m, per in roar_results.items()}
        rows = [[m, f, acc] for m, per in roar_results.items() for f, acc in per.items()]
        written.append(atomic_write(out / "roar.csv", lambda tmp: tmp.write_text(
            "method,fraction,accuracy\n" + "".join(f"{m},{f},{acc}\n" for m, f, acc in rows))))
    written.append(atomic_write(out / "summary.json", lambda tmp: tmp.write_text(json.dumps(document, indent=2))))
    plots = {}
    for metric in (m for m in evaluation.metrics if m in CURVE_METRICS):
        curves = {method: per[metric] for method, per in evaluation.curves.items()}
        if curves:
            plots[metric] = curve_plot(curves, metric, f"{metric}: {title}")
            written.append(atomic_write(out / f"curves_{metric}.png", lambda tmp, png=plots[metric]: tmp.write_bytes(png)))
    if roar_results:
        curves = {m: (torch.tensor(list(per)), torch.tensor([list(per.values())])) for m, per in roar_results.items()}
        plots["roar"] = curve_plot(curves, "roar", f"ROAR: {title}")
        written.append(atomic_write(out / "curves_roar.png", lambda tmp: tmp.write_bytes(plots["roar"])))
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
    device: DeviceOption = "auto",
    weights: WeightsOption = None,
    offline: OfflineOption = False,
    option: PerMethodOptions = [],
    batch_size: int = typer.Option(64, "--batch-size", help="Rows per forward pass."),
    flip_steps: int = typer.Option(20, "--flip-steps", help="MoRF/LeRF steps up to 5% of the image."),
    insertion_step: Optional[int] = typer.Option(None, "--insertion-step", help="Pixels per insertion/deletion step (default: 224 at 224x224, scaled)."),
    seed: int = typer.Option(0, "--seed", help="Seed for torch's RNG and the synthetic images."),
    roar_fill: str = typer.Option("linear", "--roar-fill", help="ROAR removal: 'linear' (ROAD's noisy linear imputation) or 'mean'."),
    roar_fractions: str = typer.Option(",".join(str(f) for f in DEFAULT_FRACTIONS), "--roar-fractions", help="ROAR: fractions removed, one retraining each."),
    roar_epochs: Optional[int] = typer.Option(None, "--roar-epochs", help="ROAR: training epochs (default: the model's own recipe)."),
) -> None:
    """Score methods' maps with the metrics; print a table, write results.csv, summary.json, curves_*.png, report.html.

    ``roar`` (digits_cnn, synthetic_vgg, synthetic_resnet only) explains the model's whole training and
    test set and retrains the model once per method and fraction: minutes on the digits, longer on the
    synthetic models (shorten with --roar-epochs / --roar-fractions)."""
    method_names = parse_methods(methods)
    metric_names = [m.strip() for m in metrics.split(",") if m.strip()]
    per_method = parse_per_method_options(option, method_names)
    if limit is not None and limit < 1:
        raise PyExplainError(f"--limit must be at least 1, got {limit}")
    with_roar = "roar" in metric_names
    if with_roar:
        from ..data.small_models import check_roar_model

        check_roar_model(model)
        if roar_fill not in FILLS:
            raise PyExplainError(f"--roar-fill must be one of {', '.join(FILLS)}, got {roar_fill!r}")
        fractions = parse_fractions(roar_fractions)
        if roar_epochs is not None and roar_epochs < 1:
            raise PyExplainError(f"--roar-epochs must be at least 1, got {roar_epochs}")
    per_image = [m for m in metric_names if m != "roar"]
    torch.manual_seed(seed)
    net, preprocess = load_model(model, weights, resolve_device(device))
    data = load_eval_set(model, preprocess, images, limit, seed)
    result = evaluate(net, data, method_names, per_image, options=per_method, batch_size=batch_size,
                      flip_steps=flip_steps, insertion_pixels_per_step=insertion_step)
    if not result.values:
        raise PyExplainError("no method could be run: " + "; ".join(f"{m}: {r}" for m, r in result.errors.items()))
    print(format_table(result))
    roar_results = None
    if with_roar:
        roar_results, roar_errors = evaluate_roar(net, model, list(result.values), options=per_method,
                                                  fractions=fractions, fill=roar_fill, epochs=roar_epochs, seed=seed,
                                                  batch_size=batch_size)
        print(format_roar(roar_results, roar_errors))
    settings = {"model": model, "images_source": images, "methods": method_names, "metrics": metric_names,
                "flip_steps": flip_steps, "insertion_step": insertion_step, "seed": seed, "options": per_method}
    if with_roar:
        settings.update(roar_fill=roar_fill, roar_fractions=fractions, roar_epochs=roar_epochs)
    title = f"{model} on {images} ({len(data.names)} images)"
    written = write_outputs(result, out, display_images(data.x, preprocess), title, settings, preprocess.label, roar_results)
    print("wrote " + ", ".join(str(p) for p in written))
