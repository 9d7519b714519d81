"""Checks that let an explainer file a user received be read as data, never run as code.

A ``.pt2`` archive (``torch.export.save``) is a zip of a JSON graph, raw tensor bytes and configs,
but ``torch.export.load`` also runs code the file names: weight and constant entries marked
``use_pickle`` (unpickled with ``weights_only=False``), custom and opaque objects (``pickle.loads``),
legacy ``.pt`` weight files and sample inputs (``weights_only=False`` on failure), AOTInductor
libraries, ``guards_code`` (Python source it ``exec``\\ s), symbolic sizes (sympy ``srepr`` strings it
evaluates) and node targets (any attribute of ``torch`` or ``operator``). :func:`check_pt2` accepts an
archive only if none of that can happen: no pickled or library entry, sample inputs readable with
``weights_only=True``, guards, sizes and range names in a strict grammar, and ATen operators and
``operator.getitem`` as the only node targets (and no power, whose evaluation could run for ever).
Every entry's CRC is checked too (a damaged file), and no entry may expand without bound.
"""
from __future__ import annotations

import io
import json
import re
import zipfile
import zlib
from typing import Any, Iterator

import torch

from ..errors import PyExplainError

#: Entries of a torch.export archive (below its one top folder) that hold data only.
_DATA_ENTRIES = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/\w+\.json"
    r"|data/weights/(weight_\d+|\w+_weights_config\.json)|data/constants/(tensor_\d+|\w+_constants_config\.json)"
    r"|data/sample_inputs/\w+\.pt|extra/[\w.\-]+)")
_TENSOR_FILE = re.compile(r"(weight|tensor)_\d+")
_OPERATOR = re.compile(r"torch\.ops\.aten\.\w+\.\w+|_operator\.getitem")
_SYMBOL = r"[su]\d+"
_RANGE_NAME = re.compile(_SYMBOL)
#: Tokens of a symbolic size as torch.export prints it (``srepr``): integers, sizes and arithmetic.
_EXPR_TOKENS = re.compile(
    rf"\s+|Symbol\('{_SYMBOL}'(, (positive|integer|nonnegative)=(True|False))*\)|Integer\(-?\d+\)"
    r"|Rational\(-?\d+, \d+\)|(Add|Mul|Max|Min|FloorDiv|CleanDiv|Mod|PythonMod|CeilToInt|FloorToInt)(?=\()"
    r"|-?\d+|[(),+*/-]")
#: Tokens of a shape guard, e.g. ``L['x'].size()[0] == L['target'].size()[0]``.
_GUARD_TOKENS = re.compile(r"\s+|L\['\w+'\]\.(size|stride)\(\)\[\d+\]|-?\d+|==|!=|<=|>=|<|>|and|[()+*]|%|//")


def _refuse(path: str, why: str) -> PyExplainError:
    return PyExplainError(f"refusing explainer file {path!r}: {why}")


#: The longest symbolic size or guard accepted (torch.export writes a few dozen characters).
MAX_EXPRESSION = 500


def _fully(tokens: re.Pattern[str], text: str) -> bool:
    """Whether ``text`` is a short sequence of ``tokens`` and nothing else, with no ``**`` (power)."""
    if len(text) > MAX_EXPRESSION or "**" in text.replace(" ", ""):
        return False
    position = 0
    while position < len(text):
        match = tokens.match(text, position)
        if match is None or match.end() == position:
            return False
        position = match.end()
    return True


#: The largest expansion a compressed entry may claim (TorchScript deflates its code entries only).
MAX_COMPRESSION_RATIO = 100


def open_zip(data: bytes, path: str, kind: str) -> zipfile.ZipFile:
    """``data`` as a zip archive whose entries are intact (CRC) and cannot expand without bound
    (stored, or compressed at most :data:`MAX_COMPRESSION_RATIO` times)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        for info in archive.infolist():
            if info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1024):
                raise _refuse(path, f"entry {info.filename!r} would expand {info.file_size} bytes from "
                                    f"{info.compress_size}")
            with archive.open(info) as entry:  # reading to the end checks the CRC
                while entry.read(1 << 24):
                    pass
    except PyExplainError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as exc:
        raise PyExplainError(f"explainer file {path!r} is not a readable {kind} archive (truncated, damaged or "
                             f"another format: {first_line(exc)})") from None
    return archive


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _payload_config(archive: zipfile.ZipFile, name: str, path: str) -> dict[str, Any]:
    try:
        config = json.loads(archive.read(name))["config"]
        if not isinstance(config, dict):
            raise TypeError("config is not a mapping")
        return config
    except (ValueError, KeyError, TypeError) as exc:
        raise _refuse(path, f"damaged entry {name!r} ({first_line(exc)})") from None


def _nodes(value: Any) -> Iterator[dict[str, Any]]:
    """Every graph node (a mapping with ``target``, ``inputs`` and ``outputs``), subgraphs included."""
    if isinstance(value, dict):
        if {"target", "inputs", "outputs"} <= value.keys():
            yield value
        for item in value.values():
            yield from _nodes(item)
    elif isinstance(value, list):
        for item in value:
            yield from _nodes(item)


def _strings_under(value: Any, key: str) -> Iterator[Any]:
    """Every value stored under ``key`` anywhere in ``value``."""
    if isinstance(value, dict):
        for k, item in value.items():
            if k == key:
                yield item
            yield from _strings_under(item, key)
    elif isinstance(value, list):
        for item in value:
            yield from _strings_under(item, key)


def _check_program(program: Any, name: str, path: str) -> None:
    if not isinstance(program, dict):
        raise _refuse(path, f"damaged program {name!r}")
    for node in _nodes(program):
        target = node.get("target")
        if not isinstance(target, str) or not _OPERATOR.fullmatch(target):
            raise _refuse(path, f"its graph calls {str(target)[:80]!r}, not an ATen operator")
    for key in ("as_operator", "as_custom_obj", "as_graph"):
        if next(_strings_under(program, key), None) is not None:
            raise _refuse(path, f"its graph holds an argument of kind {key!r}")
    for expr in _strings_under(program, "expr_str"):
        if not isinstance(expr, str) or not _fully(_EXPR_TOKENS, expr):
            raise _refuse(path, f"symbolic size {str(expr)[:80]!r} is not plain arithmetic")
    for guard in program.get("guards_code") or []:
        if not isinstance(guard, str) or not _fully(_GUARD_TOKENS, guard):
            raise _refuse(path, f"shape guard {str(guard)[:80]!r} is not a plain comparison of sizes")
    for range_name in program.get("range_constraints") or {}:
        if not _RANGE_NAME.fullmatch(range_name):
            raise _refuse(path, f"range constraint {range_name[:80]!r} is not a size symbol")


def _check_sample_inputs(archive: zipfile.ZipFile, name: str, path: str) -> None:
    """torch.export.load retries a failed ``weights_only=True`` read of the sample inputs without it."""
    try:
        torch.load(io.BytesIO(archive.read(name)), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for foreign content
        raise _refuse(path, f"its sample inputs {name!r} are not plain tensors ({first_line(exc)})") from None


def check_pt2(data: bytes, path: str) -> None:
    """Refuse (:class:`PyExplainError`) a ``.pt2`` archive that would make ``torch.export.load`` run
    anything but ATen operators on stored tensors (see the module docstring)."""
    archive = open_zip(data, path, "torch.export (.pt2)")
    names = archive.namelist()
    prefixes = {n.split("/", 1)[0] for n in names}
    if len(prefixes) != 1 or not any(n.endswith("/archive_format") for n in names):
        raise PyExplainError(f"explainer file {path!r} is not a torch.export (.pt2) archive")
    prefix = prefixes.pop() + "/"
    for name in names:
        entry = name[len(prefix):]
        if not _DATA_ENTRIES.fullmatch(entry):
            raise _refuse(path, f"entry {entry!r} is not a tensor, config or graph (a pickle or a library)")
    programs = [n for n in names if re.fullmatch(r"models/\w+\.json", n[len(prefix):])]
    if not programs:
        raise _refuse(path, "it holds no program")
    for name in programs:
        model = name[len(prefix) + len("models/"):-len(".json")]
        for kind in ("weights", "constants"):
            config_name = f"{prefix}data/{kind}/{model}_{kind}_config.json"
            if config_name not in names:
                raise _refuse(path, f"entry {config_name[len(prefix):]!r} is missing")
            for fqn, meta in _payload_config(archive, config_name, path).items():
                if not isinstance(meta, dict) or meta.get("use_pickle") is not False \
                        or not _TENSOR_FILE.fullmatch(str(meta.get("path_name", ""))):
                    raise _refuse(path, f"{kind[:-1]} {fqn[:80]!r} is stored as a pickle, not as raw tensor bytes")
        samples = f"{prefix}data/sample_inputs/{model}.pt"
        if samples in names:
            _check_sample_inputs(archive, samples, path)
        try:
            program = json.loads(archive.read(name))
        except ValueError as exc:
            raise _refuse(path, f"damaged program {name[len(prefix):]!r} ({first_line(exc)})") from None
        _check_program(program, name[len(prefix):], path)


def check_loaded_program(graph: torch.fx.Graph, path: str) -> None:
    """After deserializing, before running: every node of the exported program's graph is an input, the
    output, an ATen operator or ``getitem`` (what the loader made of the targets checked in the file)."""
    import operator

    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        target = node.target
        if node.op != "call_function" or not (target is operator.getitem or (
                isinstance(target, torch._ops.OpOverload) and target.namespace == "aten")):
            raise _refuse(path, f"its graph calls {str(target)[:80]!r}, not an ATen operator")
