"""``pyexplain export``: write a deployable fixed-rule explainer (ONNX, torch.export, TorchScript)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import typer

from ..api import _input_channels as input_channels
from ..models import DEFAULT_MODEL, load_model
from . import app
from .options import OfflineOption
from .options import (
    MethodOptions, ModelOption, RandomWeightsOption, WeightsOption, parse_method_options)


@app.command("export")
def export_command(
    model: ModelOption = DEFAULT_MODEL,
    method: str = typer.Option("gradxinput", "--method", help="saliency, gradxinput, guided_backprop, deconvnet, "
                                                             "gradcam, guided_gradcam or lpr (needs --rules)."),
    fmt: str = typer.Option(..., "--format", "-f", help="onnx, pt2 (torch.export) or torchscript."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file."),
    rules: Optional[Path] = typer.Option(None, "--rules", help="LPR channel rules file (from `pyexplain fit-rules`)."),
    weights: WeightsOption = None,
    random_weights: RandomWeightsOption = False,
    offline: OfflineOption = False,
    input_size: Optional[int] = typer.Option(None, "--input-size", help="Input side length (default: the model's)."),
    option: MethodOptions = [],
) -> None:
    """Compile the model and a fixed-rule method into one forward-only graph (logits and attribution,
    no autograd) and write it. Inputs: image [B,C,H,W] (normalized), target int64 [B] (-1 = top-1)."""
    from ..export import compile_explainer
    from ..export.formats import format_of, write_explainer

    fmt = format_of(out, fmt)
    options = parse_method_options(option)
    if rules is not None:
        options["rules"] = str(rules)
    net, preprocess = load_model(model, weights, "cpu", random_weights=random_weights, input_size=input_size)
    channels = input_channels(net) or 3
    example = torch.zeros(1, channels, preprocess.size, preprocess.size)
    explainer = compile_explainer(net, method, example, **options)
    metadata = {"model": model, "mean": ",".join(map(str, preprocess.mean)), "std": ",".join(map(str, preprocess.std)),
                "resize": str(preprocess.resize or "")}
    path = write_explainer(explainer, fmt, out, metadata)
    print(f"{path}: {method} explainer for {model} ({fmt}); image [B,{channels},{preprocess.size},{preprocess.size}] "
          f"+ target [B] (-1 = top-1) -> logits, attribution")
