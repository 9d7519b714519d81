"""``pyexplain data NAME`` writes sample images (and evidence masks); ``pyexplain train MODEL`` loads
(shipped or cached weights) or trains a small model and prints its test accuracy."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import PyExplainError
from ..model_catalog import SMALL_MODELS
from . import app
from .options import out_option

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

DATASETS = ("digits", "synthetic", "synthetic_two_class")


def _to_png(image: np.ndarray) -> Image.Image:
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))


@app.command("data")
def data_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help=f"One of: {', '.join(DATASETS)}.", show_default=False)],
    n: Annotated[int, typer.Option("--n", "-n", metavar="INT", help="Number of images.")] = 16,
    seed: Annotated[int, typer.Option("--seed", metavar="INT", help="Seed of the synthetic images and the digits split.")] = 0,
    out: Annotated[Path, out_option("Output folder.")] = Path("pyexplain-data"),
) -> None:
    """Write sample images (and evidence masks) of a dataset.

    NAME_i.png images (synthetic: also NAME_i_region.png evidence masks) and labels.json."""
    import numpy as np

    from ..io import atomic_write, check_output_folder, save_png

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
    model: Annotated[str, typer.Argument(metavar="MODEL", help=f"One of: {', '.join(SMALL_MODELS)}.", show_default=False)],
    seed: Annotated[int, typer.Option("--seed", metavar="INT", help="Seed of the split, the initialization and the batches.")] = 0,
    retrain: Annotated[bool, typer.Option("--retrain", help="Train anew instead of loading the shipped or cached weights.")] = False,
    out: Annotated[Path | None, out_option("Also write the weights to this file (a state dict, for --weights FILE).")] = None,
) -> None:
    """Load a small model (or train it); print its test accuracy.

    Seed 0's weights ship with pyexplain, so every machine uses the same model; other seeds are
    trained on first use and cached. Training is deterministic given --seed on one machine; another
    CPU rounds differently and trains slightly different weights."""
    import torch

    from ..data.cache import weights_source
    from ..data.small_models import trained_small_model
    from ..data.training import accuracy
    from ..io import atomic_write, check_output_file

    if model not in SMALL_MODELS:
        raise PyExplainError(f"unknown small model {model!r}; available: {', '.join(SMALL_MODELS)}")
    if out is not None:
        check_output_file(out)
    net, test, file = trained_small_model(model, seed, retrain)
    if out is not None:
        atomic_write(out, lambda tmp: torch.save(net.state_dict(), tmp))
    source = weights_source(file, retrain) + (f"; written to {out}" if out else "")
    print(f"{model} (seed {seed}): test accuracy {accuracy(net, test):.4f} on {len(test)} images; weights {source}")
