"""What the commands share, declared once: the model-loading, image, output, method and run options
(``name: ModelOption = DEFAULT_MODEL``), and the parsing of devices, method names, method options
and number lists. Nothing here imports torch: the commands import it inside their bodies.

The grammar, the same in every command:

- ``--method/-M NAME`` where a command runs one method, ``--methods/-M A,B`` where it runs several;
- ``--option/-O KEY=VALUE`` for a method option; ``METHOD.KEY=VALUE`` is accepted everywhere and
  needed where several methods run;
- images as positional arguments (files, ``builtin:NAME`` photos, folders, ``.txt`` list files);
- ``--out/-o PATH`` a folder (a file where one file is the natural output);
- ``--batch-size``, ``--device``, ``--seed`` and the model flags ``--model``, ``--weights``,
  ``--random-weights``, ``--offline``, ``--input-size``, ``--mean``, ``--std``, ``--labels``.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ..errors import PyExplainError
from ..model_catalog import OFFLINE_ENV
from ..registry import check_method_names, describe_methods

if TYPE_CHECKING:
    from ..dataset.config import ModelSpec

# The model flags, in every command that loads a model.
ModelOption = Annotated[str, typer.Option(
    "--model", "-m", metavar="NAME", help="Model: efficientnet_lite0, a torchvision or small model name (see "
    "`pyexplain models`), or package.module:factory.")]
WeightsOption = Annotated[Optional[Path], typer.Option(
    "--weights", metavar="PATH", help="State-dict file for the model (read with weights_only).")]
RandomWeightsOption = Annotated[bool, typer.Option(
    "--random-weights", help="Random weights (speed work only, never for quality).")]


def _forbid_downloads(offline: bool) -> bool:
    """``--offline``: no weights are downloaded (as ``PYEXPLAIN_OFFLINE=1``, which model loading reads)."""
    if offline:
        os.environ[OFFLINE_ENV] = "1"
    return offline


OfflineOption = Annotated[bool, typer.Option(
    "--offline", callback=_forbid_downloads, help="Never download weights (also PYEXPLAIN_OFFLINE=1).")]
InputSizeOption = Annotated[Optional[int], typer.Option(
    "--input-size", metavar="INT", help="Input side length (default: the model's).")]
MeanOption = Annotated[Optional[str], typer.Option(
    "--mean", metavar="FLOATS", help="Normalization mean per channel, e.g. 0.5,0.5,0.5 (default: the model's).")]
StdOption = Annotated[Optional[str], typer.Option(
    "--std", metavar="FLOATS", help="Normalization std per channel (default: the model's).")]
LabelsOption = Annotated[Optional[Path], typer.Option(
    "--labels", metavar="PATH", help="Class names file, one per line (default: the model's).")]

# Run options.
DeviceOption = Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N.")]
SeedOption = Annotated[int, typer.Option("--seed", metavar="INT", help="Seed for torch's random numbers.")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", metavar="INT", help="Images per batch.")]
TargetOption = Annotated[Optional[str], typer.Option(
    "--target", "-t", metavar="CLASS", help="Class index or name (default: the top-1 class).")]

# Methods and their options.
MethodOption = Annotated[str, typer.Option(
    "--method", "-M", metavar="NAME", help="Attribution method (see `pyexplain methods`).")]
MethodsOption = Annotated[Optional[str], typer.Option(
    "--methods", "-M", metavar="LIST", help="Comma-separated methods (see `pyexplain methods`), or 'all'.")]
OptionOption = Annotated[list[str], typer.Option(
    "--option", "-O", metavar="KEY=VALUE", help="Method option, repeatable; METHOD.KEY=VALUE names the method "
    "(needed when several run).")]

# Images and outputs.
ImagesArgument = Annotated[list[str], typer.Argument(
    metavar="IMAGE", help="Image files, builtin:NAME photos (e.g. builtin:chelsea), folders (searched "
    "recursively) or .txt files listing image paths.", show_default=False)]


def out_option(help: str) -> Any:
    """``--out/-o PATH`` with the command's own help (what a folder and a file give)."""
    return typer.Option("--out", "-o", metavar="PATH", help=help)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PyExplainError(f"device {device!r} asked for, but no CUDA GPU is available here")
    if device != "cpu" and not device.startswith("cuda"):
        raise PyExplainError(f"unknown device {device!r}; use auto, cpu or cuda")
    return device


def parse_methods(text: str | None, default: list[str]) -> list[str]:
    """``--methods``: ``None`` → ``default``, ``all`` → every method, else a comma-separated list (each checked)."""
    if text is None:
        return list(default)
    if text.strip() == "all":
        return [entry.name for entry in describe_methods()]
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise PyExplainError("--methods is empty")
    check_method_names(names)
    return names


def check_positive(value: int | None, name: str) -> None:
    if value is not None and value < 1:
        raise PyExplainError(f"{name} must be at least 1, got {value}")


def _literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def parse_method_options(pairs: list[str]) -> dict[str, Any]:
    """``["steps=20", "layer=features"]`` → ``{"steps": 20, "layer": "features"}`` (Python literals or strings)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise PyExplainError(f"method option {pair!r} is not KEY=VALUE")
        options[key.strip().replace("-", "_")] = _literal(raw)
    return options


def parse_options(pairs: list[str], methods: list[str], check: bool = True) -> dict[str, dict[str, Any]]:
    """``-O`` values for the chosen ``methods``: ``METHOD.KEY=VALUE`` → that method's options; a plain
    ``KEY=VALUE`` → the one method's (an error when several are chosen). Each value is checked against
    the type and range its method declares (:func:`pyexplain.method_options.check_options`) unless
    ``check`` is false (for a command that accepts a subset of a method's options and checks them itself)."""
    options: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for pair in pairs:
        head, dot, rest = pair.partition(".")
        if dot and "=" not in head and head in methods:
            method = head
        elif dot and "=" not in head and head.isidentifier() and "=" in rest:
            raise PyExplainError(f"option {pair!r} names method {head!r}, which is not chosen ({', '.join(methods)})")
        elif len(methods) == 1:
            method, rest = methods[0], pair
        else:
            raise PyExplainError(f"option {pair!r}: several methods are chosen, write METHOD.KEY=VALUE")
        options[method].update(parse_method_options([rest]))
    if not check:
        return {m: o for m, o in options.items() if o}
    from ..method_options import check_options  # the methods' declared types and ranges
    from ..registry import get_method

    return {m: check_options(get_method(m), o) for m, o in options.items() if o}


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
    from ..dataset.config import ModelSpec
    from ..models import read_labels

    return ModelSpec(name, str(weights) if weights else None, random_weights, input_size,
                     parse_floats(mean, "--mean"), parse_floats(std, "--std"), read_labels(labels) if labels else None)
