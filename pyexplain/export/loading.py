"""Loading an exported explainer back as ``run(x, target) -> (logits, attribution)``.

Trust model: an ONNX file and a ``.pt2`` archive are read as data — the ONNX graph must hold only
standard-domain operators and no external data, the ``.pt2`` archive only raw tensor entries and ATen
operators (:mod:`pyexplain.export.trust`); anything else is refused before it is parsed. A TorchScript
archive is a program (its ``code/`` is TorchScript source that torch compiles and runs): load only
files you trust. A truncated, empty, damaged or foreign file of any format gives one
:class:`PyExplainError` line.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ..errors import PyExplainError
from .formats import INPUT_NAMES, METADATA_FILE, OUTPUT_NAMES, format_of
from .trust import check_loaded_program, check_pt2, first_line, open_zip

Runner = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def _not_an_explainer(path: str, fmt: str, exc: BaseException | None = None) -> PyExplainError:
    detail = f" ({first_line(exc)})" if exc is not None else ""
    return PyExplainError(f"explainer file {path!r} is not a pyexplain {fmt} explainer (truncated, damaged or another "
                          f"format){detail}")


def _is_ours(metadata: str | bytes) -> bool:
    """Whether an extra ``pyexplain.txt`` file is pyexplain's metadata."""
    text = metadata.decode("utf-8", "replace") if isinstance(metadata, bytes) else metadata
    return text.startswith("producer=pyexplain")


def _check_onnx(data: bytes, path: str) -> None:
    """Standard-domain operators only, every tensor inside the file, the explainer's inputs and outputs."""
    try:
        import onnx
        from onnx.external_data_helper import uses_external_data
    except ImportError:
        raise PyExplainError("reading ONNX explainers needs the onnx package: pip install 'pyexplain[export]'") from None
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise _not_an_explainer(path, "onnx", exc) from None
    graph = model.graph
    outputs = [o.name for o in graph.output]
    if [i.name for i in graph.input] != list(INPUT_NAMES) or outputs[:2] != list(OUTPUT_NAMES) \
            or not all(re.fullmatch(r"(pre_activation|pool_indices)_\d+", name) for name in outputs[2:]):
        raise _not_an_explainer(path, "onnx")
    graphs, tensors = [graph], list(graph.initializer)
    while graphs:
        for node in graphs.pop().node:
            if node.domain not in ("", "ai.onnx"):
                raise PyExplainError(f"refusing explainer file {path!r}: operator {node.op_type!r} of domain "
                                     f"{node.domain[:80]!r} is not a standard ONNX operator")
            for attribute in node.attribute:
                tensors += [attribute.t] if attribute.HasField("t") else list(attribute.tensors)
                graphs += [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
    if any(uses_external_data(t) for t in tensors):
        raise PyExplainError(f"refusing explainer file {path!r}: it reads tensors from other files (external data)")


def _onnx_runner(data: bytes, path: str) -> Runner:
    import onnxruntime as ort

    _check_onnx(data, path)
    wanted = ("CUDAExecutionProvider", "CPUExecutionProvider")
    providers = [p for p in wanted if p in ort.get_available_providers()]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors become the exception below, not log lines
    try:
        session = ort.InferenceSession(data, options, providers=providers)
    except Exception as exc:  # onnxruntime's InvalidGraph, Fail, ...
        raise _not_an_explainer(path, "onnx", exc) from None

    def run(x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        feeds = {"image": x.detach().cpu().numpy(), "target": target.detach().cpu().long().numpy()}
        logits, attribution = session.run(list(OUTPUT_NAMES), feeds)
        return torch.from_numpy(logits), torch.from_numpy(attribution)

    return run


def _pt2_module(data: bytes, path: str) -> torch.nn.Module:
    check_pt2(data, path)
    extra = {METADATA_FILE: ""}
    try:
        program = torch.export.load(io.BytesIO(data), extra_files=extra)
    except Exception as exc:  # the deserializer raises many types on damaged content
        raise _not_an_explainer(path, "pt2", exc) from None
    if not _is_ours(extra[METADATA_FILE]):
        raise _not_an_explainer(path, "pt2")
    check_loaded_program(program.graph, path)
    return program.module()


def _torchscript_module(data: bytes, path: str) -> torch.nn.Module:
    open_zip(data, path, "TorchScript")
    extra = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation note
            module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # torch.jit raises RuntimeError with a multi-line report
        raise _not_an_explainer(path, "torchscript", exc) from None
    if not _is_ours(extra[METADATA_FILE]):
        raise _not_an_explainer(path, "torchscript")
    return module


def load_explainer(path: str | os.PathLike, fmt: str | None = None) -> Runner:
    """An exported explainer as ``run(x, target) -> (logits, attribution)`` (ONNX through onnxruntime).

    ONNX and ``.pt2`` files are checked to be data (see the module docstring); TorchScript files are
    programs — load only those you trust."""
    path = Path(path)
    fmt = format_of(path, fmt)
    if not path.is_file():
        raise PyExplainError(f"explainer file {str(path)!r} does not exist or is not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PyExplainError(f"cannot read explainer file {str(path)!r}: {exc.strerror}") from None
    if not data:
        raise PyExplainError(f"explainer file {str(path)!r} is empty")
    if fmt == "onnx":
        return _onnx_runner(data, str(path))
    module = _pt2_module(data, str(path)) if fmt == "pt2" else _torchscript_module(data, str(path))

    def run(x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        # TorchScript's profiling executor would re-optimize the graph over the first calls; run it as is.
        with torch.no_grad(), torch.jit.optimized_execution(False):
            logits, attribution = module(x, target)
        return logits, attribution

    return run
