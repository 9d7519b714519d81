"""``pyexplain evaluate --model M --methods a,b --images builtin --metrics morf,insertion``: score
methods' maps; prints a table and writes CSV, JSON, curve PNGs and a self-contained HTML report."""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ..errors import PyExplainError
from ..model_catalog import DEFAULT_MODEL
from . import app
from .images import expand_images
from .options import (
    BatchSizeOption, DeviceOption, InputSizeOption, LabelsOption, MeanOption, MethodsOption, ModelOption,
    OfflineOption, OptionOption, RandomWeightsOption, StdOption, WeightsOption, check_positive, model_spec,
    out_option, parse_methods, parse_options, resolve_device)

if TYPE_CHECKING:
    import torch

    from ..evaluation import Evaluation

DEFAULT_METHODS = ["gradxinput", "saliency"]
DEFAULT_METRICS = "morf,lerf,insertion,deletion"
#: Metric names, known without importing the metrics (checked against pyexplain.evaluation.METRICS by the tests).
METRIC_NAMES = ("morf", "lerf", "insertion", "deletion", "pointing", "mass", "cim", "sanity", "roar")
BUILTIN_SETS = ("builtin", "builtin:two_class")
#: pyexplain.metrics.roar.DEFAULT_FRACTIONS, as --roar-fractions' default (checked by the tests).
ROAR_FRACTIONS = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"


def format_table(evaluation: Evaluation) -> str:
    """Plain-text methods × metrics means (arrows: which direction is better)."""
    from ..evaluation import METRICS

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
    import torch

    from ..evaluation import CURVE_METRICS
    from ..html_report import render
    from ..io import atomic_write, json_text
    from ..plots import curve_plot

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
    written.append(atomic_write(out / "summary.json", lambda tmp: tmp.write_text(json_text(document, indent=2))))
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
    images: Annotated[Optional[list[str]], typer.Argument(
        metavar="[IMAGE...]", help="builtin (the model's own test images, default), builtin:two_class (synthetic "
        "models), or image files, builtin:NAME photos, folders and .txt list files.", show_default=False)] = None,
    model: ModelOption = DEFAULT_MODEL,
    methods: MethodsOption = None,
    option: OptionOption = [],
    metrics: Annotated[str, typer.Option(
        "--metrics", metavar="LIST", help=f"Comma-separated, from: {', '.join(METRIC_NAMES)}.")] = DEFAULT_METRICS,
    limit: Annotated[Optional[int], typer.Option(
        "--limit", "-n", metavar="INT", help="At most this many images (builtin small-model sets: 32).")] = None,
    out: Annotated[Path, out_option("Output folder: results.csv, summary.json, curves_*.png, report.html.")] = Path("pyexplain-eval"),
    batch_size: BatchSizeOption = 64,
    device: DeviceOption = "auto",
    seed: Annotated[int, typer.Option("--seed", metavar="INT", help="Seed for torch's random numbers and the synthetic images.")] = 0,
    weights: WeightsOption = None,
    random_weights: RandomWeightsOption = False,
    offline: OfflineOption = False,
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    labels: LabelsOption = None,
    flip_steps: Annotated[int, typer.Option("--flip-steps", metavar="INT", help="MoRF/LeRF steps up to 5% of the image.")] = 20,
    insertion_step: Annotated[Optional[int], typer.Option(
        "--insertion-step", metavar="INT", help="Pixels per insertion/deletion step (default: 224 at 224x224, scaled).")] = None,
    roar_fill: Annotated[str, typer.Option(
        "--roar-fill", metavar="NAME", help="ROAR removal: linear (ROAD's noisy linear imputation) or mean.")] = "linear",
    roar_fractions: Annotated[str, typer.Option(
        "--roar-fractions", metavar="FLOATS", help="ROAR: fractions removed, one retraining each.")] = ROAR_FRACTIONS,
    roar_epochs: Annotated[Optional[int], typer.Option(
        "--roar-epochs", metavar="INT", help="ROAR: training epochs (default: the model's own recipe).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar on stderr.")] = False,
    images_option: Annotated[Optional[str], typer.Option("--images", hidden=True)] = None,
) -> None:
    """Score methods' maps with metrics: a table and a report.

    Prints a table; writes results.csv, summary.json, curves_*.png and report.html. A progress bar
    on stderr (when it is a terminal) counts the images.

    The roar metric (digits_cnn, synthetic_vgg, synthetic_resnet only) explains the model's whole
    training and test set and retrains the model once per method and fraction: minutes on the digits,
    longer on the synthetic models (shorten with --roar-epochs / --roar-fractions)."""
    import torch

    from ..evaluation import display_images, evaluate, evaluate_roar, file_set, load_eval_set
    from ..io import check_output_folder
    from ..metrics.roar import FILLS

    sources = images or ([images_option] if images_option else ["builtin"])
    method_names = parse_methods(methods, DEFAULT_METHODS)
    metric_names = [m.strip() for m in metrics.split(",") if m.strip()]
    per_method = parse_options(option, method_names)
    check_positive(limit, "--limit")
    check_positive(batch_size, "--batch-size")
    check_output_folder(out)
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
    progress = not quiet and sys.stderr.isatty()
    files = None if len(sources) == 1 and sources[0] in BUILTIN_SETS else expand_images(sources)
    torch.manual_seed(seed)
    net, preprocess = model_spec(model, weights, random_weights, input_size, mean, std, labels).load(
        resolve_device(device))
    data = load_eval_set(model, preprocess, sources[0], limit, seed) if files is None else \
        file_set(files[:limit] if limit else files, preprocess)
    result = evaluate(net, data, method_names, per_image, options=per_method, batch_size=batch_size,
                      flip_steps=flip_steps, insertion_pixels_per_step=insertion_step, progress=progress)
    if not result.values:
        raise PyExplainError("no method could be run: " + "; ".join(f"{m}: {r}" for m, r in result.errors.items()))
    print(format_table(result))
    roar_results = None
    if with_roar:
        roar_results, roar_errors = evaluate_roar(net, model, list(result.values), options=per_method,
                                                  fractions=fractions, fill=roar_fill, epochs=roar_epochs, seed=seed,
                                                  batch_size=batch_size, progress=progress)
        print(format_roar(roar_results, roar_errors))
    settings = {"model": model, "images_source": " ".join(sources), "methods": method_names, "metrics": metric_names,
                "flip_steps": flip_steps, "insertion_step": insertion_step, "seed": seed, "options": per_method}
    if with_roar:
        settings.update(roar_fill=roar_fill, roar_fractions=fractions, roar_epochs=roar_epochs)
    title = f"{model} on {' '.join(sources)} ({len(data.names)} images)"
    written = write_outputs(result, out, display_images(data.x, preprocess), title, settings, preprocess.label, roar_results)
    print("wrote " + ", ".join(str(p) for p in written))
