"""``pyexplain explain IMAGE... --model M --method X``: heatmap PNGs and raw maps for images."""
from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import PyExplainError
from ..model_catalog import DEFAULT_MODEL
from ..registry import check_method_names
from . import app
from .images import expand_images, output_stems
from .options import (
    BatchSizeOption, DeviceOption, ImagesArgument, InputSizeOption, LabelsOption, MeanOption, MethodOption,
    ModelOption, OfflineOption, OptionOption, RandomWeightsOption, SeedOption, StdOption, TargetOption,
    WeightsOption, check_positive, model_spec, out_option, parse_options, resolve_device)


def lpr_rules_for(method: str, path: Path, model: str) -> dict:
    """The rules file for ``--rules``: LPR only, read safely, fitted on the same model name."""
    from ..methods._lpr_rules import load_rules

    if method != "lpr":
        raise PyExplainError(f"--rules applies to --method lpr, not {method!r}")
    loaded = load_rules(path)
    if loaded.get("model") and loaded["model"] != model:
        raise PyExplainError(f"rules file {str(path)!r} was fitted on model {loaded['model']!r}, not {model!r}")
    return loaded


class View(str, Enum):
    image = "image"
    model = "model"


class Layout(str, Enum):
    side_by_side = "side-by-side"
    overlay = "overlay"


def _display_name(source: str) -> str:
    return source.split(":", 1)[1] if source.startswith("builtin:") else Path(source).name


def check_finite_maps(result, images: list[str], method: str) -> None:
    """Refuse maps with NaN or infinite values (a model that overflows or computes NaN): nothing of
    the batch is written."""
    import torch

    for row, name in enumerate(images):
        if not torch.isfinite(result.map[row]).all():
            raise PyExplainError(f"{name}: the {method} map has NaN or infinite values (the model's output is not "
                                 f"finite there); nothing written for it")


@app.command("explain")
def explain_command(
    images: ImagesArgument,
    model: ModelOption = DEFAULT_MODEL,
    method: MethodOption = "gradxinput",
    option: OptionOption = [],
    target: TargetOption = None,
    out: Annotated[Path, out_option("Output folder: <stem>_<method>.png and .npy per image.")] = Path("pyexplain-out"),
    batch_size: BatchSizeOption = 8,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
    weights: WeightsOption = None,
    random_weights: RandomWeightsOption = False,
    offline: OfflineOption = False,
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    labels: LabelsOption = None,
    rules: Annotated[Optional[Path], typer.Option(
        "--rules", metavar="PATH", help="LPR rules file from `pyexplain fit-rules` (--method lpr): a fixed rule, "
        "1 forward + 1 backward.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print predictions, target and written paths as JSON.")] = False,
    view: Annotated[View, typer.Option(
        "--view", help="PNG: 'image' = the whole image at its own resolution (a centre crop framed), "
        "'model' = the resized/cropped image the model saw.")] = View.image,
    layout: Annotated[Layout, typer.Option(
        "--layout", help="PNG: 'side-by-side' = the image, then the map; 'overlay' = the map over a faded copy "
        "of the image.")] = Layout.side_by_side,
) -> None:
    """Figure PNG and raw map (.npy) per image.

    The PNG shows the image and the map with its colour bar and a title (signed maps: red = for the
    target, blue = against; non-negative maps: brighter = more relevant)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from .. import explain as run_explain
    from ..io import check_output_folder, json_text, open_image, save_npy, save_png
    from ..registry import get_method
    from ..visualize import explanation_image, model_picture, sign_of, title_line  # matplotlib: only when drawing

    check_method_names([method])
    options = parse_options(option, [method]).get(method, {})
    check_positive(batch_size, "--batch-size")
    images = expand_images(images)
    info = get_method(method)
    check_output_folder(out)
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
    stems = output_stems(images, method)
    sign = info.map_sign(options)
    records = []
    bar = tqdm(total=len(pictures), desc=method, unit="img", disable=len(pictures) < 2, file=sys.stderr)
    for start in range(0, len(pictures), batch_size):
        chunk = pictures[start:start + batch_size]
        x = torch.cat([preprocess(p) for p in chunk])
        result = run_explain(net, x, method, target=target_index, progress=info.iterative, **options)
        check_finite_maps(result, images[start:start + len(chunk)], method)
        probabilities = result.logits.softmax(1)
        for row, picture in enumerate(chunk):
            index = start + row
            if not torch.isfinite(result.logits[row]).all():
                print(f"note: {images[index]}: the model's scores are not all finite (NaN or infinity); "
                      f"non-finite numbers are given as null", file=sys.stderr)
            t = int(result.targets[row])
            maps = {"": result.map[row]}
            maps.update({f"_{k}": v[row].sum(0) for k, v in result.extras.items() if v.ndim == 4})
            shown = model_picture(picture, preprocess, view.value)
            written = []
            for suffix, attribution_map in maps.items():
                array = attribution_map.float().cpu().numpy()
                title = title_line(model, f"{method} {suffix[1:]}".strip(), t, preprocess.label(t),
                                   float(probabilities[row, t]), _display_name(images[index]))
                figure = explanation_image(shown, array, sign_of(array) if suffix else sign, title, layout.value)
                written.append(str(save_npy(out / f"{stems[index]}{suffix}.npy", array.astype(np.float32))))
                written.append(str(save_png(out / f"{stems[index]}{suffix}.png", figure)))
            top = probabilities[row].topk(5)
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
        print(json_text(records, indent=2))
    else:
        for record in records:
            top = record["top5"][0]
            print(f"{record['image']}: {record['target']['label']} (target {record['target']['index']}, "
                  f"top-1 {top['label']} p={top['probability']:.3f}) -> {', '.join(record['outputs'])}")
