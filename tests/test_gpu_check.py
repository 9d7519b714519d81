"""``benchmarks/gpu_check.py --dry-run``: every step of the GPU check runs at toy sizes on the CPU and
leaves its rows in results.json and results.md, so the script that runs on a GPU has run somewhere."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_runs_every_step(tmp_path):
    gpu_check = _gpu_check()
    code = gpu_check.main(["--out", str(tmp_path), "--dry-run"])
    payload = json.loads((tmp_path / "results.json").read_text())
    rows = payload["rows"]
    errors = [r for r in rows if r["name"] == "error"]
    assert code == 0 and not errors, errors
    assert {r["step"] for r in rows} >= {"build", "tests", "selfcheck", "ops", "lpr", "dmbp", "gradxinput", "gradcam",
                                         "dataset", "precision", "onnx"}
    for row in rows:
        if isinstance(row["value"], float):
            assert math.isfinite(row["value"]), row
    selfcheck = [r for r in rows if r["step"] == "selfcheck"]
    assert selfcheck and all(r["passed"] is not False for r in selfcheck), selfcheck
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n| ") == len(rows) + 1  # one line per row, after the header


def test_unknown_step_and_missing_gpu_are_refused(tmp_path, capsys):
    gpu_check = _gpu_check()
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--out", str(tmp_path), "--dry-run", "--steps", "nope"])
    assert exc.value.code == 2 and "unknown step 'nope'" in capsys.readouterr().err
    if not __import__("torch").cuda.is_available():
        assert gpu_check.main(["--out", str(tmp_path)]) == 2
        assert capsys.readouterr().err.startswith("error: no CUDA device")
