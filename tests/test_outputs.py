"""What the commands write: file modes that follow the umask, strict JSON, non-finite models reported."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cli_support import run_cli

TINY = ["--device", "cpu", "--input-size", "32"]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in" / "image.png"
    path.parent.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 90)).save(path)
    return path


@pytest.fixture(params=[0o022, 0o077])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def _modes(folder) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*")}


def test_written_files_follow_the_umask(tmp_path, image, umask, capsys):
    from pyexplain.io import current_umask

    assert current_umask() == umask
    model = ["--model", "dataset_models:tiny_cnn"]
    assert run_cli(["explain", image, *model, *TINY, "--out", tmp_path / "explain"], capsys)[0] == 0
    assert run_cli(["explain-dataset", image.parent, *model, *TINY, "--no-progress", "--png", "--out", tmp_path / "ds",
                    "--summary", tmp_path / "ds-summary.json"], capsys)[0] == 0
    assert run_cli(["compare", image, *model, "--device", "cpu", "--methods", "saliency",
                    "--out", tmp_path / "compare.png"], capsys)[0] == 0
    written = {**_modes(tmp_path / "explain"), **_modes(tmp_path / "ds"),
               "compare.png": stat.S_IMODE((tmp_path / "compare.png").stat().st_mode),
               "ds-summary.json": stat.S_IMODE((tmp_path / "ds-summary.json").stat().st_mode)}
    for name in ("image_gradxinput.npy", "image_gradxinput.png", "maps/image.png.npy", "png/image.png.png",
                 "manifest.jsonl", ".pyexplain/run.json", ".pyexplain/journal-0.jsonl", ".pyexplain/lock"):
        assert name in written
    for name, mode in written.items():
        folder = (tmp_path / "ds" / name).is_dir() or (tmp_path / "explain" / name).is_dir()
        assert mode == (0o777 if folder else 0o666) & ~umask, (name, oct(mode))


def test_nan_model_is_an_error_and_nothing_is_written(tmp_path, image, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(["explain", image, "--model", "dataset_models:nan_cnn", *TINY, "--json", "--out", out],
                                capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "NaN or infinite" in err, err
    assert stdout == "" and not out.exists()

    code, _, err = run_cli(["explain-dataset", image.parent, "--model", "dataset_models:nan_cnn", *TINY,
                            "--no-progress", "--out", tmp_path / "ds", "--summary", tmp_path / "summary.json"], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "ds" / "manifest.jsonl").read_text())
    assert record["status"] == "failed" and "NaN or infinite" in record["reason"] and record["outputs"] == {}
    assert record["score"] is None and json.loads((tmp_path / "summary.json").read_text())["failed"] == 1
    assert not (tmp_path / "ds" / "maps").exists()


def test_json_stays_valid_when_the_scores_are_not_finite_and_no_warning_leaks(tmp_path, image):
    """In a fresh process as a user runs it, so that any Python warning would reach stderr."""
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    env.pop("PYTHONWARNINGS", None)
    done = subprocess.run([sys.executable, "-m", "pyexplain", "explain", str(image), "--model", "dataset_models:inf_logit_cnn",
                           *TINY, "--json", "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout, parse_constant=lambda name: pytest.fail(f"bare {name} in the JSON"))
    assert records[0]["target"]["index"] == 0 and records[0]["score"] is None
    assert all(entry["probability"] is None for entry in records[0]["top5"])
    assert done.stderr.startswith("note: ") and "not all finite" in done.stderr and done.stderr.count("\n") == 1
