"""Exported explainers equal pyexplain's eager methods: every fixed rule in each format (ONNX Runtime,
torch.export program, TorchScript), on EfficientNet-Lite0 (real weights), ResNet-18 and VGG16, for
batch sizes 1 and 4 and for given targets and top-1 (a batch of 4 mixes both; the batch of 1 takes
top-1 for every other rule and a given target for the rest).

To keep the suite short, each (model, rule) pair is exported in one format only (a Latin square:
every format runs every rule, and every model in every format), each model mostly in its cheapest
format (VGG16's 528 MB of weights as TorchScript, ResNet-18 as torch.export, EfficientNet-Lite0 as
ONNX) and the costly combinations once each. `benchmarks/export_check.py` runs the full product.
"""
from __future__ import annotations

import pytest
import torch

import pyexplain
from pyexplain.export import FORMATS, load_explainer
from pyexplain.export.formats import write_explainer

from export_support import (FIXED_RULES, MODELS, TOLERANCE, cases, compiled, images, logits, model,
                            flipped_rows, one_torch_thread, relative_error)  # noqa: F401

SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}
E, R, V = MODELS
#: rule -> the models exported as (onnx, pt2, torchscript)
ASSIGNMENT = {"saliency": (E, R, V), "gradxinput": (R, E, V), "guided_backprop": (E, V, R),
              "deconvnet": (V, R, E), "gradcam": (E, R, V), "guided_gradcam": (E, R, V), "lpr": (E, R, V)}
SQUARE = [(fmt, method, ASSIGNMENT[method][f]) for method in FIXED_RULES for f, fmt in enumerate(FORMATS)]


@pytest.mark.slow
@pytest.mark.parametrize("fmt,method,name", SQUARE, ids=[f"{f}-{m}-{n}" for f, m, n in SQUARE])
def test_exported_explainer_equals_eager(fmt, method, name, tmp_path):
    explainer, x = compiled(name, method), images(name)
    path = write_explainer(explainer, fmt, tmp_path / f"explainer{SUFFIX[fmt]}")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    run = load_explainer(path)
    for rows, t, expected in cases(single_top1=FIXED_RULES.index(method) % 2 == 0):
        out_logits, attribution = run(x[:rows], t)
        assert torch.allclose(out_logits, logits(name)[:rows], rtol=1e-4, atol=1e-4)
        error = relative_error(attribution, expected(name, method))
        if fmt == "onnx" and bool((error > TOLERANCE).any()):
            # ONNX Runtime's float32 rounding differs from torch's: a row may differ only where it put a
            # pre-activation on the other side of a gate threshold (or flipped a pooling argmax or top-1).
            flipped = flipped_rows(name, method, rows, t)
            assert int(flipped.sum()) <= 1, "more than one row with a flipped branch"
            error = error[~flipped]
        assert bool((error <= TOLERANCE).all()), (rows, t, error)


def test_api_export_and_metadata(tmp_path):
    """``pyexplain.export_explainer`` writes a file that carries its method and input shape."""
    import onnxruntime as ort

    path = pyexplain.export_explainer(model("resnet18"), "gradxinput", "onnx", tmp_path / "e.onnx",
                                      images("resnet18")[:1], metadata={"mean": "0.485,0.456,0.406"})
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert meta["method"] == "gradxinput" and meta["input_shape"] == "3,64,64" and meta["mean"] == "0.485,0.456,0.406"


def test_onnx_example_script(tmp_path):
    """export/run_onnx.py (ONNX Runtime alone, preprocessing from the file's metadata) writes the map
    that the explainer gives on the same image, and a heatmap."""
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from pyexplain.cli import main
    from pyexplain.models import load_model
    from pyexplain.io import builtin_image

    onnx = tmp_path / "gxi.onnx"
    main(["export", "--model", "efficientnet_lite0", "--method", "gradxinput", "--format", "onnx", "--input-size", "64",
          "--out", str(onnx)])
    _, preprocess = load_model("efficientnet_lite0", input_size=64)
    picture = preprocess.view(builtin_image("coffee"))
    picture.save(tmp_path / "coffee.png")
    script = Path(__file__).resolve().parent.parent / "export" / "run_onnx.py"
    run = subprocess.run([sys.executable, str(script), str(onnx), str(tmp_path / "coffee.png"), str(tmp_path / "out" / "coffee")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    _, attribution = load_explainer(onnx)(preprocess(picture), torch.tensor([-1]))
    written = np.load(tmp_path / "out" / "coffee.npy")
    assert np.allclose(written, attribution[0].sum(0).numpy(), rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["coffee.npy", "coffee.png"]
    assert Image.open(tmp_path / "out" / "coffee.png").width > 2 * 64  # a figure: the image, the map, a colour bar
