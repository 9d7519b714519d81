"""Writing a compiled explainer as ONNX, a ``torch.export`` program (``.pt2``) or TorchScript (read back
by :mod:`pyexplain.export.loading`).

All three are made from the same flat ``torch.fx`` graph of the :class:`CompiledExplainer`
(inputs ``image`` ``[B, C, H, W]`` float32 and ``target`` ``[B]`` int64, ``-1`` = top-1;
outputs ``logits`` and ``attribution``; ``B`` dynamic). Files are written atomically.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..errors import PyExplainError
from ..io import atomic_write
from .branches import WithBranches, branch_names
from .compiler import CompiledExplainer, compile_explainer

FORMATS = ("onnx", "pt2", "torchscript")
INPUT_NAMES = ("image", "target")
OUTPUT_NAMES = ("logits", "attribution")
_SUFFIXES = {".onnx": "onnx", ".pt2": "pt2", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}
ONNX_OPSET = 18
METADATA_FILE = "pyexplain.txt"


def format_of(path: str | os.PathLike, fmt: str | None = None) -> str:
    """``fmt`` checked, or the format named by ``path``'s suffix."""
    if fmt is None:
        fmt = _SUFFIXES.get(Path(path).suffix.lower())
        if fmt is None:
            raise PyExplainError(f"cannot tell the export format of {str(path)!r}; give one of {', '.join(FORMATS)}")
    if fmt not in FORMATS:
        raise PyExplainError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    return fmt


def flatten(explainer: nn.Module) -> fx.GraphModule:
    """The explainer as one flat fx graph (its step loop unrolled), the common source of every format."""
    module = fx.symbolic_trace(explainer)
    for node in module.graph.nodes:
        node.type = None  # string annotations (postponed evaluation) would confuse TorchScript
    module.recompile()
    return module


def _example(explainer: CompiledExplainer) -> tuple[Tensor, Tensor]:
    device = explainer.classes.device
    return (torch.zeros((2, *explainer.input_shape), device=device, dtype=explainer.dtype),
            torch.full((2,), -1, dtype=torch.long, device=device))


def _dynamic_batch() -> dict[str, dict[int, Any]]:
    batch = torch.export.Dim("batch", min=1, max=65536)
    return {"x": {0: batch}, "target": {0: batch}}


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporters' progress chatter and deprecation notes are not the user's concern."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def metadata_text(metadata: dict[str, str]) -> str:
    """``key=value`` lines (the form TorchScript/pt2 extra files carry and the C++ example reads)."""
    return "".join(f"{key}={value}\n" for key, value in metadata.items())


def _write_onnx(module: nn.Module, explainer: CompiledExplainer, tmp: Path, metadata: dict[str, str],
                outputs: list[str]) -> None:
    try:
        import onnx
    except ImportError:
        raise PyExplainError("ONNX export needs the onnx package: pip install 'pyexplain[export]'") from None
    # The TorchScript-based exporter: the same graph as torch.export's, in a tenth of the time.
    names = {name: {0: "batch"} for name in [*INPUT_NAMES, *outputs]}
    buffer = io.BytesIO()
    torch.onnx.export(module, _example(explainer), buffer, dynamo=False, opset_version=ONNX_OPSET,
                      input_names=list(INPUT_NAMES), output_names=outputs, dynamic_axes=names,
                      training=torch.onnx.TrainingMode.PRESERVE)  # EVAL would fold BN into the forward convs only
    model = onnx.load_model_from_string(buffer.getvalue())
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    tmp.write_bytes(model.SerializeToString())


def _write_pt2(module: nn.Module, explainer: CompiledExplainer, tmp: Path, metadata: dict[str, str],
               outputs: list[str]) -> None:
    program = torch.export.export(module, _example(explainer), dynamic_shapes=_dynamic_batch(), strict=False)
    buffer = io.BytesIO()  # torch.export.save wants a .pt2 name or a buffer; the temporary file has neither
    torch.export.save(program, buffer, extra_files={METADATA_FILE: metadata_text(metadata)})
    tmp.write_bytes(buffer.getvalue())


def _write_torchscript(module: nn.Module, explainer: CompiledExplainer, tmp: Path, metadata: dict[str, str],
                       outputs: list[str]) -> None:
    buffer = io.BytesIO()  # written to a buffer, the archive's folder is "archive", not the temporary name
    torch.jit.save(torch.jit.script(module), buffer, _extra_files={METADATA_FILE: metadata_text(metadata)})
    tmp.write_bytes(buffer.getvalue())


_WRITERS = {"onnx": _write_onnx, "pt2": _write_pt2, "torchscript": _write_torchscript}


def explainer_metadata(explainer: CompiledExplainer, extra: dict[str, str] | None = None) -> dict[str, str]:
    """What a consumer needs to feed the explainer: method, input shape, and (from ``extra``) the
    normalization ``mean``/``std`` and anything else the caller adds."""
    from .. import __version__

    base = {"producer": f"pyexplain {__version__}", "method": explainer.method,
            "input_shape": ",".join(str(s) for s in explainer.input_shape),
            "inputs": "image float [B,C,H,W] normalized; target int64 [B], -1 = top-1",
            "outputs": "logits [B,K]; attribution [B,C,H,W]"}
    return {**base, **{k: str(v) for k, v in (extra or {}).items()}}


def write_explainer(explainer: CompiledExplainer, fmt: str | None, path: str | os.PathLike,
                    metadata: dict[str, str] | None = None, *, branches: bool = False) -> Path:
    """Write a compiled explainer as ``fmt`` to ``path`` (atomically), with ``metadata`` (str → str)
    stored in the file (ONNX metadata_props; ``pyexplain.txt`` extra file for pt2/TorchScript).

    ``branches=True`` (for checking a runtime) adds the branch decisions as outputs after ``logits`` and
    ``attribution`` (:class:`~pyexplain.export.branches.WithBranches`)."""
    fmt = format_of(path, fmt)
    explainer = explainer.eval()
    module = flatten(WithBranches(explainer) if branches else explainer)
    outputs = [*OUTPUT_NAMES, *(branch_names(explainer) if branches else [])]
    meta = explainer_metadata(explainer, metadata)
    with _quiet():
        return atomic_write(path, lambda tmp: _WRITERS[fmt](module, explainer, tmp, meta, outputs))


def export_explainer(model: nn.Module, method: str, format: str | None, path: str | os.PathLike,
                     example_input: Tensor, *, metadata: dict[str, str] | None = None, **options: Any) -> Path:
    """Compile ``model`` + ``method`` (see :func:`compile_explainer`) and write it to ``path`` as
    ``format`` (``"onnx"``, ``"pt2"`` or ``"torchscript"``; from the suffix when None)."""
    fmt = format_of(path, format)
    return write_explainer(compile_explainer(model, method, example_input, **options), fmt, path, metadata)
