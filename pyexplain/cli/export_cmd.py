"""``pyexplain export``: write a deployable fixed-rule explainer (ONNX, torch.export, TorchScript)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import PyExplainError
from ..model_catalog import DEFAULT_MODEL
from . import app
from .options import (
    InputSizeOption, LabelsOption, MeanOption, ModelOption, OfflineOption, OptionOption, RandomWeightsOption,
    SeedOption, StdOption, WeightsOption, model_spec, out_option, parse_options, resolve_device)

#: The file suffix of each format when ``--out`` is a folder.
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}


@app.command("export")
def export_command(
    out: Annotated[Path, out_option("Output file (.onnx, .pt2, .pt), or a folder for <model>_<method>.<ext>.")],
    model: ModelOption = DEFAULT_MODEL,
    method: Annotated[str, typer.Option(
        "--method", "-M", metavar="NAME", help="saliency, gradxinput, guided_backprop, deconvnet, gradcam, "
        "guided_gradcam or lpr (needs --rules).")] = "gradxinput",
    option: OptionOption = [],
    fmt: Annotated[Optional[str], typer.Option(
        "--format", "-f", metavar="FORMAT", help="onnx, pt2 (torch.export) or torchscript (default: from --out's suffix).")] = None,
    rules: Annotated[Optional[Path], typer.Option(
        "--rules", metavar="PATH", help="LPR channel rules file (from `pyexplain fit-rules`).")] = None,
    device: Annotated[str, typer.Option(
        "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N: where the explainer's constants live.")] = "cpu",
    seed: SeedOption = 0,
    weights: WeightsOption = None,
    random_weights: RandomWeightsOption = False,
    offline: OfflineOption = False,
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    labels: LabelsOption = None,
) -> None:
    """Write a deployable explainer (ONNX, pt2, TorchScript).

    Compiles the model and a fixed-rule method into one forward-only graph (logits and attribution,
    no autograd) and write it. Inputs: image [B,C,H,W] (normalized), target int64 [B] (-1 = top-1).
    The file's metadata carries the normalization (and, with --labels, the class names)."""
    import torch

    from ..api import _input_channels as input_channels
    from ..api import model_device
    from ..export import compile_explainer
    from ..export.formats import format_of, write_explainer
    from ..registry import check_method_names

    check_method_names([method])
    options = parse_options(option, [method]).get(method, {})
    if out.is_dir() or not out.suffix:
        if fmt is None:
            raise PyExplainError(f"--out {str(out)!r} is a folder: give --format ({', '.join(SUFFIXES)})")
        fmt = format_of(out, fmt)
        out = out / f"{model.replace(':', '_').replace('.', '_')}_{method}{SUFFIXES[fmt]}"
    fmt = format_of(out, fmt)
    if rules is not None:
        options["rules"] = str(rules)
    torch.manual_seed(seed)
    net, preprocess = model_spec(model, weights, random_weights, input_size, mean, std, labels).load(
        resolve_device(device))
    channels = input_channels(net) or 3
    example = torch.zeros(1, channels, preprocess.size, preprocess.size, device=model_device(net))
    explainer = compile_explainer(net, method, example, **options)
    metadata = {"model": model, "mean": ",".join(map(str, preprocess.mean)), "std": ",".join(map(str, preprocess.std)),
                "resize": str(preprocess.resize or "")}
    if labels is not None:
        metadata["labels"] = json.dumps(list(preprocess.labels))
    path = write_explainer(explainer, fmt, out, metadata)
    print(f"{path}: {method} explainer for {model} ({fmt}); image [B,{channels},{preprocess.size},{preprocess.size}] "
          f"+ target [B] (-1 = top-1) -> logits, attribution")
