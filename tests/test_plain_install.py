"""A plain ``pip install .`` (isolated build: no torch at build time, so no ahead-of-time kernels)
into a fresh virtual environment gives working fused kernels, compiled at first use.

The fresh environment sees this environment's packages (torch, ...) through a ``.pth`` line, but
not its editable install of pyexplain. Two processes start at once on an empty cache: one compiles,
the other waits for it; both then use the same cached build, and a third process loads it without
compiling.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from pyexplain import _build
from pyexplain.data.cache import SHIPPED_SHA256

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_build.cxx_compiler() is None, reason="no C++ compiler: nothing to build")]


def _copy_sources(target: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)
    shutil.copytree(ROOT / "pyexplain", target / "pyexplain", ignore=ignore)
    return target


def test_plain_install_builds_the_kernels_at_first_use(tmp_path):
    (tmp_path / "src").mkdir()
    source = _copy_sources(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "outer_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-cache-dir", str(source)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    installed = Path(site, "pyexplain")
    assert (installed / "csrc" / "bindings.cpp").is_file() and not list(installed.glob("_C*"))
    assert sorted(p.name for p in (installed / "data" / "weights").iterdir()) == sorted(SHIPPED_SHA256)

    env = {**os.environ, "PYEXPLAIN_CACHE": str(tmp_path / "cache")}
    env.pop("PYTHONPATH", None)
    command = [str(venv / "bin" / "pyexplain"), "info"]
    first = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.communicate(timeout=1200), p.returncode) for p in first]
    for (out, err), code in results:
        assert code == 0, err
        assert "backend     extension" in out and "pyexplain_fused_kernels" in out, out + err
    notes = "".join(err for (_, err), _ in results)
    assert notes.count("note: compiling pyexplain's fused") == 1, notes

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "backend     extension" in again.stdout
    assert "compiling" not in again.stderr, again.stderr
