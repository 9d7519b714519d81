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
from torch import nn

import pyexplain
from pyexplain.export import FORMATS, load_explainer
from pyexplain.export.formats import write_explainer

from export_support import (FIXED_RULES, MODELS, TOLERANCE, cases, compiled, images, logits, model,  # noqa: F401
                            one_torch_thread, onnx_session, own_branch_failures, relative_error, run_session,
                            write_with_branches)

SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}
E, R, V = MODELS
#: rule -> the models exported as (onnx, pt2, torchscript)
ASSIGNMENT = {"saliency": (E, R, V), "gradxinput": (R, E, V), "guided_backprop": (E, V, R),
              "deconvnet": (V, R, E), "gradcam": (E, R, V), "guided_gradcam": (E, R, V), "lpr": (E, R, V)}
SQUARE = [(fmt, method, ASSIGNMENT[method][f]) for method in FIXED_RULES for f, fmt in enumerate(FORMATS)]


@pytest.mark.slow
@pytest.mark.parametrize("fmt,method,name", SQUARE, ids=[f"{f}-{m}-{n}" for f, m, n in SQUARE])
def test_exported_explainer_equals_eager(fmt, method, name, tmp_path):
    """torch.export and TorchScript run torch's kernels: their attribution equals the eager one to 1e-4.
    ONNX Runtime rounds its forward pass its own way, so a gate or pooling argmax within rounding of
    its threshold may flip, and where depends on the CPU's kernels: its attribution must equal torch's
    backward pass taken on its own branch decisions (read from the file, written with branch outputs),
    its flips must be rare and at rounding level, and the compiled module must equal the eager method."""
    explainer, x = compiled(name, method), images(name)
    if fmt == "onnx":
        path = write_with_branches(explainer, tmp_path / "explainer.onnx")
        assert [p.name for p in tmp_path.iterdir()] == ["explainer.onnx"]  # no temporary file left behind
        load_explainer(path)  # the file with branch outputs is still a valid explainer
        session = onnx_session(path)
        for rows, t, expected in cases(single_top1=FIXED_RULES.index(method) % 2 == 0):
            assert own_branch_failures(explainer, x[:rows], t, run_session(session, x[:rows], t)) == []
            with torch.no_grad():
                _, attribution = explainer(x[:rows], t)
            assert bool((relative_error(attribution, expected(name, method)) <= TOLERANCE).all())
        return
    path = write_explainer(explainer, fmt, tmp_path / f"explainer{SUFFIX[fmt]}")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    run = load_explainer(path)
    for rows, t, expected in cases(single_top1=FIXED_RULES.index(method) % 2 == 0):
        out_logits, attribution = run(x[:rows], t)
        assert torch.allclose(out_logits, logits(name)[:rows], rtol=1e-4, atol=1e-4)
        error = relative_error(attribution, expected(name, method))
        assert bool((error <= TOLERANCE).all()), (rows, t, error)


def test_api_export_and_metadata(tmp_path):
    """``pyexplain.export_explainer`` writes a file that carries its method and input shape."""
    import onnxruntime as ort

    path = pyexplain.export_explainer(model("resnet18"), "gradxinput", "onnx", tmp_path / "e.onnx",
                                      images("resnet18")[:1], metadata={"mean": "0.485,0.456,0.406"})
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert meta["method"] == "gradxinput" and meta["input_shape"] == "3,64,64" and meta["mean"] == "0.485,0.456,0.406"


@pytest.mark.parametrize("model_name,extra", [("efficientnet_lite0", []), ("resnet18", ["--random-weights"])],
                         ids=["whole-image-resize", "resize-and-centre-crop"])
def test_onnx_example_script(tmp_path, model_name, extra):
    """export/run_onnx.py (ONNX Runtime alone, preprocessing from the file's metadata) gives, on a JPEG
    straight from disk, the logit and map that the explainer gives on pyexplain's ``Preprocess`` of the
    same file (EfficientNet-Lite0: the whole image resized; ResNet-18: shorter side to 256, centre crop)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from pyexplain.cli import main
    from pyexplain.models import load_model
    from pyexplain.io import builtin_image

    onnx = tmp_path / "gxi.onnx"
    main(["export", "--model", model_name, "--method", "gradxinput", "--format", "onnx", "--input-size", "64",
          "--out", str(onnx), *extra])
    _, preprocess = load_model(model_name, input_size=64, random_weights=bool(extra))
    photo = tmp_path / "coffee.jpg"
    builtin_image("coffee").convert("RGB").crop((0, 0, 397, 301)).save(photo, quality=90)
    script = Path(__file__).resolve().parent.parent / "export" / "run_onnx.py"
    run = subprocess.run([sys.executable, str(script), str(onnx), str(photo), str(tmp_path / "out" / "coffee")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    logits_, attribution = load_explainer(onnx)(preprocess(Image.open(photo)), torch.tensor([-1]))
    printed = re.search(r"target (\d+), logit (\S+)", run.stdout)
    chosen = int(logits_.argmax())
    assert int(printed[1]) == chosen and abs(float(printed[2]) - float(logits_[0, chosen])) <= 1e-4
    written = np.load(tmp_path / "out" / "coffee.npy")
    expected = attribution[0].sum(0).numpy()
    assert np.abs(written - expected).max() <= 1e-5 * np.abs(expected).max()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["coffee.npy", "coffee.png"]
    assert Image.open(tmp_path / "out" / "coffee.png").width > 2 * 64  # a figure: the image, the map, a colour bar


class _Small(nn.Module):
    """Conv, ReLU, max-pool, ReLU6, linear: every kind of branch, on an 8-channel 16×16 map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(8 * 8 * 8, 5)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        return self.fc(torch.nn.functional.relu6(self.conv2(x)).flatten(1))


def _broken(explainer, how: str):
    """``explainer`` with a wrong gate threshold (0.05 instead of 0) or a backward conv scaled by 1.01."""
    from pyexplain.export import steps as S

    if how == "gate threshold":
        step = next(s for s in explainer.steps if isinstance(s, S.Activation))
        step._gate = lambda g, f: g * (f > 0.05).to(g.dtype)
    else:
        step = next(s for s in reversed(explainer.steps) if isinstance(s, S.Conv))
        grad = step.grad
        step.grad = lambda g, saved, rule: tuple(c * 1.01 for c in grad(g, saved, rule))
    return explainer


@pytest.mark.parametrize("how", ["correct", "gate threshold", "scaled backward"])
def test_own_branch_criterion_catches_a_wrong_export(how, tmp_path):
    """The ONNX criterion passes the correct export and fails one with a wrong gate or backward op."""
    from pyexplain.export import compile_explainer

    torch.manual_seed(0)
    net, x = _Small().eval(), torch.randn(3, 3, 16, 16)
    target = torch.tensor([-1, 2, 4])
    written = compile_explainer(net, "guided_backprop", x)
    if how != "correct":
        written = _broken(written, how)
    path = write_with_branches(written, tmp_path / "e.onnx")
    failures = own_branch_failures(compile_explainer(net, "guided_backprop", x), x, target,
                                   run_session(onnx_session(path), x, target))
    assert (failures == []) == (how == "correct"), failures
    if how != "correct":
        assert all(f.startswith("attribution differs") for f in failures), failures


@pytest.mark.slow
@pytest.mark.parametrize("family, name, pass_saturated", [("channel", R, False), ("predictor", R, False),
                                                          ("channel", E, True)])
def test_fitted_rules_file_exports_to_every_format(tmp_path, family, name, pass_saturated):
    """A rules file written by amortized LPR with its defaults (masked rule, no reference) — channel
    rules, or rules predicted per position by a rank-2 predictor, or channel rules whose ReLU6 gates
    pass saturated inputs (on EfficientNet-Lite0, where they change the map) — exports in each format
    and gives LPR's own fixed-rule attribution, by the criterion of the test above."""
    from pyexplain.export import compile_explainer
    from pyexplain.methods._lpr_rules import fit_rules, save_rules

    net, x = model(name), images(name)
    rules = fit_rules(net, x[:2], model_name=name, iterations=3, family=family, rank=2, objective="deletion",
                      pass_saturated=pass_saturated)
    if family == "predictor":  # the fit moved the predictor away from the channel rule it starts at
        assert any(float(p["up"].abs().max()) > 0 for p in rules["predictors"])
    path = save_rules(rules, tmp_path / "rules.pt")
    targets = torch.tensor([0, 3, 1, 5])
    expected = pyexplain.explain(net, x, "lpr", targets.tolist(), rules=str(path)).attribution
    if pass_saturated:
        gated = pyexplain.explain(net, x, "lpr", targets.tolist(), rules=dict(rules, pass_saturated=False)).attribution
        assert float(relative_error(gated, expected).max()) > 0.01
    explainer = compile_explainer(net, "lpr", x, rules=str(path))
    with torch.no_grad():
        assert bool((relative_error(explainer(x, targets)[1], expected) <= TOLERANCE).all())
    session = onnx_session(write_with_branches(explainer, tmp_path / "explainer.onnx"))
    assert own_branch_failures(explainer, x, targets, run_session(session, x, targets)) == []
    for fmt in ("pt2", "torchscript"):
        out_logits, attribution = load_explainer(write_explainer(explainer, fmt, tmp_path / f"explainer{SUFFIX[fmt]}"))(x, targets)
        assert torch.allclose(out_logits, logits(name), rtol=1e-4, atol=1e-4)
        assert bool((relative_error(attribution, expected) <= TOLERANCE).all()), fmt
