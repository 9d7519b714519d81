"""``pyexplain data NAME`` writes sample images (and evidence masks); ``pyexplain train MODEL`` trains
(or loads from the cache) a small model and prints its test accuracy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from PIL import Image

from ..data.cache import cache_dir
from ..data.training import accuracy
from ..errors import PyExplainError
from ..io import atomic_write, check_output_folder, save_png
from ..models import SMALL_MODELS
from . import app

DATASETS = ("digits", "synthetic", "synthetic_two_class")


def _to_png(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))


@app.command("data")
def data_command(
    name: str = typer.Argument(..., help=f"One of: {', '.join(DATASETS)}."),
    n: int = typer.Option(16, "--n", "-n", help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Seed (synthetic images; the digits split)."),
    out: Path = typer.Option(Path("pyexplain-data"), "--out", "-o", help="Output directory."),
) -> None:
    """Write NAME_i.png images (synthetic: also NAME_i_region.png evidence masks) and labels.json."""
    if name not in DATASETS:
        raise PyExplainError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if n < 1:
        raise PyExplainError(f"--n must be at least 1, got {n}")
    check_output_folder(out)
    records = []
    if name == "digits":
        from ..data.digits import digits_splits

        test = digits_splits(seed)[1]
        for i in range(min(n, len(test))):
            save_png(out / f"digits_{i}.png", _to_png(test.x[i, 0].numpy()))
            records.append({"image": f"digits_{i}.png", "labels": [int(test.y[i])]})
    else:
        from ..data.synthetic import CLASSES, make_synthetic, to_unit_range

        s = make_synthetic(n, seed, two_class=name.endswith("two_class"))
        for i in range(n):
            save_png(out / f"{name}_{i}.png", _to_png(to_unit_range(s.x[i]).permute(1, 2, 0).numpy()))
            save_png(out / f"{name}_{i}_region.png", _to_png(s.regions[i].any(0).numpy().astype(np.float64)))
            records.append({"image": f"{name}_{i}.png", "labels": [CLASSES[int(c)] for c in s.labels[i]]})
    atomic_write(out / "labels.json", lambda tmp: tmp.write_text(json.dumps(records, indent=1)))
    print(f"wrote {len(records)} images to {out}")


@app.command("train")
def train_command(
    model: str = typer.Argument(..., help=f"One of: {', '.join(SMALL_MODELS)}."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the initialization and the batches."),
    retrain: bool = typer.Option(False, "--retrain", help="Train again even if a cached model exists."),
) -> None:
    """Train a small model (deterministic from --seed; cached) and print its test accuracy."""
    if model not in SMALL_MODELS:
        raise PyExplainError(f"unknown small model {model!r}; available: {', '.join(SMALL_MODELS)}")
    if model == "digits_cnn":
        from ..data.digits import load_digits_cnn

        net, test = load_digits_cnn(seed, retrain=retrain)
    else:
        from ..data.synthetic_models import load_synthetic_model

        net, test = load_synthetic_model(model, seed, retrain=retrain)
    print(f"{model} (seed {seed}): test accuracy {accuracy(net, test):.4f} on {len(test)} images; cache {cache_dir()}")
