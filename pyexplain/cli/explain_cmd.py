"""``pyexplain explain IMG... --model M --method X``: heatmap PNGs and raw maps for image files."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import typer
from tqdm import tqdm

from .. import explain as run_explain
from ..errors import PyExplainError
from ..io import open_image, save_npy, save_png
from ..methods._lpr_rules import load_rules
from ..models import DEFAULT_MODEL
from ..registry import get_method
from ..visualize import overlay
from . import app
from .options import OfflineOption
from .options import (
    DeviceOption, InputSizeOption, LabelsOption, MeanOption, MethodOptions, ModelOption,
    RandomWeightsOption, SeedOption, StdOption, WeightsOption, model_spec, parse_method_options,
    resolve_device)


def lpr_rules_for(method: str, path: Path, model: str) -> dict:
    """The rules file for ``--rules``: LPR only, read safely, fitted on the same model name."""
    if method != "lpr":
        raise PyExplainError(f"--rules applies to --method lpr, not {method!r}")
    loaded = load_rules(path)
    if loaded.get("model") and loaded["model"] != model:
        raise PyExplainError(f"rules file {str(path)!r} was fitted on model {loaded['model']!r}, not {model!r}")
    return loaded


def _output_stems(sources: list[str], method: str) -> list[str]:
    stems, seen = [], set()
    for source in sources:
        stem = f"{Path(source.split(':', 1)[-1] if source.startswith('builtin:') else source).stem}_{method}"
        candidate, k = stem, 1
        while candidate in seen:
            k += 1
            candidate = f"{stem}_{k}"
        seen.add(candidate)
        stems.append(candidate)
    return stems


@app.command("explain")
def explain_command(
    images: list[str] = typer.Argument(..., help="Image files (JPEG, PNG, ...) or builtin:NAME (e.g. builtin:chelsea)."),
    model: ModelOption = DEFAULT_MODEL,
    method: str = typer.Option("gradxinput", "--method", help="Attribution method (see `pyexplain methods`)."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Class index or name (default: top-1)."),
    out: Path = typer.Option(Path("pyexplain-out"), "--out", "-o", help="Output directory."),
    device: DeviceOption = "auto",
    as_json: bool = typer.Option(False, "--json", help="Print predictions, target and written paths as JSON."),
    weights: WeightsOption = None,
    random_weights: RandomWeightsOption = False,
    offline: OfflineOption = False,
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    labels: LabelsOption = None,
    option: MethodOptions = [],
    batch_size: int = typer.Option(8, "--batch-size", help="Images per batch."),
    seed: SeedOption = 0,
    rules: Optional[Path] = typer.Option(None, "--rules", help="LPR rules file from `pyexplain fit-rules` (--method lpr): a fixed rule, 1 forward + 1 backward."),
) -> None:
    """Write a heatmap PNG (red = for, blue = against) and the raw map (.npy) per image."""
    info = get_method(method)
    options = parse_method_options(option)
    if rules is not None:
        options["rules"] = lpr_rules_for(method, rules, model)
    torch.manual_seed(seed)
    net, preprocess = model_spec(model, weights, random_weights, input_size, mean, std, labels).load(
        resolve_device(device))
    target_index = preprocess.class_index(target) if target is not None else None
    notes: list[str] = []
    pictures = [open_image(source, notes.append) for source in images]  # every input checked before any output
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    stems = _output_stems(images, method)
    records = []
    bar = tqdm(total=len(pictures), desc=method, unit="img", disable=len(pictures) < 2, file=sys.stderr)
    for start in range(0, len(pictures), batch_size):
        chunk = pictures[start:start + batch_size]
        x = torch.cat([preprocess(p) for p in chunk])
        result = run_explain(net, x, method, target=target_index, progress=info.iterative, **options)
        probabilities = result.logits.softmax(1)
        for row, picture in enumerate(chunk):
            index = start + row
            maps = {"": result.map[row]}
            maps.update({f"_{k}": v[row].sum(0) for k, v in result.extras.items() if v.ndim == 4})
            written = []
            for suffix, attribution_map in maps.items():
                array = attribution_map.float().cpu().numpy()
                written.append(str(save_npy(out / f"{stems[index]}{suffix}.npy", array.astype(np.float32))))
                written.append(str(save_png(out / f"{stems[index]}{suffix}.png", overlay(preprocess.view(picture), array))))
            top = probabilities[row].topk(5)
            t = int(result.targets[row])
            records.append({
                "image": images[index],
                "top5": [{"index": int(i), "label": preprocess.label(int(i)), "probability": round(float(p), 6)}
                         for p, i in zip(top.values, top.indices)],
                "target": {"index": t, "label": preprocess.label(t)},
                "score": float(result.scores[row]),
                "method": method,
                "outputs": written,
            })
        bar.update(len(chunk))
    bar.close()
    if as_json:
        print(json.dumps(records, indent=2))
    else:
        for record in records:
            top = record["top5"][0]
            print(f"{record['image']}: {record['target']['label']} (target {record['target']['index']}, "
                  f"top-1 {top['label']} p={top['probability']:.3f}) -> {', '.join(record['outputs'])}")
