"""``pyexplain evaluate``, ``compare``, ``data`` and ``train`` end to end on the small models."""
import csv
import json

import pytest
import torch
from PIL import Image

from cli_support import run_cli
from pyexplain import load_model
from pyexplain.data import cache


def test_evaluate_writes_table_csv_json_plots_and_html(tmp_path, capsys):
    out = tmp_path / "eval"
    code, stdout, _ = run_cli(["evaluate", "--model", "digits_cnn", "--methods", "gradxinput,saliency", "--limit", "3",
                           "--metrics", "morf,lerf,deletion,sanity", "--insertion-step", "16", "--out", str(out)], capsys)
    assert code == 0
    assert "gradxinput" in stdout and "morf ↓" in stdout
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 2 * 3 * 4
    summary = json.loads((out / "summary.json").read_text())
    for method in ("gradxinput", "saliency"):
        values = [float(r["value"]) for r in rows if r["method"] == method and r["metric"] == "morf"]
        assert summary["summary"][method]["morf"] == pytest.approx(sum(values) / len(values), rel=1e-6)
    for metric in ("morf", "lerf", "deletion"):
        assert Image.open(out / f"curves_{metric}.png").format == "PNG"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 + 3 * 2 + 3 and 'src="http' not in page
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["results.csv", "summary.json", "curves_morf.png", "curves_lerf.png", "curves_deletion.png", "report.html"])


def test_evaluate_localization_and_cim_on_two_class_images(tmp_path, capsys):
    code, stdout, _ = run_cli(["evaluate", "--model", "synthetic_resnet", "--methods", "gradcam", "--images", "builtin:two_class",
                           "--limit", "2", "--metrics", "pointing,mass,cim", "--insertion-step", "32", "--out", str(tmp_path)], capsys)
    assert code == 0, stdout
    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]["gradcam"]
    assert 0 <= summary["pointing"] <= 1 and 0 <= summary["mass"] <= 1 and 0 <= summary["cim"] <= 1


@pytest.mark.parametrize("argv, message", [
    (["--metrics", "nonsense"], "unknown metric"),
    (["--metrics", "pointing"], "needs ground-truth regions"),
    (["--metrics", "cim"], "several true classes"),
    (["--methods", "no_such_method"], "unknown method"),
    (["--images", "/no/such/dir"], "no such image file, folder or list file"),
    (["/no/such/dir"], "no such image file, folder or list file"),
    (["--images", "builtin:two_class"], "synthetic models only"),
    (["-O", "gradxinput.steps=3", "--methods", "saliency"], "which is not chosen"),
    (["--metrics", "roar", "--roar-fractions", "0.5,2"], "--roar-fractions"),
    (["--metrics", "roar", "--roar-epochs", "0"], "--roar-epochs"),
    (["--metrics", "roar", "--roar-fill", "zero"], "--roar-fill"),
])
def test_evaluate_bad_input_is_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "eval"
    code, _, err = run_cli(["evaluate", "--model", "digits_cnn", "--limit", "2", "--out", str(out)] + argv, capsys)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


def test_compare_writes_one_figure(tmp_path, capsys):
    out = tmp_path / "cmp.png"
    code, stdout, _ = run_cli(["compare", "test:0", "--model", "digits_cnn", "--methods", "gradxinput,gradcam,saliency",
                           "--out", str(out)], capsys)
    assert code == 0 and Image.open(out).size[0] > Image.open(out).size[1]  # one row of panels
    code, _, err = run_cli(["compare", "test:x", "--model", "digits_cnn", "--out", str(tmp_path / "b.png")], capsys)
    assert code == 2 and "test:N" in err


def test_data_and_train_commands(tmp_path, capsys, monkeypatch):
    code, _, _ = run_cli(["data", "synthetic_two_class", "--n", "2", "--out", str(tmp_path)], capsys)
    assert code == 0
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert len(labels) == 2 and all(len(r["labels"]) == 2 for r in labels)
    assert Image.open(tmp_path / "synthetic_two_class_0_region.png").size == (32, 32)
    code, stdout, _ = run_cli(["train", "digits_cnn", "--out", str(tmp_path / "digits.pt")], capsys)
    assert code == 0 and "test accuracy 0.9" in stdout and "weights shipped with pyexplain; written to" in stdout
    assert load_model("digits_cnn", weights=tmp_path / "digits.pt")[0](torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    monkeypatch.setattr(cache, "SHIPPED_DIR", tmp_path / "nowhere")
    code, stdout, err = run_cli(["train", "synthetic_vgg"], capsys)
    assert code == 2 and stdout == "" and err.startswith("error: the weights file ") and err.count("\n") == 1
    code, _, err = run_cli(["data", "imagenet", "--out", str(tmp_path)], capsys)
    assert code == 2 and "unknown dataset" in err


def test_evaluate_roar_retrains_the_digits_cnn(tmp_path, capsys):
    from pyexplain.data.digits import digits_splits, train_digits_cnn
    from pyexplain.data.training import accuracy

    code, stdout, _ = run_cli(["evaluate", "--model", "digits_cnn", "--methods", "gradxinput", "--limit", "2", "--metrics",
                           "roar", "--roar-fractions", "0,0.5", "--roar-epochs", "1", "--out", str(tmp_path)], capsys)
    assert code == 0 and "ROAR" in stdout
    rows = list(csv.DictReader(open(tmp_path / "roar.csv")))
    assert [(r["method"], float(r["fraction"])) for r in rows] == [
        ("random", 0.0), ("random", 0.5), ("gradxinput", 0.0), ("gradxinput", 0.5)]
    # Nothing removed: every row is the model's own recipe (1 epoch, seed 0) trained on the unmodified digits.
    train, test = digits_splits(0)
    unmodified = accuracy(train_digits_cnn(train, seed=0, epochs=1), test)
    assert all(float(r["accuracy"]) == pytest.approx(unmodified) for r in rows if float(r["fraction"]) == 0)
    assert all(0 <= float(r["accuracy"]) <= 1 for r in rows)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["roar_fill"] == "linear" and set(summary["roar"]) == {"random", "gradxinput"}
    assert Image.open(tmp_path / "curves_roar.png").format == "PNG"


def test_evaluate_roar_refuses_models_it_cannot_retrain(tmp_path, capsys):
    code, _, err = run_cli(["evaluate", "--model", "efficientnet_lite0", "--metrics", "roar", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "works for digits_cnn, synthetic_vgg, synthetic_resnet only" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_evaluate_scores_a_few_images_at_a_time_as_one_batch_would():
    """evaluate() scores images in steps (for its progress bar): the values and curves equal the
    metrics computed on all images in one call."""
    import torch

    import pyexplain
    from pyexplain.evaluation import evaluate, load_eval_set
    from pyexplain.metrics import insertion, pixel_flipping

    net, preprocess = pyexplain.load_model("digits_cnn")
    data = load_eval_set("digits_cnn", preprocess, "builtin", 7)
    result = evaluate(net, data, ["gradxinput"], ["morf", "insertion"], insertion_pixels_per_step=16, progress=False)
    a = pyexplain.explain(net, data.x, "gradxinput", target=data.targets.tolist()).attribution
    for metric, whole in (("morf", pixel_flipping(net, data.x, a, data.targets, order="morf")),
                          ("insertion", insertion(net, data.x, a, data.targets, pixels_per_step=16))):
        torch.testing.assert_close(result.values["gradxinput"][metric], whole.auc, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(result.curves["gradxinput"][metric][1], whole.curve, rtol=1e-4, atol=1e-5)
