"""``pyexplain explain-dataset SRC --model M --method X --out DIR``: maps for a whole folder or list,
resumable, and sharded across processes when started by ``torchrun``."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from ..dataset import Job, run_dataset
from ..dataset.config import PRECISIONS
from ..dataset.distributed import env_world
from ..io import atomic_write
from ..models import DEFAULT_MODEL
from . import app
from .options import OfflineOption
from .options import (
    InputSizeOption, LabelsOption, MeanOption, MethodOptions, ModelOption, RandomWeightsOption, SeedOption,
    StdOption, WeightsOption, model_spec, parse_method_options, resolve_device)


@app.command("explain-dataset")
def explain_dataset_command(
    src: Path = typer.Argument(..., help="A folder of images (searched recursively) or a text file listing image paths."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (maps/, png/, manifest.jsonl)."),
    model: ModelOption = DEFAULT_MODEL,
    method: str = typer.Option("gradxinput", "--method", help="Attribution method (see `pyexplain methods`)."),
    option: MethodOptions = [],
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Class index or name for every image (default: top-1)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (each torchrun rank uses cuda:LOCAL_RANK)."),
    weights: WeightsOption = None,
    random_weights: RandomWeightsOption = False,
    offline: OfflineOption = False,
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    labels: LabelsOption = None,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per batch (default: on CUDA measured with a probe batch to fit 80% of the free memory, 8 on the CPU; halved on out-of-memory)."),
    precision: str = typer.Option("float32", "--precision", help=f"{', '.join(PRECISIONS)} (tf32: CUDA only; bfloat16: autocast, maps saved as float32)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="Run the model in channels-last memory format."),
    png: bool = typer.Option(False, "--png", help="Also write a heatmap overlay PNG per image."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the outputs of a run with other settings in --out."),
    seed: SeedOption = 0,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar with images/s on stderr."),
    summary: Optional[Path] = typer.Option(None, "--summary", help="Also write the run's summary as JSON to this file."),
) -> None:
    """One map (.npy) per image, output paths mirroring SRC, and a manifest (JSON lines). A rerun
    skips finished images; under torchrun the images are shared among the ranks."""
    job = Job(
        src=src, out=out, method=method, options=parse_method_options(option), target=target,
        model=model_spec(model, weights, random_weights, input_size, mean, std, labels),
        device=resolve_device(device), batch_size=batch_size, precision=precision, channels_last=channels_last,
        png=png, overwrite=overwrite, seed=seed, progress=progress,
    )
    result = run_dataset(job)
    if env_world()[0] != 0:
        return
    if summary is not None:
        text = json.dumps(asdict(result), indent=2) + "\n"
        atomic_write(summary, lambda tmp: tmp.write_text(text))
    print(f"{result.explained} explained, {result.already_complete} already complete, {result.unreadable} unreadable "
          f"of {result.sources} files in {result.seconds:.1f} s ({result.images_per_second:.2f} images/s, "
          f"{result.world_size} process{'es' if result.world_size > 1 else ''}; batch size {result.batch_size}: "
          f"{result.batch_choice}); manifest: {result.manifest}",
          file=sys.stderr)
