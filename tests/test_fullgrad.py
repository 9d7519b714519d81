"""FullGrad: completeness of the raw decomposition, bias terms against parameter gradients, the
paper's aggregation, batching."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyexplain
from pyexplain.core.targets import Targets
from pyexplain.errors import PyExplainError
from pyexplain.methods.fullgrad import fullgrad_decompose

from _dmbp_nets import float64_copy, small_input, small_net, torchvision_model


def _check_completeness(model: nn.Module, x: torch.Tensor) -> None:
    targets = Targets(None)
    decomposition = fullgrad_decompose(model, x, targets)
    with torch.no_grad():
        logits = model(x).gather(1, targets.indices[:, None])[:, 0]
    torch.testing.assert_close(decomposition.total(), logits, rtol=1e-10, atol=1e-10)


def test_completeness_small_net():
    _check_completeness(small_net(), small_input(3))


@pytest.mark.slow
def test_completeness_efficientnet_lite0():
    model, _ = pyexplain.load_model("efficientnet_lite0")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _check_completeness(float64_copy(model), x)


@pytest.mark.slow
def test_completeness_resnet18():
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _check_completeness(torchvision_model("resnet18", torch.float64), x)


def test_bias_terms_equal_parameter_gradients_times_biases():
    """Σ over positions of each conv/linear/BN term = ∂F/∂b ⊙ b, with ∂F/∂b from autograd on the
    parameters (BN: ∂F/∂β times the effective bias β − μγ/√(var+ε))."""
    model, x = small_net(), small_input(1)
    targets = Targets(None)
    decomposition = fullgrad_decompose(model, x, targets)
    t = int(targets.indices[0])
    bn_bias = lambda bn: bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)  # noqa: E731
    expected = [("conv", model.conv1.bias, model.conv1.bias), ("batchnorm", model.bn1.bias, bn_bias(model.bn1)),
                ("conv", model.depthwise.bias, model.depthwise.bias), ("batchnorm", model.bn2.bias, bn_bias(model.bn2)),
                ("conv", model.project.bias, model.project.bias), ("linear", model.fc1.bias, model.fc1.bias),
                ("linear", model.fc2.bias, model.fc2.bias)]
    params = [p for _, p, _ in expected]
    grads = torch.autograd.grad(model(x)[0, t], params)
    terms = [term for term in decomposition.bias_terms if term.kind != "saturation"]
    assert [term.kind for term in terms] == [kind for kind, _, _ in expected]
    for term, grad, (_, _, bias) in zip(terms, grads, expected):
        per_channel = term.value[0].reshape(term.value.shape[1], -1).sum(1)
        torch.testing.assert_close(per_channel, grad * bias.detach(), rtol=1e-10, atol=1e-12)
    saturation = [term for term in decomposition.bias_terms if term.kind == "saturation"]
    assert len(saturation) == 1 and saturation[0].value.abs().sum() > 0  # ReLU6's saturated constant


def _reference_map(decomposition, x: torch.Tensor) -> torch.Tensor:
    """The aggregation as written in the paper's reference code: per-image |·| and min-max scaling,
    channel sums, each channel upsampled before summing."""
    def post(t):
        t = t.abs()
        t = t - t.flatten(1).min(1).values.view(-1, *[1] * (t.ndim - 1))
        return t / (t.flatten(1).max(1).values.view(-1, *[1] * (t.ndim - 1)) + 1e-6)

    cam = post(decomposition.input_term).sum(1, keepdim=True)
    for term in decomposition.bias_terms:
        if term.value.ndim == 4:
            up = F.interpolate(post(term.value), size=x.shape[-2:], mode="bilinear", align_corners=True)
            cam = cam + up.sum(1, keepdim=True)
    return cam[:, 0]


def test_map_follows_the_reference_aggregation():
    model, x = small_net(), small_input(2)
    e = pyexplain.explain(model, x, "fullgrad")
    decomposition = fullgrad_decompose(model, x, Targets(e.targets))
    torch.testing.assert_close(e.map, _reference_map(decomposition, x), rtol=1e-10, atol=1e-10)
    assert (e.attribution >= 0).all()
    torch.testing.assert_close(e.attribution[:, 0], e.attribution[:, 2])  # spread evenly over channels


def test_batch_equals_single_runs():
    model, x = small_net(), small_input(3)
    batch = pyexplain.explain(model, x, "fullgrad", target=[1, 0, 4])
    for i, t in enumerate([1, 0, 4]):
        single = pyexplain.explain(model, x[i:i + 1], "fullgrad", target=t)
        torch.testing.assert_close(batch.attribution[i:i + 1], single.attribution, rtol=1e-10, atol=1e-12)


def test_non_logit_score_is_refused_and_model_untouched():
    model = small_net()
    with pytest.raises(PyExplainError, match="logit"):
        pyexplain.explain(model, small_input(), "fullgrad", score="probability")
    pyexplain.explain(model, small_input(), "fullgrad")
    assert all(p.grad is None for p in model.parameters())


class InplaceNet(nn.Module):
    """In-place activations over recorded outputs: conv → BN → ReLU6(inplace) → conv (bias) → BN,
    ``+=`` shortcut, ReLU(inplace); a hardtanh(−1, 1) (saturating at both bounds) → pool → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu6 = nn.ReLU6(inplace=True)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(6, 4, 1)
        self.clip = nn.Hardtanh(-1.0, 1.0)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu6(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(h))
        out += h
        out = self.relu(out)
        out = self.clip(self.conv3(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _inplace_net() -> InplaceNet:
    from model_support import randomize_batchnorm

    torch.manual_seed(0)
    net = InplaceNet()
    randomize_batchnorm((net.bn1, net.bn2), mean=(-1, 1), var=(0.5, 2), weight=(0.5, 2), bias=(-0.5, 0.5))
    with torch.no_grad():
        net.bn1.weight.mul_(6)  # part of the ReLU6 inputs above 6
        net.conv3.weight.mul_(4)  # part of the hardtanh inputs beyond ±1
    return net.double().eval()


def test_inplace_activations_keep_the_recorded_gradients():
    """With in-place ReLU6/ReLU and an in-place add over batch-norm outputs, the bias terms still equal
    ∂F/∂b ⊙ b from autograd on the parameters, the decomposition still completes the logit, both
    bounds of hardtanh(−1, 1) saturate, and the map follows the reference aggregation."""
    model, x = _inplace_net(), small_input(2)
    targets = Targets(None)
    decomposition = fullgrad_decompose(model, x, targets)
    with torch.no_grad():
        logits = model(x).gather(1, targets.indices[:, None])[:, 0]
    torch.testing.assert_close(decomposition.total(), logits, rtol=1e-10, atol=1e-10)
    terms = {(term.kind, term.module_name): term.value for term in decomposition.bias_terms}
    assert set(terms) == {("batchnorm", "bn1"), ("saturation", "relu6"), ("conv", "conv2"), ("batchnorm", "bn2"),
                          ("conv", "conv3"), ("saturation", "clip"), ("linear", "fc")}
    bn = lambda m: m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)  # noqa: E731
    checks = [(("batchnorm", "bn1"), model.bn1.bias, bn(model.bn1)), (("conv", "conv2"), model.conv2.bias, model.conv2.bias),
              (("batchnorm", "bn2"), model.bn2.bias, bn(model.bn2)), (("conv", "conv3"), model.conv3.bias, model.conv3.bias)]
    for i in range(2):
        t = int(targets.indices[i])
        grads = torch.autograd.grad(model(x[i:i + 1])[0, t], [p for _, p, _ in checks])
        for (key, _, bias), grad in zip(checks, grads):
            per_channel = terms[key][i].reshape(terms[key].shape[1], -1).sum(1)
            torch.testing.assert_close(per_channel, grad * bias.detach(), rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        h = F.relu6(model.bn1(model.conv1(x)))
        pre = model.conv3(F.relu(model.bn2(model.conv2(h)) + h))
    clip = terms[("saturation", "clip")]  # nonzero exactly where saturated (at both bounds)
    assert (clip[pre < -1] != 0).any() and (clip[pre > 1] != 0).any() and (clip[pre.abs() < 1] == 0).all()
    assert (terms[("saturation", "relu6")][h == 6] != 0).any()
    e = pyexplain.explain(model, x, "fullgrad", target=targets.indices)
    torch.testing.assert_close(e.map, _reference_map(decomposition, x), rtol=1e-10, atol=1e-10)


def test_map_in_float32_matches_the_reference_aggregation():
    """The reduced map (ψ's extremes from per-channel extremes, weighted channel sums) against the
    term-by-term formula, in float32: equal up to rounding."""
    model, x = small_net(dtype=torch.float32), small_input(3, dtype=torch.float32)
    e = pyexplain.explain(model, x, "fullgrad")
    decomposition = fullgrad_decompose(model, x, Targets(e.targets))
    torch.testing.assert_close(e.map, _reference_map(decomposition, x), rtol=1e-5, atol=1e-5)


def test_batchnorm_bias_follows_changed_statistics():
    """The effective BN bias is remembered between calls but recomputed when a statistic or parameter
    changes in place or is replaced: the BN terms keep matching ∂F/∂β ⊙ (β − μγ/√(var+ε))."""
    model, x = small_net(), small_input(1)

    def check() -> None:
        targets = Targets(None)
        term = [t for t in fullgrad_decompose(model, x, targets).bias_terms if t.module_name == "bn1"][0].value
        bn = model.bn1
        (grad,) = torch.autograd.grad(model(x)[0, int(targets.indices[0])], bn.bias)
        expected = grad * (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        torch.testing.assert_close(term[0].reshape(term.shape[1], -1).sum(1), expected, rtol=1e-10, atol=1e-12)

    check()
    with torch.no_grad():
        model.bn1.running_mean.add_(0.5)  # in place: a new version
    check()
    model.bn1.running_var.data = model.bn1.running_var.data * 2  # new storage, same tensor
    check()
    model.bn1.weight = nn.Parameter(model.bn1.weight.detach() * -1)  # a new tensor
    check()
