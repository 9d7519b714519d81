"""The C++ consumer (export/cpp): built with CMake against the libtorch inside the torch wheel (and
libjpeg, libpng), it runs a TorchScript explainer written by `pyexplain export` on a JPEG, PNG or PPM;
it preprocesses as the Python path does, and its map equals Python's."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pyexplain
from pyexplain.cli import main
from pyexplain.export import load_explainer
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


def _photos(folder: Path) -> dict[str, Path]:
    """The same photo as a JPEG (640×480, as taken) and as an odd-sized RGBA PNG (alpha to drop)."""
    picture = builtin_image("chelsea").convert("RGB")
    picture.save(folder / "cat.jpg", quality=90)
    odd = picture.crop((10, 5, 311, 238)).convert("RGBA")
    odd.save(folder / "cat.png")
    return {"jpeg": folder / "cat.jpg", "png": folder / "cat.png"}


@pytest.mark.slow
@pytest.mark.parametrize("model_name,extra", [("efficientnet_lite0", []), ("resnet18", ["--random-weights"])],
                         ids=["whole-image-resize", "resize-and-centre-crop"])
def test_cpp_consumer_preprocesses_as_python(explain_binary, tmp_path, model_name, extra):
    """On a JPEG and a PNG straight from disk, the C++ program's logit and map are Python's: the same
    TorchScript file run on ``Preprocess`` (Pillow's antialiased resize, torchvision's crop and
    normalization) of the same file. EfficientNet-Lite0 resizes the whole image; ResNet-18's metadata
    asks for the shorter side to 256 (a 64 crop of it)."""
    explainer = tmp_path / "explainer.pt"
    main(["export", "--model", model_name, "--method", "guided_backprop", "--format", "torchscript",
          "--input-size", "64", "--out", str(explainer), *extra])
    _, preprocess = load_model(model_name, input_size=64, random_weights=bool(extra))
    run = load_explainer(explainer)
    for kind, photo in _photos(tmp_path).items():
        for target in (None, 7):
            arguments = [] if target is None else [str(target)]
            done = subprocess.run([str(explain_binary), str(explainer), str(photo), str(tmp_path / "map"), *arguments],
                                  capture_output=True, text=True, timeout=120, env=ONE_THREAD)
            assert done.returncode == 0, done.stderr
            logits, attribution = run(preprocess(Image.open(photo)), torch.tensor([-1 if target is None else target]))
            chosen = int(logits.argmax()) if target is None else target
            printed = re.search(r"target (\d+), logit (\S+)", done.stdout)
            assert int(printed[1]) == chosen, (kind, done.stdout)
            assert abs(float(printed[2]) - float(logits[0, chosen])) <= 1e-4 * max(1.0, abs(float(logits[0, chosen])))
            expected = attribution[0].sum(0).numpy()
            written = np.load(tmp_path / "map.npy")
            assert written.shape == (64, 64)
            assert np.abs(written - expected).max() <= 1e-5 * np.abs(expected).max(), kind


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


def test_cpp_consumer_refuses_damaged_images_on_one_line(explain_binary, tmp_path):
    """A truncated JPEG (Pillow refuses it too) or PNG, or a file of another format: one error line,
    exit 1, no map written. The explainer is a tiny TorchScript one."""
    from torch import nn

    from pyexplain.export import export_explainer

    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 2)).eval()
    explainer = export_explainer(net, "saliency", "torchscript", tmp_path / "tiny.pt", torch.zeros(1, 3, 8, 8))
    photos = _photos(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    (images / "cut.jpg").write_bytes(photos["jpeg"].read_bytes()[:4000])
    (images / "cut.png").write_bytes(photos["png"].read_bytes()[:3000])
    (images / "text.ppm").write_text("not an image\n")
    with pytest.raises(OSError):
        Image.open(images / "cut.jpg").load()
    for image in sorted(images.iterdir()):
        out = tmp_path / "out" / image.stem
        out.parent.mkdir(exist_ok=True)
        run = subprocess.run([str(explain_binary), str(explainer), str(image), str(out)], capture_output=True,
                             text=True, timeout=60, env=ONE_THREAD)
        assert run.returncode == 1 and run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr
        assert not list(out.parent.iterdir())
