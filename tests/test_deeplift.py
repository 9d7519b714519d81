"""DeepLIFT (rescale) against Captum and against its own summation-to-delta identity."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from captum.attr import DeepLift

import pyexplain
from pyexplain.errors import PyExplainError
from pyexplain.models import load_model

from baseline_oracles import SmallVGG, distinct_activations, randomize_batchnorm


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return randomize_batchnorm(torchvision.models.resnet18(num_classes=10))


def _captum(model, x, targets, reference):
    captum_model = distinct_activations(model, x)
    return DeepLift(captum_model).attribute(x, target=targets, baselines=reference).detach()


def test_matches_captum_on_resnet18_with_gradient_maxpool(resnet):
    # Captum 0.9 passes the plain gradient through max-pooling (measured: it matches
    # maxpool="gradient" to float precision), so that is where the two coincide exactly. In float64:
    # in float32 the two summation orders differ by ~2e-6 of the largest attribution on some CPUs.
    model = copy.deepcopy(resnet).double()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = pyexplain.explain(model, x, "deeplift", target=[1, 7], maxpool="gradient").attribution
    theirs = _captum(model, x, [1, 7], torch.zeros_like(x))
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12 * theirs.abs().max().item())


def test_matches_captum_on_efficientnet_lite0():
    # Real weights; ReLU6 (reused per block) and residual adds. Captum sees ReLU6 as
    # relu(x) - relu(x - 6), whose two rescale multipliers sum to ReLU6's.
    model, _ = load_model("efficientnet_lite0")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    reference = torch.full_like(x, 0.3)
    e = pyexplain.explain(model, x, "deeplift", reference=0.3)
    theirs = _captum(model, x, e.targets, reference)
    torch.testing.assert_close(e.attribution, theirs, rtol=1e-4, atol=1e-5 * theirs.abs().max().item())


@pytest.mark.parametrize("net", ["resnet18", "vgg"])
def test_summation_to_delta_with_rescale_maxpool(net, resnet):
    # ResNet-18's 3x3/2 max-pool overlaps; a non-constant reference makes the reference win windows.
    model = copy.deepcopy(resnet if net == "resnet18" else randomize_batchnorm(SmallVGG())).double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 48, 48, generator=g, dtype=torch.float64)
    reference = torch.randn(1, 3, 48, 48, generator=g, dtype=torch.float64)
    e = pyexplain.explain(model, x, "deeplift", target=[2, 4], reference=reference)
    with torch.no_grad():
        delta = model(x)[[0, 1], [2, 4]] - model(reference.expand_as(x))[[0, 1], [2, 4]]
    torch.testing.assert_close(e.attribution.flatten(1).sum(1), delta, rtol=1e-9, atol=1e-12)
    gradient_mode = pyexplain.explain(model, x, "deeplift", target=[2, 4], reference=reference, maxpool="gradient")
    assert not torch.allclose(gradient_mode.attribution.flatten(1).sum(1), delta, rtol=1e-6)


def test_bad_options():
    model = SmallVGG().eval()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(PyExplainError, match="reference"):
        pyexplain.explain(model, x, "deeplift", reference=torch.zeros(2, 3, 16, 16))
    with pytest.raises(PyExplainError, match="maxpool"):
        pyexplain.explain(model, x, "deeplift", maxpool="max")


def _edit_data(model):
    model.features[4].weight.data = model.features[4].weight.data * 1.5


def _write_into_data(model):
    model.features[4].weight.data.mul_(1.5)  # bypasses autograd's version counter


def _edit_in_place(model):
    with torch.no_grad():
        model.features[1].running_mean.add_(0.5)


def _load_state_dict(model):
    torch.manual_seed(5)
    model.load_state_dict(randomize_batchnorm(SmallVGG(), seed=5).double().state_dict())


def _flip_through_data(model):
    model.features[4].weight.data.copy_(model.features[4].weight.data.flip(0))  # same sum, no version bump


def _bn_eps(model):
    model.features[1].eps = 3.0  # a setting, not a tensor


def _swap_module(model):
    torch.manual_seed(6)
    model.features[7] = torch.nn.Conv2d(16, 16, 3, padding=1).double()


@pytest.mark.parametrize("edit", [_edit_data, _write_into_data, _flip_through_data, _edit_in_place, _bn_eps,
                                  _load_state_dict, _swap_module])
def test_cached_reference_follows_model_changes(edit):
    """The constant reference's pass is cached per model; after each kind of change the result equals
    a fresh copy's (which has no cache entry), and differs from the result before the change."""
    torch.manual_seed(4)
    model = randomize_batchnorm(SmallVGG()).double().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    before = pyexplain.explain(model, x, "deeplift", target=[1, 2], reference=0.2).attribution
    torch.testing.assert_close(pyexplain.explain(model, x, "deeplift", target=[1, 2], reference=0.2).attribution,
                               before, rtol=0, atol=0)  # served from the cache: the same numbers
    edit(model)
    after = pyexplain.explain(model, x, "deeplift", target=[1, 2], reference=0.2).attribution
    fresh = pyexplain.explain(copy.deepcopy(model), x, "deeplift", target=[1, 2], reference=0.2).attribution
    torch.testing.assert_close(after, fresh, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(after, before, rtol=1e-6)
