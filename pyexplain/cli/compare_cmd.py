"""``pyexplain compare IMAGE... --model M --methods a,b``: one figure per image, the image and each method's map."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

from ..errors import PyExplainError
from ..model_catalog import DEFAULT_MODEL, SMALL_MODELS
from ..registry import describe_methods
from . import app
from .images import expand_images, output_stems
from .options import (
    BatchSizeOption, DeviceOption, ImagesArgument, InputSizeOption, LabelsOption, MeanOption, MethodsOption,
    ModelOption, OfflineOption, OptionOption, RandomWeightsOption, SeedOption, StdOption, TargetOption,
    WeightsOption, check_positive, model_spec, out_option, parse_methods, parse_options, resolve_device)


def cheap_methods() -> list[str]:
    """The fixed-rule methods whose cost is a fixed, small number of passes: ``compare``'s default."""
    return [entry.name for entry in describe_methods() if entry.fixed_cost]


def load_one(source: str, model: str, preprocess):
    """``test:N`` (the N-th builtin test image of a small model), ``builtin:NAME`` or a file, as a batch of one."""
    from ..evaluation import load_eval_set
    from ..io import open_image

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


def output_paths(images: list[str], out: Path) -> list[Path]:
    """``--out x.png`` for one image; otherwise ``--out`` is a folder of ``<stem>_compare.png``
    (checked writable before any work)."""
    from ..io import check_output_file, check_output_folder

    if out.suffix.lower() == ".png" and not out.is_dir():
        if len(images) > 1:
            raise PyExplainError(f"--out {str(out)!r} is one file, but {len(images)} images are compared: give a folder")
        check_output_file(out)
        return [out]
    if out.suffix and not out.is_dir():
        raise PyExplainError(f"--out must be a .png file or a folder, got {str(out)!r}")
    check_output_folder(out)
    return [out / f"{stem}.png" for stem in output_stems(images, "compare")]


@app.command("compare")
def compare_command(
    images: ImagesArgument,
    model: ModelOption = DEFAULT_MODEL,
    methods: MethodsOption = None,
    option: OptionOption = [],
    target: TargetOption = None,
    out: Annotated[Path, out_option("A .png file (one image) or a folder of <stem>_compare.png.")] = Path("pyexplain-out"),
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
) -> None:
    """One figure per image: the image and each method's map with its colour bar.

    Signed maps: red = for the target, blue = against; non-negative maps: brighter = more relevant.
    Without --methods, the fixed-rule methods of a few passes run; --methods all runs every method
    (the iterative ones take minutes)."""
    import sys

    import torch

    from .. import explain
    from ..evaluation import display_images
    from ..io import atomic_write
    from ..plots import compare_figure
    from ..registry import get_method
    from ..visualize import title_line  # matplotlib: only when drawing

    names = parse_methods(methods, cheap_methods())
    per_method = parse_options(option, names)
    check_positive(batch_size, "--batch-size")
    images = expand_images(images)
    paths = output_paths(images, out)
    torch.manual_seed(seed)
    net, preprocess = model_spec(model, weights, random_weights, input_size, mean, std, labels).load(
        resolve_device(device))
    x = torch.cat([load_one(image, model, preprocess) for image in images])
    target_index = preprocess.class_index(target) if target is not None else None
    if methods is None:
        print(f"note: running the fixed-rule methods {', '.join(names)}; --methods all runs every method, "
              "--methods a,b the ones named", file=sys.stderr)
    maps, signs, failed, targets, probabilities = {}, {}, [], None, None
    for name in names:
        try:
            rows = [explain(net, x[start:start + batch_size], name, progress=True, **per_method.get(name, {}),
                            target=target_index if targets is None else targets[start:start + batch_size].tolist())
                    for start in range(0, len(x), batch_size)]
        except PyExplainError as exc:
            failed.append(f"{name}: {' '.join(str(exc).split())}")
            continue
        stacked = torch.cat([r.map.cpu() for r in rows])
        if not torch.isfinite(stacked).all():
            failed.append(f"{name}: the map has NaN or infinite values (the model's output is not finite there)")
            continue
        maps[name] = stacked
        signs[name] = get_method(name).map_sign(per_method.get(name, {}))
        if targets is None:  # every method explains the class the first one chose
            targets = torch.cat([r.targets.cpu() for r in rows])
            logits = torch.cat([r.logits.float().cpu() for r in rows])
            probabilities = logits.softmax(1).gather(1, targets[:, None])[:, 0]
    if not maps:
        raise PyExplainError("no method could be run: " + "; ".join(failed))
    display = display_images(x, preprocess)
    for i, (image, path) in enumerate(zip(images, paths)):
        t = int(targets[i])
        title = title_line(model, "", t, preprocess.label(t), float(probabilities[i]), image.removeprefix("builtin:"))
        png = compare_figure(display[i], {name: m[i] for name, m in maps.items()}, signs, title)
        atomic_write(path, lambda tmp, png=png: tmp.write_bytes(png))
    for line in failed:
        print(f"note: not run: {line}")
    print("wrote " + ", ".join(str(p) for p in paths))
