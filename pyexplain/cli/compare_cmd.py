"""``pyexplain compare IMG --model M --methods all``: one figure, the image and every method's map."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import typer

from .. import explain
from ..errors import PyExplainError
from ..evaluation import display_images, load_eval_set
from ..io import atomic_write, open_image
from ..models import DEFAULT_MODEL, SMALL_MODELS, load_model
from ..plots import compare_figure
from . import app
from .evaluate_cmd import parse_methods, parse_per_method_options
from .options import OfflineOption
from .options import (
    DeviceOption, ModelOption, PerMethodOptions, SeedOption, WeightsOption, resolve_device)


def load_one(source: str, model: str, preprocess) -> torch.Tensor:
    """``test:N`` (the N-th builtin test image of a small model), ``builtin:NAME`` or a file."""
    if source.startswith("test:"):
        if model not in SMALL_MODELS:
            raise PyExplainError("test:N images exist for the small models only (digits_cnn, synthetic_vgg, synthetic_resnet)")
        index = source.split(":", 1)[1]
        if not index.isdigit():
            raise PyExplainError(f"{source!r}: expected test:N with N a non-negative integer")
        data = load_eval_set(model, preprocess, "builtin", int(index) + 1)
        if int(index) >= len(data.names):
            raise PyExplainError(f"{source!r}: only {len(data.names)} test images")
        return data.x[int(index):int(index) + 1]
    return preprocess(open_image(source))


@app.command("compare")
def compare_command(
    image: str = typer.Argument(..., help="Image file, builtin:NAME (skimage photo) or test:N (small models)."),
    model: ModelOption = DEFAULT_MODEL,
    methods: str = typer.Option("all", "--methods", help="Comma-separated methods, or 'all'."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Class index or name (default: top-1)."),
    out: Path = typer.Option(Path("compare.png"), "--out", "-o", help="Output PNG."),
    device: DeviceOption = "auto",
    weights: WeightsOption = None,
    offline: OfflineOption = False,
    option: PerMethodOptions = [],
    seed: SeedOption = 0,
) -> None:
    """Write one figure: the image, then each method's map (red = for the target, blue = against)."""
    names = parse_methods(methods)
    per_method = parse_per_method_options(option, names)
    if out.suffix.lower() != ".png":
        raise PyExplainError(f"--out must be a .png file, got {str(out)!r}")
    torch.manual_seed(seed)
    net, preprocess = load_model(model, weights, resolve_device(device))
    x = load_one(image, model, preprocess)
    t = preprocess.class_index(target) if target is not None else None
    maps, failed = {}, []
    for name in names:
        try:
            result = explain(net, x, name, target=t, progress=True, **per_method.get(name, {}))
        except PyExplainError as exc:
            failed.append(f"{name}: {' '.join(str(exc).split())}")
            continue
        maps[name] = result.map[0].cpu()
        t = int(result.targets[0])
    if not maps:
        raise PyExplainError("no method could be run: " + "; ".join(failed))
    png = compare_figure(display_images(x, preprocess)[0], maps, f"{model}: {image} → {preprocess.label(t)} (class {t})")
    atomic_write(out, lambda tmp: tmp.write_bytes(png))
    for line in failed:
        print(f"note: not run: {line}")
    print(f"wrote {out}")
