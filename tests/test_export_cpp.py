"""The C++ consumer (export/cpp): built with CMake against the libtorch inside the torch wheel, it runs
a TorchScript explainer written by `pyexplain export` on an image; its map equals the eager one."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import pyexplain
from pyexplain.cli import main
from pyexplain.io import builtin_image
from pyexplain.models import load_model

from export_support import TOLERANCE, one_torch_thread  # noqa: F401 (autouse fixture)

SOURCE = Path(__file__).resolve().parent.parent / "export" / "cpp"
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # a 64×64 image; no OpenMP barrier spinning on shared cores
pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None,
                                reason="needs cmake and a C++ compiler")


@pytest.fixture(scope="module")
def explain_binary(request, tmp_path_factory) -> Path:
    """The program, built once: in pytest's cache (one build folder per torch installation, rebuilt
    incrementally when a source or header changes), or in a temporary folder without the cache."""
    prefix = torch.utils.cmake_prefix_path
    key = hashlib.sha256(f"{prefix} {torch.__version__}".encode()).hexdigest()[:12]
    cache = getattr(request.config, "cache", None)
    build = cache.mkdir(f"export-cpp-build-{key}") if cache is not None else tmp_path_factory.mktemp("cpp-build")
    subprocess.run(["cmake", "-S", str(SOURCE), "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}"],
                   check=True, capture_output=True, timeout=300)
    subprocess.run(["cmake", "--build", str(build), "-j", "2"], check=True, capture_output=True, timeout=600)
    return build / "explain"


@pytest.mark.slow
def test_cpp_consumer_equals_eager(explain_binary, tmp_path):
    explainer = tmp_path / "explainer.pt"
    main(["export", "--model", "efficientnet_lite0", "--method", "gradxinput", "--format", "torchscript",
          "--input-size", "64", "--out", str(explainer)])
    model, preprocess = load_model("efficientnet_lite0", input_size=64)
    picture = preprocess.view(builtin_image("chelsea"))
    picture.save(tmp_path / "cat.ppm")
    x = preprocess(picture)
    for target, arguments in ((None, []), (285, ["285"])):
        run = subprocess.run([str(explain_binary), str(explainer), str(tmp_path / "cat.ppm"), str(tmp_path / "map"),
                              *arguments], capture_output=True, text=True, timeout=120, env=ONE_THREAD)
        assert run.returncode == 0, run.stderr
        written = np.load(tmp_path / "map.npy")
        expected = pyexplain.explain(model, x, "gradxinput", target=target).map[0].numpy()
        assert written.shape == (64, 64)
        assert np.abs(written - expected).max() <= TOLERANCE * np.abs(expected).max()
        assert (tmp_path / "map.ppm").read_bytes().startswith(b"P6\n64 64\n255\n")
        assert "target 285" in run.stdout  # chelsea's top-1 class at 64x64 too


def test_cpp_consumer_reports_errors_on_one_line(explain_binary, tmp_path):
    run = subprocess.run([str(explain_binary), str(tmp_path / "missing.pt"), "x.ppm", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stderr.startswith("error: ") and run.stderr.count("\n") == 1
    assert not list(tmp_path.iterdir())
