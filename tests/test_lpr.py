"""LPR (SPEC §3): the ruled backward against plain autograd, the optimized path against the naive
paper implementation, batch = single runs, second-order gradients against finite differences, the
loss on a real photo, float32 against float64 maps, MoRF on the digits CNN, errors, clean-up,
architectures, amortized rules (round trip, held-out MoRF)."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyexplain
from pyexplain.core.targets import Targets, target_scores
from pyexplain.errors import PyExplainError
from pyexplain.io import builtin_image
from pyexplain.methods._lpr import (LossConfig, RuleGraph, _Conv2dInputGrad, initial_weights, reference_activations,
                                    row_losses)
from pyexplain.methods._lpr_rules import fit_rules, load_rules, save_rules

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent / "benchmarks"))
from cli_support import run_cli  # noqa: E402
from lpr_models import other_tiny, tiny  # noqa: E402
from lpr_naive import lpr_naive  # noqa: E402


def _derivative_weights(graph: RuleGraph, keep_activation_mask: bool) -> list[torch.Tensor]:
    """``W`` making each rule exactly the activation's own derivative (in float64, tanh(20) == 1):
    ``tanh(W f) = 1[φ'(f) = 1]``, or with the activation mask ``tanh(W f)·φ'(f) = φ'(f)``."""
    weights = []
    for site in graph.sites:
        f = site.shift  # no reference here: the activation's input
        on = f != 0 if keep_activation_mask else site.call.derivative(f) > 0
        weights.append(torch.where(on, 20 / f.abs(), torch.zeros_like(f)))
    return weights


def _model_case(name, lite0):
    if name == "tiny":
        return tiny().double(), torch.randn(2, 3, 16, 16, dtype=torch.float64)
    if name == "efficientnet_lite0":
        return copy.deepcopy(lite0[0]).double(), torch.randn(1, 3, 32, 32, dtype=torch.float64)
    model, _ = pyexplain.load_model(name, random_weights=True)
    size = 75 if name == "inception_v3" else 32
    return model.double(), torch.randn(1, 3, size, size, dtype=torch.float64)


@pytest.mark.parametrize("name,keep_activation_mask", [
    ("tiny", False), ("tiny", True), ("resnet18", False), ("resnet18", True), ("efficientnet_lite0", False),
    ("inception_v3", True)])
def test_rule_fixed_to_the_activation_derivative_gives_the_plain_gradient(name, keep_activation_mask, lite0):
    torch.manual_seed(0)
    model, x = _model_case(name, lite0)
    targets = Targets(None)
    graph = RuleGraph.build(model, x, targets, variant="feature", f_ref=None,
                            keep_activation_mask=keep_activation_mask, head=True)
    graph.bind(_derivative_weights(graph, keep_activation_mask))
    ruled = graph.attribution(create_graph=False)
    xx = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(target_scores(model(xx), targets.indices).sum(), xx)
    torch.testing.assert_close(ruled, plain * x, rtol=1e-9, atol=1e-12 * float((plain * x).abs().max()))


@pytest.mark.parametrize("stride,padding,dilation,groups,size", [(2, 1, 1, 2, 6), (1, 2, 2, 1, 5), (2, 0, 1, 2, 7)])
def test_conv2d_input_grad_matches_conv2d_to_second_order(stride, padding, dilation, groups, size):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, size, size, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(4, 2 // groups, 3, 3, dtype=torch.float64, generator=g)
    b = torch.randn(4, dtype=torch.float64, generator=g)
    args = ((stride, stride), (padding, padding), (dilation, dilation), groups)
    torch.testing.assert_close(_Conv2dInputGrad.apply(x, w, b, *args), F.conv2d(x, w, b, stride, padding, dilation, groups))
    fn = lambda inp: _Conv2dInputGrad.apply(inp, w, b, *args)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_optimized_path_equals_the_naive_paper_implementation(tiny64, images64):
    x = images64[:1]
    # the paper's rule (no activation mask), learning rate and [0, 1] scaling
    e = pyexplain.explain(tiny64, x, "lpr", iterations=4, lr=0.2, normalize="minmax", keep_activation_mask=False)
    attribution, history = lpr_naive(tiny64, x, int(e.targets[0]), iterations=4)
    assert e.extras["loss_history"].shape == (1, 4)
    torch.testing.assert_close(e.extras["loss_history"][0], torch.tensor(history, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(e.attribution, attribution, rtol=1e-7, atol=1e-9 * float(attribution.abs().max()))
    assert history[-1] < history[0]


def test_batch_equals_single_runs_and_is_deterministic(tiny64, images64):
    options = dict(iterations=5, init_std=0.05, seed=3, arch="position", return_masks=True)
    batch = pyexplain.explain(tiny64, images64, "lpr", **options)
    again = pyexplain.explain(tiny64, images64, "lpr", **options)
    assert torch.equal(batch.attribution, again.attribution)
    for i in range(images64.shape[0]):
        single = pyexplain.explain(tiny64, images64[i:i + 1], "lpr", **options)
        torch.testing.assert_close(batch.attribution[i], single.attribution[0], rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(batch.extras["loss_history"][i], single.extras["loss_history"][0], rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(batch.extras["positive_mask"][i], single.extras["positive_mask"][0])
    assert batch.extras["positive_mask"].shape == (3, 1, 16, 16)


def test_early_stop_on_plateau(tiny64, images64):
    # tol so large that no later iteration counts as an improvement: every row stops after patience=1.
    e = pyexplain.explain(tiny64, images64, "lpr", iterations=10, patience=1, tol=1e6)
    assert e.extras["loss_history"].shape == (3, 2) and torch.isfinite(e.extras["loss_history"]).all()


@pytest.mark.parametrize("options", [
    dict(),
    dict(variant="gradient", keep_activation_mask=True, mask="smooth", smooth_sigma=1.0, normalize="symmetric"),
    dict(reference=False, head=True),
])
def test_second_order_gradient_matches_finite_differences(tiny64, images64, options):
    x = images64[:2, :, :8, :8]
    head = options.get("head", False)
    f_ref = None if options.get("reference") is False else reference_activations(tiny64, x, head)
    targets = Targets(None)
    graph = RuleGraph.build(tiny64, x, targets, variant=options.get("variant", "feature"), f_ref=f_ref,
                            keep_activation_mask=options.get("keep_activation_mask", False), head=head)
    config = LossConfig(**{k: options[k] for k in ("mask", "smooth_sigma", "normalize") if k in options})
    clean = target_scores(graph.logits, targets.indices)

    def loss(*weights):
        graph.bind(list(weights))
        a = graph.attribution(create_graph=True)
        return row_losses(tiny64, graph.x, a, targets.indices, clean, "logit", config)[0]

    weights = initial_weights(graph.sites, "channel", 2, 1.0, 0.3, 0, torch.float64, torch.device("cpu"))
    assert torch.autograd.gradcheck(loss, tuple(weights))


def test_loss_falls_on_a_real_photo(lite0, chelsea):
    e = pyexplain.explain(lite0[0], chelsea, "lpr", iterations=3)
    history = e.extras["loss_history"][0]
    assert int(e.targets[0]) == 285 and history.shape == (3,)
    assert history[-1] < history[0] - 0.5  # measured: a fall of 0.94


@pytest.mark.slow
def test_default_map_does_not_depend_on_float_rounding(lite0, chelsea):
    """The learned map in float32 against float64 (other rounding everywhere): Spearman ≥ 0.95 at the
    defaults. Measured at 32×32 on chelsea / rocket: 0.995 / 0.993 at the default lr 0.007, 0.81 / 0.80
    at the paper's 0.2 (the optimization then amplifies rounding; benchmarks/RESULTS.md, LPR)."""
    from scipy.stats import spearmanr

    model, preprocess = lite0
    x = F.interpolate(torch.cat([chelsea, preprocess(builtin_image("rocket"))]), size=(32, 32), mode="area")
    single = pyexplain.explain(model, x, "lpr").attribution.sum(1).double()
    double = pyexplain.explain(copy.deepcopy(model).double(), x.double(), "lpr").attribution.sum(1)
    for a, b in zip(single, double):
        assert spearmanr(a.flatten().numpy(), b.flatten().numpy())[0] >= 0.95


def test_default_rule_keeps_attributions_at_the_gradient_scale(lite0, chelsea):
    """With the masked rule (the default) inactive units pass nothing, so the map stays at Grad×Input's
    scale on EfficientNet-Lite0 (measured ratio 0.18); the paper's ungated rule also runs through
    inactive units and its raw values grow with depth and image size (ratio ~6e3 at 32×32, ~1e12 in
    absolute value at 224×224)."""
    x = F.interpolate(chelsea, size=(32, 32), mode="area")
    scale = float(pyexplain.explain(lite0[0], x, "gradxinput").attribution.abs().max())
    masked = float(pyexplain.explain(lite0[0], x, "lpr", iterations=2).attribution.abs().max())
    ungated = float(pyexplain.explain(lite0[0], x, "lpr", iterations=2, keep_activation_mask=False).attribution.abs().max())
    assert masked < 10 * scale < ungated / 10


@pytest.fixture(scope="module")
def digits():
    from pyexplain.data.digits import load_digits_cnn

    model, test = load_digits_cnn()
    return model, test.x[:16]


def test_digits_lpr_optimization_lowers_morf_auc(digits):
    """On the digits CNN the optimized rules give a lower MoRF AUC (5% budget, SPEC §6) than the initial
    rule, and a lower AUC than Grad×Input at a 20% budget (at 5% Grad×Input is lower here: see
    benchmarks/RESULTS.md). The paper's ungated rule: with the masked rule (the default) the initial
    rule is already about as good at 5% on these digits (benchmarks/RESULTS.md, LPR stability); hence
    the paper's rule and learning rate here."""
    from pyexplain.metrics.pixel_flipping import morf

    model, x = digits
    learned = pyexplain.explain(model, x, "lpr", keep_activation_mask=False, lr=0.2).attribution
    initial = pyexplain.explain(model, x, "lpr", iterations=1, keep_activation_mask=False).attribution
    gradxinput = pyexplain.explain(model, x, "gradxinput").attribution
    assert morf(model, x, learned).auc.mean() < morf(model, x, initial).auc.mean()
    assert morf(model, x, learned, max_fraction=0.2).auc.mean() < morf(model, x, gradxinput, max_fraction=0.2).auc.mean()


class _SiluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.sigmoid(torch.tanh(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("model,message", [
    (_SiluNet(), "1 sigmoid, 1 tanh"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 2)), "seen: none"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 8), nn.ReLU(), nn.Linear(8, 2)), "head=True"),
])
def test_unreachable_activations_give_a_one_line_error(model, message):
    with pytest.raises(PyExplainError) as info:
        pyexplain.explain(model.eval(), torch.randn(1, 3, 8, 8), "lpr", iterations=1)
    assert message in str(info.value) and "\n" not in str(info.value)


def _snapshot(model):
    module = nn.modules.module
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grad": [p.grad for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()),
        "global": (len(module._global_forward_hooks), len(module._global_forward_pre_hooks)),
        "modes": torch._C._len_torch_function_stack(),
    }


def _assert_same(before, after):
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])
    assert all(g is None for g in after["grad"])
    assert {k: v for k, v in after.items() if k not in ("state", "grad")} == {k: v for k, v in before.items() if k not in ("state", "grad")}


class _FailsOnSecondForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom")
        return self.inner(x)


def test_model_and_hooks_unchanged_after_success_and_failure(images64):
    model = tiny()
    before = _snapshot(model)
    pyexplain.explain(model, images64.float(), "lpr", iterations=2)
    _assert_same(before, _snapshot(model))
    failing = _FailsOnSecondForward()
    before = _snapshot(failing)
    with pytest.raises(RuntimeError, match="boom"):  # the reference forward passes, the image's raises
        pyexplain.explain(failing, images64.float(), "lpr", iterations=2)
    _assert_same(before, _snapshot(failing))


@pytest.mark.parametrize("name,size", [("vgg16", 32), ("resnet18", 32), ("resnet50", 32), ("inception_v3", 80),
                                       ("efficientnet_lite0", 32), ("user", 16)])
def test_architectures_smoke(name, size, lite0):
    torch.manual_seed(0)
    if name == "efficientnet_lite0":
        model = lite0[0]
    elif name == "user":
        model = tiny()
    elif name == "inception_v3":  # torchvision's own initialization (load_model skips it for speed)
        from torchvision.models import inception_v3

        model = inception_v3(weights=None, aux_logits=False, init_weights=True).eval()
    else:
        model, _ = pyexplain.load_model(name, random_weights=True)
    x = torch.randn(1, 3, size, size)
    e = pyexplain.explain(model, x, "lpr", iterations=2, arch="channel" if name == "vgg16" else "position")
    assert e.attribution.shape == x.shape and torch.isfinite(e.attribution).all()
    assert e.attribution.abs().amax() > 0
    assert e.extras["loss_history"].shape == (1, 2) and torch.isfinite(e.extras["loss_history"]).all()


def test_invalid_options():
    model, x = tiny(), torch.randn(1, 3, 16, 16)
    for bad, text in [(dict(arch="layer"), "arch"), (dict(mask="box"), "mask"), (dict(iterations=0), "iterations"),
                      (dict(lr=-1.0), "lr"), (dict(variant="x"), "variant")]:
        with pytest.raises(PyExplainError, match=text):
            pyexplain.explain(model, x, "lpr", **bad)


# --- amortized rules ---------------------------------------------------------------------------

def test_fitted_rules_lower_the_loss_and_round_trip(tmp_path, images64):
    model = tiny()
    x = images64.float()
    rules = fit_rules(model, x, model_name="lpr_models:tiny", iterations=6, batch_size=2)
    history = rules["loss_history"]
    assert history.shape == (6,) and history[-1] < history[0]
    assert [w.shape[0] for w in rules["weights"]] == [c["shape"][0] for c in rules["calls"]] == [6, 6, 8]
    path = save_rules(rules, tmp_path / "rules.pt")
    loaded = load_rules(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded["weights"], rules["weights"]))
    from_file = pyexplain.explain(model, x, "lpr", rules=str(path))
    from_dict = pyexplain.explain(model, x, "lpr", rules=loaded)
    assert torch.equal(from_file.attribution, from_dict.attribution) and not from_file.extras


def test_fixed_rule_equals_the_naive_first_iteration(tiny64, images64):
    x = images64[:1]
    rules = fit_rules(tiny64, x, iterations=1, reference=True, keep_activation_mask=False)  # the paper's rule
    rules["weights"] = [torch.full_like(w, 0.7) for w in rules["weights"]]
    fixed = pyexplain.explain(tiny64, x, "lpr", rules=rules)
    naive, _ = lpr_naive(tiny64, x, int(fixed.targets[0]), iterations=1, init=0.7)
    torch.testing.assert_close(fixed.attribution, naive, rtol=1e-9, atol=1e-12)


def test_rules_errors(tmp_path, images64):
    rules = fit_rules(tiny(), images64.float(), iterations=1)
    with pytest.raises(PyExplainError, match="do not match the model"):
        pyexplain.explain(other_tiny(), images64.float(), "lpr", rules=rules)
    damaged = dict(rules, weights=rules["weights"][:1])
    with pytest.raises(PyExplainError, match="damaged"):
        pyexplain.explain(tiny(), images64.float(), "lpr", rules=damaged)
    state = tmp_path / "state.pt"
    torch.save(tiny().state_dict(), state)
    with pytest.raises(PyExplainError, match="not a pyexplain LPR rules file"):
        load_rules(state)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(PyExplainError, match="cannot read rules file"):
        load_rules(junk)


def test_cli_fit_rules_then_explain_with_rules(tmp_path, capsys):
    common = ["--model", "lpr_models:tiny", "--input-size", "16", "--device", "cpu"]
    rules_path = tmp_path / "rules.pt"
    code, _, err = run_cli(["fit-rules", "builtin:chelsea", "builtin:coffee", "--out", rules_path, "--iterations", "3", *common], capsys)
    assert code == 0 and "3 channel rules for lpr_models:tiny over 2 images" in err
    out = tmp_path / "out"
    code, _, _ = run_cli(["explain", "builtin:astronaut", "--method", "lpr", "--rules", rules_path, "--out", out, *common], capsys)
    assert code == 0
    model, preprocess = pyexplain.load_model("lpr_models:tiny", input_size=16)
    from pyexplain.io import builtin_image

    expected = pyexplain.explain(model, preprocess(builtin_image("astronaut")), "lpr", rules=str(rules_path)).map[0]
    np.testing.assert_allclose(np.load(out / "astronaut_lpr.npy"), expected.numpy(), rtol=1e-5, atol=1e-7)
    for args, message in [
        (["--method", "gradxinput", "--rules", rules_path], "--rules applies to --method lpr"),
        (["--method", "lpr", "--rules", rules_path, "--model", "lpr_models:other_tiny"], "was fitted on model"),
        (["--method", "lpr", "--rules", tmp_path / "missing.pt"], "does not exist"),
    ]:
        code, _, err = run_cli(["explain", "builtin:astronaut", "--out", tmp_path / "bad", "--input-size", "16", *args], capsys)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "bad").exists()


def test_amortized_rules_beat_gradxinput_on_held_out_synthetic_images():
    """Channel rules fitted on 32 training images of synthetic_resnet explain these 16 test images with a
    lower MoRF AUC than Grad×Input: 0.1102 vs 0.1169 with the shipped weights, the same to 2e-5 in
    float64, so the verdict does not hang on rounding. (Before the weights shipped, the model was trained
    on first use and followed the CPU's rounding: 0.069 vs 0.098 on an Intel Xeon.)
    A regression check of the fit on a cheap case, not a general claim: fitted over 1024 images and
    judged on 256, the channel rules are level with Grad×Input (0.082 vs 0.080; benchmarks/REPORT.md,
    amortized rules on synthetic_resnet)."""
    from pyexplain.data.synthetic import make_synthetic
    from pyexplain.data.synthetic_models import TEST_SEED_OFFSET, TRAIN_SEED_OFFSET
    from pyexplain.metrics.pixel_flipping import morf

    model, _ = pyexplain.load_model("synthetic_resnet")
    train, test = make_synthetic(32, TRAIN_SEED_OFFSET), make_synthetic(16, TEST_SEED_OFFSET)
    rules = fit_rules(model, train.x, iterations=30, batch_size=32)
    assert rules["loss_history"][-1] < rules["loss_history"][0]
    targets = test.y.tolist()
    amortized = pyexplain.explain(model, test.x, "lpr", targets, rules=rules).attribution
    gradxinput = pyexplain.explain(model, test.x, "gradxinput", targets).attribution
    assert morf(model, test.x, amortized, test.y).auc.mean() < morf(model, test.x, gradxinput, test.y).auc.mean()


def test_fit_resumed_equals_one_fit_and_validates(tiny64, images64):
    """A fit of 2 + 2 steps (saved, loaded, resumed with its Adam state) equals one of 4 steps; the
    held-out MoRF recorded while fitting equals MoRF computed afterwards with the final rules."""
    from pyexplain.metrics.pixel_flipping import morf

    x, held_out = images64[:2], images64[2:]
    whole = fit_rules(tiny64, x, iterations=4, init=1.0, pass_saturated=True)
    first = fit_rules(tiny64, x, iterations=2, init=1.0, pass_saturated=True)
    resumed = fit_rules(tiny64, x, iterations=2, resume=first, validation=held_out, validate_every=1)
    assert resumed["pass_saturated"] is True  # the settings come from the resumed file
    for a, b in zip(whole["weights"], resumed["weights"]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(whole["loss_history"], resumed["loss_history"], rtol=1e-12, atol=1e-12)
    assert resumed["iterations"] == 4 and resumed["val_morf"][:, 0].tolist() == [3.0, 4.0]
    final = pyexplain.explain(tiny64, held_out, "lpr", rules=resumed).attribution
    assert float(resumed["val_morf"][-1, 1]) == pytest.approx(float(morf(tiny64, held_out, final).auc.mean()), abs=1e-9)
    stale = {k: v for k, v in first.items() if k != "adam"}
    with pytest.raises(PyExplainError, match="no optimizer state"):
        fit_rules(tiny64, x, iterations=1, resume=stale)
    with pytest.raises(PyExplainError, match="do not match the model"):
        fit_rules(other_tiny().double(), x, iterations=1, resume=first)


def test_cli_fit_rules_validates_and_resumes(tmp_path, capsys):
    common = ["--model", "lpr_models:tiny", "--input-size", "16", "--device", "cpu"]
    path = tmp_path / "rules.pt"
    code, _, err = run_cli(["fit-rules", "builtin:chelsea", "--out", path, "--iterations", "2", "--val", "builtin:coffee",
                            "--val-every", "1", *common], capsys)
    assert code == 0 and "2 iterations" in err and "held-out MoRF AUC" in err, err
    code, _, err = run_cli(["fit-rules", "builtin:chelsea", "--out", path, "--iterations", "1", "--resume", path, *common], capsys)
    assert code == 0 and "3 iterations" in err, err
    assert load_rules(path)["loss_history"].shape == (3,)
    code, _, err = run_cli(["fit-rules", "builtin:chelsea", "--out", tmp_path / "b.pt", "--resume", path, "-O",
                            "reference=True", *common], capsys)
    assert code == 2 and err.startswith("error: --resume takes the rule settings") and err.count("\n") == 1
