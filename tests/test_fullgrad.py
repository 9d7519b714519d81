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
