"""Inputs that are not regular files, or too large, are refused at once by every command that reads images."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket

import numpy as np
import pytest
from PIL import Image

from pyexplain import PyExplainError
from pyexplain.io import load_image

from cli_support import run_cli

TINY = ["--model", "dataset_models:tiny_cnn", "--device", "cpu"]


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (instead of hanging) when the block runs longer than ``seconds``: SIGALRM interrupts a blocked read."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    return path


@pytest.fixture
def unix_socket(tmp_path):
    path = tmp_path / "socket.png"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    yield path
    server.close()


def test_special_files_and_oversized_files_are_refused_within_a_second(tmp_path, fifo, unix_socket, monkeypatch):
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(big)
    cases = {fifo: "FIFO", "/dev/zero": "character device", unix_socket: "socket", tmp_path: "directory"}
    for path, kind in cases.items():
        with deadline(1.0), pytest.raises(PyExplainError, match=kind):
            load_image(path)
    assert load_image(big).size == (64, 64)
    monkeypatch.setenv("PYEXPLAIN_MAX_IMAGE_BYTES", str(big.stat().st_size - 1))
    with deadline(1.0), pytest.raises(PyExplainError, match="exceeds the .*-byte limit"):
        load_image(big)
    monkeypatch.setenv("PYEXPLAIN_MAX_IMAGE_BYTES", "lots")
    with pytest.raises(PyExplainError, match="PYEXPLAIN_MAX_IMAGE_BYTES must be a positive integer"):
        load_image(big)


def _one_error_line(code: int, err: str, kind: str) -> None:
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and kind in err, err


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_explain_compare_evaluate_refuse_special_files(tmp_path, fifo, special, capsys):
    path = fifo if special == "fifo" else "/dev/zero"
    kind = "FIFO" if special == "fifo" else "character device"
    with deadline(60):  # the commands load the model first; reading the input itself does not block
        code, _, err = run_cli(["explain", path, *TINY, "--input-size", "32", "--out", tmp_path / "out"], capsys)
        _one_error_line(code, err, kind)
        code, _, err = run_cli(["compare", path, *TINY, "--methods", "gradxinput", "--out", tmp_path / "c.png"], capsys)
        _one_error_line(code, err, kind)
        images = tmp_path / "images"
        images.mkdir()
        Image.new("RGB", (32, 32), (90, 20, 200)).save(images / "a.png")
        if special == "fifo":
            os.rename(fifo, images / "b.png")
        else:
            (images / "b.png").symlink_to("/dev/zero")
        code, _, err = run_cli(["evaluate", *TINY, "--methods", "gradxinput", "--metrics", "morf", "--images", images,
                                "--out", tmp_path / "eval"], capsys)
        _one_error_line(code, err, kind)
    assert not (tmp_path / "out").exists() and not (tmp_path / "c.png").exists() and not (tmp_path / "eval").exists()


def test_explain_dataset_records_special_and_oversized_files_and_goes_on(tmp_path, fifo, unix_socket, capsys, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (32, 32), (90, 20, 200)).save(src / "good.png")
    big = src / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(big)
    os.rename(fifo, src / "pipe.png")
    (src / "zero.png").symlink_to("/dev/zero")
    os.rename(unix_socket, src / "socket.png")
    monkeypatch.setenv("PYEXPLAIN_MAX_IMAGE_BYTES", str(big.stat().st_size - 1))
    out = tmp_path / "out"
    with deadline(60):
        code, _, err = run_cli(["explain-dataset", src, "--out", out, *TINY, "--input-size", "32", "--no-progress"],
                               capsys)
    assert code == 0, err
    records = {r["source"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert records["good.png"]["status"] == "ok"
    for key, kind in (("pipe.png", "FIFO"), ("zero.png", "character device"), ("socket.png", "socket"),
                      ("big.png", "byte limit")):
        assert records[key]["status"] == "unreadable" and kind in records[key]["reason"], records[key]
