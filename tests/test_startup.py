"""The command line starts without torch where it does not need it: ``pyexplain --help``, a command's
``--help``, ``pyexplain methods`` and ``pyexplain models`` import neither torch nor torchvision."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(argv: list[str]) -> tuple[set[str], str]:
    """The modules ``python -X importtime ARGV`` imports, and its stdout."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    modules = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    return modules, run.stdout


@pytest.mark.parametrize("argv, expected", [
    (["-m", "pyexplain", "--help"], "explain-dataset"),
    (["-m", "pyexplain", "explain", "--help"], "--batch-size"),
    (["-m", "pyexplain", "evaluate", "--help"], "--metrics"),
    (["-m", "pyexplain", "methods"], "Sundararajan"),
    (["-m", "pyexplain", "models"], "resnet18"),
    (["-c", "import pyexplain; print(pyexplain.PyExplainError.__name__)"], "PyExplainError"),
])
def test_no_torch_without_need(argv, expected):
    modules, stdout = imported_modules(argv)
    heavy = sorted(m for m in modules if m.split(".")[0] in ("torch", "torchvision", "numpy", "PIL"))
    assert heavy == [] and expected in stdout, heavy[:5]


def test_public_names_are_imported_on_first_use():
    modules, stdout = imported_modules(["-c", "import pyexplain; print(pyexplain.explain.__module__)"])
    assert "torch" in modules and stdout.split() == ["pyexplain.api"]
    import pyexplain

    assert set(pyexplain.__all__) <= set(dir(pyexplain))
    with pytest.raises(AttributeError):
        pyexplain.no_such_name  # noqa: B018
