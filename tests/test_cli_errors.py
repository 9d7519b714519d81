"""Bad user input in every command: one ``error:`` line and exit 2, nothing written; never "internal error"."""
from __future__ import annotations

import math
import os

import pytest
import torch
from PIL import Image

from pyexplain import PyExplainError, explain
from pyexplain.method_options import MAX_STEPS, check_options
from pyexplain.registry import get_method

from cli_support import run_cli
from dataset_models import tiny_cnn

TINY = ["--model", "dataset_models:tiny_cnn", "--device", "cpu"]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (200, 30, 90)).save(path)
    return path


def _refused(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "internal error" not in err, err
    assert message in err, err


@pytest.mark.parametrize("args,message", [
    (["--method", "integrated_gradients", "-O", "steps=abc"], "steps must be an integer, got 'abc'"),
    (["--method", "integrated_gradients", "-O", "steps=nan"], "steps must be an integer, got 'nan'"),
    (["--method", "integrated_gradients", "-O", "steps=1e9"], f"steps must be an integer, at least 1 and at most {MAX_STEPS:,}"),
    (["--method", "integrated_gradients", "-O", "steps=0"], "at least 1 and at most"),
    (["--method", "lpr", "-O", "iterations=abc"], "lpr option iterations must be an integer"),
    (["--method", "dmbp", "-O", "iterations=2.5"], "dmbp option iterations must be an integer, got 2.5"),
    (["--method", "dmbp", "-O", "lr=abc"], "dmbp option lr must be a finite number, got 'abc'"),
    (["--method", "dmbp", "-O", "lr=nan"], "dmbp option lr must be a finite number"),
    (["--method", "dmbp", "-O", "lr=-1"], "dmbp option lr must be a positive number"),
    (["--method", "saliency", "-O", "absolute=1"], "absolute must be True or False"),
    (["--method", "occlusion", "-O", "window=(8,'a')"], "window must be an integer or a tuple of integers"),
    (["--target", "²"], "unknown class name '²'"),
    (["--target=--5"], "unknown class name '--5'"),
    (["--target", "-5"], "outside the model's classes"),
])
def test_explain_refuses_bad_options_and_targets(tmp_path, image, capsys, args, message):
    out = tmp_path / "out"
    code, _, err = run_cli(["explain", image, *TINY, "--input-size", "32", "--out", out, *args], capsys)
    _refused(code, err, message)
    assert not out.exists()


def test_bad_options_are_refused_by_compare_evaluate_and_explain_dataset(tmp_path, image, capsys):
    code, _, err = run_cli(["compare", image, *TINY, "--methods", "integrated_gradients",
                            "-O", "integrated_gradients.steps=abc", "--out", tmp_path / "c.png"], capsys)
    _refused(code, err, "steps must be an integer")
    code, _, err = run_cli(["evaluate", *TINY, "--methods", "dmbp", "-O", "dmbp.lr=nan", "--images", tmp_path,
                            "--out", tmp_path / "eval"], capsys)
    _refused(code, err, "lr must be a finite number")
    code, _, err = run_cli(["explain-dataset", tmp_path, "--out", tmp_path / "ds", *TINY, "--method", "dmbp",
                            "-O", "iterations=2.5"], capsys)
    _refused(code, err, "iterations must be an integer")
    code, _, err = run_cli(["fit-rules", image, *TINY, "-O", "gamma=abc", "--out", tmp_path / "rules.pt"], capsys)
    _refused(code, err, "lpr option gamma must be a finite number, got 'abc'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png"]


def test_empty_weights_file(tmp_path, image, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    code, _, err = run_cli(["explain", image, *TINY, "--weights", empty, "--out", tmp_path / "out"], capsys)
    _refused(code, err, "is empty")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04")
    code, _, err = run_cli(["explain", image, *TINY, "--weights", garbage, "--out", tmp_path / "out"], capsys)
    _refused(code, err, "cannot read weights file")
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file(tmp_path, image, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    for command in (["explain", image, *TINY], ["evaluate", *TINY, "--images", tmp_path],
                    ["explain-dataset", image.parent, *TINY], ["data", "synthetic", "-n", "1"]):
        code, _, err = run_cli([*command, "--out", taken], capsys)
        _refused(code, err, "not a folder")
    folder = tmp_path / "folder.png"  # an existing folder is a folder, whatever its name
    folder.mkdir()
    code, _, err = run_cli(["compare", image, *TINY, "--methods", "saliency", "--out", folder], capsys)
    assert code == 0 and [p.name for p in folder.iterdir()] == ["image_compare.png"], err
    assert taken.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in a read-only folder")
def test_out_in_a_read_only_folder(tmp_path, image, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    for command in (["explain", image, *TINY], ["explain-dataset", image.parent, *TINY]):
        code, _, err = run_cli([*command, "--out", locked / "out"], capsys)
        _refused(code, err, "ermission denied")


def test_out_refused_when_not_writable(tmp_path, image, capsys, monkeypatch):
    """What a read-only folder gets (exercised through ``os.access``, which root always passes)."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    code, _, err = run_cli(["explain", image, *TINY, "--out", tmp_path / "out"], capsys)
    _refused(code, err, "cannot write in")
    code, _, err = run_cli(["compare", image, *TINY, "--methods", "saliency", "--out", tmp_path / "c.png"], capsys)
    _refused(code, err, "cannot write in")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png"]


def test_atomic_write_reports_an_unwritable_place_in_one_line(tmp_path):
    from pyexplain.io import atomic_write

    (tmp_path / "file").write_text("x")
    with pytest.raises(PyExplainError, match="cannot write"):
        atomic_write(tmp_path / "file" / "out.npy", lambda tmp: tmp.write_bytes(b""))


def test_check_options_converts_what_is_unambiguous():
    assert check_options(get_method("integrated_gradients"), {"steps": 100.0}) == {"steps": 100}
    assert check_options(get_method("occlusion"), {"window": [8, 8], "stride": 4}) == {"window": (8, 8), "stride": 4}
    assert check_options(get_method("gradcam"), {"layer": 3}) == {"layer": "3"}  # a module name
    assert check_options(get_method("deeplift"), {"reference": torch.zeros(1)})["reference"].shape == (1,)
    with pytest.raises(PyExplainError, match="has no option 'bogus'"):
        check_options(get_method("saliency"), {"bogus": 1})


@pytest.mark.parametrize("method,options,message", [
    ("dmbp", {"lr": math.nan}, "finite number"),
    ("dmbp", {"iterations": True}, "integer"),
    ("smoothgrad", {"noise_level": -0.1}, "zero or positive"),
    ("integrated_gradients", {"steps": 10**9}, "at least 1 and at most"),
])
def test_the_api_refuses_bad_option_values(method, options, message):
    with pytest.raises(PyExplainError, match=message):
        explain(tiny_cnn(), torch.zeros(1, 3, 16, 16), method, **options)
