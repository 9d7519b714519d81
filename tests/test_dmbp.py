"""DMBP: the gated forward against the paper's masked-backward + bias-gradient formulation
(benchmarks/dmbp_naive.py), completeness, batching, the loss on a real photo, errors, cleanliness."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import pyexplain
from pyexplain.io import open_image
from pyexplain.core.linearize import gated_forward
from pyexplain.core.targets import Targets
from pyexplain.errors import PyExplainError
from pyexplain.methods.dmbp import DMBPObjective, dmbp_loss, optimize

from _dmbp_nets import ROOT, load_naive, small_input, small_net, torchvision_model

naive = load_naive()


def _num(value) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _random_logits(objective: DMBPObjective, seed: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [(2 * torch.randn(shape, generator=generator, dtype=objective.x.dtype)).requires_grad_(True)
            for shape in objective.shapes]


def _check_against_masked_backward(model: nn.Module, x: torch.Tensor, tol: float) -> None:
    objective = DMBPObjective(model, x, Targets(None))
    t = int(objective.classes[0])
    logits = _random_logits(objective)
    y_pos, y_neg = objective.terms(logits)
    sigmas = [torch.sigmoid(s) for s in logits]
    (ref_pos, ref_gpos), (ref_neg, ref_gneg) = naive.masked_decompositions(
        model, x, t, [sigmas, [1 - s for s in sigmas]], create_graph=True)
    scale = _num(objective.y.abs()) + 1
    assert abs(_num(y_pos[0] - ref_pos)) < tol * scale, (_num(y_pos[0]), _num(ref_pos))
    assert abs(_num(y_neg[0] - ref_neg)) < tol * scale
    grad_pos, grad_neg = objective.input_gradients(logits)
    for ours, ref in ((grad_pos, ref_gpos.detach()), (grad_neg, ref_gneg.detach())):
        torch.testing.assert_close(ours, ref, rtol=tol, atol=tol * _num(ref.abs().max()))
    for variant in ("all", "pos_neg", "pos"):  # one backward vs the paper's double backward
        ours = torch.autograd.grad(dmbp_loss(objective.y, y_pos, y_neg, variant).sum(), logits, retain_graph=True)
        ref = torch.autograd.grad(dmbp_loss(objective.y, ref_pos, ref_neg, variant), logits, retain_graph=True)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol * _num(b.abs().max()))


def test_gated_forward_equals_masked_backward_with_bias_gradients():
    model, x = small_net(), small_input()
    state = DMBPObjective(model, x, Targets(None)).state
    assert len(state.pool_indices) == 2  # overlapping max-pool and adaptive max-pool are frozen
    saturated = [u for u in state.units if u.offset is not None]
    assert saturated and any(bool((u.offset != 0).any()) for u in saturated)  # ReLU6 saturates here
    assert {u.kind for u in state.units} == {"relu", "hardtanh", "leaky_relu"}
    _check_against_masked_backward(model, x, 1e-12)


class _PoolForms(nn.Module):
    """Every 2-D max-pool entry point the linearization intercepts, called functionally."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 9, 4)

    def forward(self, x):
        h = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        h, _ = nn.functional.max_pool2d(h, 3, stride=1, padding=1, return_indices=True)
        h = nn.functional.relu(self.conv2(h))
        h, _ = nn.functional.adaptive_max_pool2d(h, 3, return_indices=True)
        return self.fc(nn.functional.adaptive_max_pool2d(h, 3).flatten(1))


def test_every_max_pool_form_is_frozen():
    torch.manual_seed(0)
    model = _PoolForms().double().eval()
    x = small_input()
    assert len(DMBPObjective(model, x, Targets(None)).state.pool_indices) == 4
    _check_against_masked_backward(model, x, 1e-12)
    _sigma_one(model, x, 1e-13)


@pytest.mark.slow
def test_gated_forward_equals_masked_backward_on_resnet18():
    _check_against_masked_backward(torchvision_model("resnet18", torch.float64), small_input(dtype=torch.float64).repeat(1, 1, 3, 3), 1e-10)


def _sigma_one(model: nn.Module, x: torch.Tensor, tol: float, smooth: bool = False) -> None:
    objective = DMBPObjective(model, x, Targets(None), smooth=smooth)
    ones = [torch.ones(shape, dtype=x.dtype) for shape in objective.shapes]
    zeros = [torch.zeros(shape, dtype=x.dtype) for shape in objective.shapes]
    with torch.no_grad():
        logits = model(x)
        y_one = gated_forward(model, x, objective.state, ones).gather(1, objective.classes[:, None])[:, 0]
        y_zero = gated_forward(model, x, objective.state, zeros).gather(1, objective.classes[:, None])[:, 0]
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].bias[objective.classes]
    y = logits.gather(1, objective.classes[:, None])[:, 0] - head
    scale = y.abs().max() + 1
    assert (objective.y - y).abs().max() < tol * scale  # the part no mask reaches is the head's bias
    assert (y_one - objective.constant - y).abs().max() < tol * scale  # σ≡1 ⇒ y⁺ = y
    assert (y_zero - objective.constant).abs().max() == 0  # σ≡0 ⇒ y⁺ = 0


def test_sigma_one_gives_the_logit_small_net():
    _sigma_one(small_net(), small_input(3), 1e-13)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16"])
def test_sigma_one_gives_the_logit_torchvision(name):
    _sigma_one(torchvision_model(name), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), 1e-5)


@pytest.mark.slow
def test_sigma_one_gives_the_logit_efficientnet_lite0():
    model, _ = pyexplain.load_model("efficientnet_lite0")
    _sigma_one(model, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), 1e-5)


def test_decomposition_holds_at_every_iteration():
    """At every iteration: y⁺ + y⁻ + ỹ = y, with ỹ from the gradient differences ∇(F − F⁺ − F⁻) of
    masked backward passes and y = F_t(x) − b_head from the model's logits; y⁺, y⁻ and the loss
    equal the masked-backward values."""
    model, x = small_net(), small_input()
    objective = DMBPObjective(model, x, Targets(None))
    t = int(objective.classes[0])
    with torch.no_grad():
        y = model(x)[0, t] - model.fc2.bias[t]
    logits = objective.init_logits()
    steps = 0
    for step in optimize(objective, logits, iterations=8, lr=0.05, loss="all"):
        sigmas = [torch.sigmoid(s.detach()) for s in logits]
        (pos, _), (neg, _), (full, _) = naive.masked_decompositions(
            model, x, t, [sigmas, [1 - s for s in sigmas], None], create_graph=False)
        nuisance = full - pos - neg  # ∇ₓ(F − F⁺ − F⁻)·x + Σ_b ∇_b(F − F⁺ − F⁻)·b
        assert abs(_num(step.y_pos[0] - pos)) < 1e-12
        assert abs(_num(step.y_neg[0] - neg)) < 1e-12
        assert abs(_num(pos + neg + nuisance - y)) < 1e-12
        expected_loss = neg - pos + (y - pos - neg).abs()
        assert abs(_num(step.loss[0] - expected_loss)) < 1e-12
        steps += 1
    assert steps == 8


@pytest.mark.parametrize("loss", ["all", "pos"])
def test_optimization_matches_the_paper_formulation(loss):
    """Whole runs (RMSprop, maps, loss history) agree with the naive reference, image by image."""
    model, x = small_net(), small_input(2)
    e = pyexplain.explain(model, x, "dmbp", iterations=6, lr=0.05, loss=loss)
    positive, negative, history = naive.naive_dmbp(model, x, e.targets, iterations=6, lr=0.05, loss=loss)
    torch.testing.assert_close(e.extras["loss_history"], history, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(e.extras["positive"], positive, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(e.extras["negative"], negative, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(e.attribution, positive + negative, rtol=1e-9, atol=1e-10)


def test_batch_equals_single_runs():
    model, x = small_net(), small_input(3)
    targets = [0, 3, 1]
    batch = pyexplain.explain(model, x, "dmbp", target=targets, iterations=5)
    for i in range(3):
        single = pyexplain.explain(model, x[i:i + 1], "dmbp", target=targets[i], iterations=5)
        torch.testing.assert_close(batch.attribution[i:i + 1], single.attribution, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(batch.extras["loss_history"][i:i + 1], single.extras["loss_history"])
    split = pyexplain.explain(model, x, "dmbp", target=targets, iterations=5, batch_size=2)
    torch.testing.assert_close(split.attribution, batch.attribution, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_loss_falls_on_a_real_photo():
    model, preprocess = pyexplain.load_model("efficientnet_lite0")
    x = preprocess(open_image("builtin:chelsea"))
    e = pyexplain.explain(model, x, "dmbp", iterations=10)
    history = e.extras["loss_history"][0]
    assert int(e.targets[0]) == 285
    assert history.shape == (10,)
    assert history[-1] < history[0] - 0.25 * history[0].abs()
    assert bool((history[1:] <= history[:-1] + 1e-3 * history[0].abs()).all())  # no blow-up on the way
    assert e.extras["positive"].shape == e.extras["negative"].shape == x.shape
    assert e.extras["positive"].sum() > 0 > e.extras["negative"].sum()


def _smooth_net(activation: nn.Module, gate: bool = False) -> nn.Module:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.act = activation
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            h = self.act(self.conv(x))
            if gate:  # squeeze-excitation style sigmoid gate
                h = h * torch.sigmoid(h.mean((2, 3), keepdim=True))
            return self.fc(h.mean((2, 3)))

    torch.manual_seed(0)
    return Net().double().eval()


@pytest.mark.parametrize("activation", [nn.SiLU(), nn.GELU(), nn.Sigmoid()])
def test_non_piecewise_linear_model_is_refused(activation):
    with pytest.raises(PyExplainError, match="not piecewise linear.*linearize=True") as info:
        pyexplain.explain(_smooth_net(activation), small_input(), "dmbp", iterations=1)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("activation", [nn.SiLU(), nn.GELU(approximate="tanh")])
def test_linearize_option_is_exact_at_sigma_one(activation):
    model, x = _smooth_net(activation, gate=True), small_input(2)
    objective = DMBPObjective(model, x, Targets(None), smooth=True)
    assert [u.kind for u in objective.state.units] == [type(activation).__name__.lower(), "sigmoid"]
    _sigma_one(model, x, 1e-13, smooth=True)  # the frozen sigmoid gate takes no mask; the gated activation does
    e = pyexplain.explain(model, x, "dmbp", iterations=4, linearize=True)
    assert torch.isfinite(e.attribution).all()


@pytest.mark.parametrize("layer", [nn.LayerNorm([4, 10, 10]), nn.GroupNorm(2, 4), nn.Softmax(1)])
def test_data_dependent_layers_are_refused(layer):
    with pytest.raises(PyExplainError, match="does not support"):
        pyexplain.explain(_smooth_net(nn.Sequential(nn.ReLU(), layer)), small_input(), "dmbp", iterations=1)


@pytest.mark.parametrize("linearize", [False, True])
def test_elu_is_refused_even_with_linearize(linearize):
    with pytest.raises(PyExplainError, match="found elu at act, which linearize=True does not cover"):
        pyexplain.explain(_smooth_net(nn.ELU()), small_input(), "dmbp", iterations=1, linearize=linearize)


@pytest.mark.parametrize("options, message", [
    ({"loss": "both"}, "unknown dmbp loss"), ({"iterations": 0}, "at least 1"), ({"lr": 0.0}, "positive"),
    ({"score": "probability"}, "logit"),
])
def test_bad_options(options, message):
    with pytest.raises(PyExplainError, match=message):
        pyexplain.explain(small_net(), small_input(), "dmbp", **options)


def _global_hooks() -> tuple[int, ...]:
    m = nn.modules.module
    return tuple(len(d) for d in (m._global_forward_hooks, m._global_forward_pre_hooks, m._global_backward_hooks))


def test_model_and_hooks_unchanged():
    model = torchvision_model("resnet18")
    model.layer1.train()  # a mixed train/eval state must come back as it was
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = _global_hooks()
    pyexplain.explain(model, torch.randn(1, 3, 32, 32), "dmbp", iterations=2)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())
    assert _global_hooks() == hooks


@pytest.mark.slow
def test_cli_writes_positive_negative_and_combined_maps(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pyexplain", "explain", "builtin:chelsea", "--method", "dmbp", "-O", "iterations=2",
         "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"chelsea_dmbp{s}.{ext}" for s in ("", "_positive", "_negative") for ext in ("npy", "png"))
    combined, positive, negative = (np.load(tmp_path / f"chelsea_dmbp{s}.npy") for s in ("", "_positive", "_negative"))
    np.testing.assert_allclose(combined, positive + negative, rtol=1e-4, atol=1e-6)
