"""``pyexplain explain-dataset SRC --model M --method X --out DIR``: maps for a whole folder or list,
resumable, and sharded across processes when started by ``torchrun``."""
from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..model_catalog import DEFAULT_MODEL
from ..registry import check_method_names
from . import app
from .options import (
    InputSizeOption, LabelsOption, MeanOption, MethodOption, ModelOption, OfflineOption, OptionOption,
    RandomWeightsOption, SeedOption, StdOption, TargetOption, WeightsOption, model_spec, out_option,
    parse_options, resolve_device)

#: pyexplain.dataset.config.PRECISIONS, known without importing torch (checked by the tests).
PRECISIONS = ("float32", "tf32", "bfloat16")


@app.command("explain-dataset")
def explain_dataset_command(
    src: Annotated[Path, typer.Argument(
        metavar="SRC", help="A folder of images (searched recursively) or a text file listing image paths.",
        show_default=False)],
    out: Annotated[Path, out_option("Output folder (maps/, png/, manifest.jsonl).")],
    model: ModelOption = DEFAULT_MODEL,
    method: MethodOption = "gradxinput",
    option: OptionOption = [],
    target: TargetOption = None,
    device: Annotated[str, typer.Option(
        "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N (each torchrun rank uses cuda:LOCAL_RANK).")] = "auto",
    weights: WeightsOption = None,
    random_weights: RandomWeightsOption = False,
    offline: OfflineOption = False,
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    labels: LabelsOption = None,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", metavar="INT", help="Images per batch (default: on CUDA measured with a probe batch to fit 80% of the free memory, 8 on the CPU; halved on out-of-memory)."),
    precision: str = typer.Option("float32", "--precision", metavar="NAME", help=f"{', '.join(PRECISIONS)} (tf32: CUDA only; bfloat16: autocast, maps saved as float32)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="Run the model in channels-last memory format."),
    png: bool = typer.Option(False, "--png", help="Also write a heatmap overlay PNG per image."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the outputs of a run with other settings in --out."),
    seed: SeedOption = 0,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar with images/s on stderr."),
    summary: Optional[Path] = typer.Option(None, "--summary", metavar="PATH", help="Also write the run's summary as JSON to this file."),
) -> None:
    """Maps for a whole folder or list of images, resumable.

    One map (.npy) per image, output paths mirroring SRC, and a manifest (JSON lines). A rerun
    skips finished images; under torchrun the images are shared among the ranks."""
    from ..dataset import Job, run_dataset
    from ..dataset.distributed import env_world
    from ..io import atomic_write, check_output_file, json_text

    check_method_names([method])
    if summary is not None:
        check_output_file(summary, "--summary")
    job = Job(
        src=src, out=out, method=method, options=parse_options(option, [method]).get(method, {}), target=target,
        model=model_spec(model, weights, random_weights, input_size, mean, std, labels),
        device=resolve_device(device), batch_size=batch_size, precision=precision, channels_last=channels_last,
        png=png, overwrite=overwrite, seed=seed, progress=progress,
    )
    result = run_dataset(job)
    if env_world()[0] != 0:
        return
    if summary is not None:
        text = json_text(asdict(result), indent=2) + "\n"
        atomic_write(summary, lambda tmp: tmp.write_text(text))
    print(f"{result.explained} explained, {result.already_complete} already complete, {result.unreadable} unreadable, "
          f"{result.failed} failed (non-finite maps) of {result.sources} files in {result.seconds:.1f} s ({result.images_per_second:.2f} images/s, "
          f"{result.world_size} process{'es' if result.world_size > 1 else ''}; batch size {result.batch_size}: "
          f"{result.batch_choice}); manifest: {result.manifest}",
          file=sys.stderr)
