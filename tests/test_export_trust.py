"""Reading explainer files a user received: ``.pt2`` and ONNX files are read as data (a file that would
make the loader run code is refused before anything in it runs), and a truncated, empty, damaged or
foreign file of any format gives one ``PyExplainError`` line."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from pyexplain.errors import PyExplainError
from pyexplain.export import export_explainer, load_explainer

SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}


class _Marker:
    """Unpickling it creates the file ``path`` (the side effect a hostile pickle would have)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny saliency explainer in each format."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    folder = tmp_path_factory.mktemp("explainers")
    return {fmt: export_explainer(net, "saliency", fmt, folder / f"tiny{suffix}", torch.randn(1, 3, 8, 8))
            for fmt, suffix in SUFFIX.items()}


def _rewrite_zip(source: Path, target: Path, change) -> Path:
    """A copy of the zip ``source`` with ``change(name, bytes) -> bytes`` applied to every entry (CRCs
    recomputed, so only the content differs)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        for info in old.infolist():
            new.writestr(info.filename, change(info.filename, old.read(info)))
    return target


def _pickle(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _one_line_refusal(path: Path, *match: str) -> str:
    with pytest.raises(PyExplainError) as error:
        load_explainer(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert all(m in message for m in match), message
    return message


def _pickled_weight(name: str, data: bytes, marker: Path) -> bytes:
    """The first weight entry marked ``use_pickle`` and replaced by a hostile pickle."""
    if name.endswith("_weights_config.json"):
        config = json.loads(data)
        first = sorted(config["config"])[0]
        config["config"][first]["use_pickle"] = True
        return json.dumps(config).encode()
    if name.endswith("/weight_0"):
        return _pickle(_Marker(marker))
    return data


def test_pickled_pt2_weight_is_refused_before_it_runs(files, tmp_path):
    marker = tmp_path / "marker"
    hostile = _rewrite_zip(files["pt2"], tmp_path / "hostile.pt2",
                           lambda name, data: _pickled_weight(name, data, marker))
    # the crafted file is a real attack: torch.export.load on it runs the pickle
    try:
        torch.export.load(hostile)
    except Exception:  # the marker is made while reading, whatever happens after
        pass
    assert marker.exists()
    marker.unlink()
    _one_line_refusal(hostile, "pickle")
    assert not marker.exists()


def _hostile_sample_inputs(name: str, data: bytes, marker: Path) -> bytes:
    return _pickle(_Marker(marker)) if "/sample_inputs/" in name else data


def _program_change(edit):
    def change(name: str, data: bytes) -> bytes:
        if "/models/" not in name:
            return data
        program = json.loads(data)
        edit(program)
        return json.dumps(program).encode()
    return change


def _guard(program):
    program["guards_code"] = ["__import__('os').getpid() > 0"]


def _size(program):
    values = program["graph_module"]["graph"]["tensor_values"]
    next(iter(values.values()))["sizes"][0] = {"as_expr": {"expr_str": "__import__('os').getpid()"}}


def _power_guard(program):
    program["guards_code"] = ["L['x'].size()[0] ** 9 ** 9 ** 9 > 0"]  # would compute for ever


def _power_size(program):
    values = program["graph_module"]["graph"]["tensor_values"]
    next(iter(values.values()))["sizes"][0] = {"as_expr": {"expr_str": "Integer(9)**Integer(9)**Integer(99)"}}


def _target(program):
    program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.getpid"



@pytest.mark.parametrize("attack,change,match", [
    ("sample inputs pickle", "sample", "sample inputs"),
    ("shape guard code", _program_change(_guard), "shape guard"),
    ("symbolic size code", _program_change(_size), "symbolic size"),
    ("non-ATen node target", _program_change(_target), "torch.os.getpid"),
    ("power in a guard", _program_change(_power_guard), "shape guard"),
    ("power in a size", _program_change(_power_size), "symbolic size"),
])
def test_pt2_archive_that_would_run_code_is_refused(files, tmp_path, attack, change, match):
    marker = tmp_path / "marker"
    if change == "sample":
        change = lambda name, data: _hostile_sample_inputs(name, data, marker)  # noqa: E731
    hostile = _rewrite_zip(files["pt2"], tmp_path / "hostile.pt2", change)
    _one_line_refusal(hostile, match)
    assert not marker.exists()


def test_pt2_archive_with_a_library_entry_is_refused(files, tmp_path):
    hostile = tmp_path / "hostile.pt2"
    _rewrite_zip(files["pt2"], hostile, lambda name, data: data)
    with zipfile.ZipFile(hostile, "a", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data/aotinductor/model/model.so", b"\x7fELF")
    _one_line_refusal(hostile, "aotinductor")


def test_onnx_with_foreign_operators_or_external_data_is_refused(files, tmp_path):
    import onnx

    model = onnx.load(files["onnx"])
    model.graph.node[0].domain = "com.example"
    onnx.save(model, tmp_path / "custom.onnx")
    _one_line_refusal(tmp_path / "custom.onnx", "com.example")
    model = onnx.load(files["onnx"])
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "/etc/hostname"
    onnx.save(model, tmp_path / "external.onnx")
    _one_line_refusal(tmp_path / "external.onnx", "external data")


def _tampered(fmt: str, data: bytes) -> bytes:
    """Bytes changed inside the file: in a zip entry's content (pt2, TorchScript), in the protobuf's
    first field (ONNX)."""
    damaged = bytearray(data)
    if fmt == "onnx":
        damaged[0:8] = b"\xff" * 8
        return bytes(damaged)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        largest = max(archive.infolist(), key=lambda i: i.file_size)
        header = largest.header_offset  # the local header's name and extra-field lengths locate the content
        start = header + 30 + int.from_bytes(data[header + 26:header + 28], "little") \
            + int.from_bytes(data[header + 28:header + 30], "little")
    damaged[start + 16:start + 24] = bytes(255 - b for b in damaged[start + 16:start + 24])
    return bytes(damaged)


@pytest.mark.parametrize("fmt", list(SUFFIX))
@pytest.mark.parametrize("damage", ["empty", "truncated", "tampered", "another format", "not a file"])
def test_damaged_explainer_file_gives_one_line(files, tmp_path, fmt, damage):
    data = files[fmt].read_bytes()
    other = files["onnx" if fmt != "onnx" else "pt2"].read_bytes()
    path = tmp_path / f"damaged{SUFFIX[fmt]}"
    if damage == "not a file":
        path.mkdir()
    else:
        path.write_bytes({"empty": b"", "truncated": data[:len(data) // 2], "tampered": _tampered(fmt, data),
                          "another format": other}[damage])
    _one_line_refusal(path)


@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_intact_files_still_load(files, fmt):
    x, target = torch.randn(2, 3, 8, 8), torch.tensor([-1, 1])
    logits, attribution = load_explainer(files[fmt])(x, target)
    assert logits.shape == (2, 2) and attribution.shape == (2, 3, 8, 8)
