"""What the commands share: the model-loading and run options, and parsing of devices, method
options and number lists."""
from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import torch
import typer

from ..dataset.config import ModelSpec
from ..errors import PyExplainError
from ..models import read_labels
from ..models.hub import OFFLINE_ENV

# Options declared once for every command that loads a model (``name: ModelOption = DEFAULT_MODEL``).
ModelOption = Annotated[str, typer.Option("--model", "-m", help="Model name, or package.module:factory.")]
WeightsOption = Annotated[Optional[Path], typer.Option("--weights", help="State-dict file (weights_only).")]
RandomWeightsOption = Annotated[bool, typer.Option("--random-weights", help="Random weights (speed work only).")]


def _forbid_downloads(offline: bool) -> bool:
    """``--offline``: no weights are downloaded (as ``PYEXPLAIN_OFFLINE=1``, which model loading reads)."""
    if offline:
        os.environ[OFFLINE_ENV] = "1"
    return offline


OfflineOption = Annotated[bool, typer.Option("--offline", callback=_forbid_downloads,
                                             help="Never download weights (also PYEXPLAIN_OFFLINE=1).")]
InputSizeOption = Annotated[Optional[int], typer.Option("--input-size", help="Input side length (own models).")]
MeanOption = Annotated[Optional[str], typer.Option("--mean", help="Normalization mean, e.g. 0.5,0.5,0.5.")]
StdOption = Annotated[Optional[str], typer.Option("--std", help="Normalization std.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed for torch's RNG.")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
MethodOptions = Annotated[list[str], typer.Option("--option", "-O", help="Method option KEY=VALUE (repeatable).")]
PerMethodOptions = Annotated[list[str], typer.Option("--option", "-O", help="Method option METHOD.KEY=VALUE (repeatable).")]
LabelsOption = Annotated[Optional[Path], typer.Option("--labels", help="Class names file, one per line.")]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PyExplainError(f"device {device!r} asked for, but no CUDA GPU is available here")
    if device != "cpu" and not device.startswith("cuda"):
        raise PyExplainError(f"unknown device {device!r}; use auto, cpu or cuda")
    return device


def parse_method_options(pairs: list[str]) -> dict[str, Any]:
    """``["steps=20", "layer=features"]`` → ``{"steps": 20, "layer": "features"}`` (Python literals or strings)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise PyExplainError(f"method option {pair!r} is not KEY=VALUE")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        options[key.strip().replace("-", "_")] = value
    return options


def parse_floats(text: str | None, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise PyExplainError(f"{name} must be comma-separated numbers, got {text!r}") from None
    return values


def model_spec(name: str, weights: Path | None, random_weights: bool, input_size: int | None, mean: str | None,
               std: str | None, labels: Path | None = None) -> ModelSpec:
    """The model-loading flags (``--model``, ``--weights``, ``--random-weights``, ``--input-size``,
    ``--mean``, ``--std``, ``--labels``) as a :class:`ModelSpec`."""
    return ModelSpec(name, str(weights) if weights else None, random_weights, input_size,
                     parse_floats(mean, "--mean"), parse_floats(std, "--std"), read_labels(labels) if labels else None)
