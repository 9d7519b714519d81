"""ε-LRP against Zennit's and Captum's epsilon rules on the same model and input (float64)."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from captum.attr import LRP
from captum.attr._utils.lrp_rules import EpsilonRule
from torch import nn
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.torchvision import ResNetCanonizer

import pyexplain
from pyexplain.core.canonize import fold_batchnorm
from pyexplain.errors import PyExplainError
from pyexplain.models import load_model

from baseline_oracles import (SmallVGG, captum_lrp_resnet, randomize_batchnorm, sums_as_zennit_modules,
                              zennit_epsilon_lrp)

EPS = 1e-6


def _exact_bn_merge(model: nn.Module) -> nn.Module:
    """Zennit's BN merge leaves the BN computing x/sqrt(1 + eps); with eps = 0 that is exactly x."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
    return model


def _close(ours, theirs, rtol=1e-7):
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=rtol * 1e-3 * theirs.abs().max().item())


@pytest.mark.parametrize("eps", [EPS, 0.1])
def test_vgg_style_matches_zennit_and_captum(eps):
    # With a tiny ε, ε-LRP on a ReLU net is close to Grad×Input; ε = 0.1 makes the rule matter.
    torch.manual_seed(0)
    model = _exact_bn_merge(randomize_batchnorm(SmallVGG()).double())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = pyexplain.explain(model, x, "lrp_epsilon", target=[3, 5], epsilon=eps).attribution
    _close(ours, zennit_epsilon_lrp(copy.deepcopy(model), x, [3, 5], eps, [SequentialMergeBatchNorm()]))
    # Captum applies the ε-rule to BatchNorm as its own layer: the same as folding up to ε.
    captum_model = copy.deepcopy(model)
    for m in captum_model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.AdaptiveAvgPool2d)):
            m.rule = EpsilonRule(eps)
        elif isinstance(m, nn.MaxPool2d):
            m.rule = EpsilonRule(1e-30)
    unfolded = pyexplain.explain(model, x, "lrp_epsilon", target=[3, 5], epsilon=eps, fold_batchnorm=False).attribution
    _close(unfolded, LRP(captum_model).attribute(x, target=[3, 5]).detach())


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return _exact_bn_merge(randomize_batchnorm(torchvision.models.resnet18(num_classes=10)).double())


def test_resnet18_matches_zennit_resnet_canonizer(resnet):
    # BN folded, residual sums split in proportion (Zennit: Sum module with its Norm rule).
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ours = pyexplain.explain(resnet, x, "lrp_epsilon", target=[1, 8], epsilon=EPS).attribution
    _close(ours, zennit_epsilon_lrp(copy.deepcopy(resnet), x, [1, 8], EPS, [ResNetCanonizer()]))


def test_resnet18_matches_captum_with_addition_modules(resnet):
    # Captum splits a sum proportionally only when it is written as its Addition_Module, needs
    # one module per ReLU call, and applies ε to BatchNorm separately (fold_batchnorm=False here).
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ours = pyexplain.explain(resnet, x, "lrp_epsilon", target=4, epsilon=EPS, fold_batchnorm=False).attribution
    theirs = LRP(captum_lrp_resnet(resnet, x, EPS)).attribute(x, target=4).detach()
    _close(ours, theirs)


def test_efficientnet_lite0_matches_zennit():
    # Real weights: ReLU6 reused per block (pass-through), depthwise convs, residual adds, BN folded
    # (float32: both sides fold the same way, so no BN-eps adjustment is needed).
    model, _ = load_model("efficientnet_lite0")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    e = pyexplain.explain(model, x, "lrp_epsilon", epsilon=EPS)
    zennit_model = sums_as_zennit_modules(fold_batchnorm(model))
    _close(e.attribution, zennit_epsilon_lrp(zennit_model, x, e.targets.tolist(), EPS, []), rtol=1e-5)


def test_fold_cache_follows_weight_changes():
    model = randomize_batchnorm(SmallVGG())
    x = torch.randn(1, 3, 16, 16)
    first = pyexplain.explain(model, x, "lrp_epsilon", target=0).attribution
    with torch.no_grad():
        model.features[0].weight.mul_(2)
        model.features[1].running_mean.add_(1)
    second = pyexplain.explain(model, x, "lrp_epsilon", target=0).attribution
    fresh = pyexplain.explain(copy.deepcopy(model), x, "lrp_epsilon", target=0).attribution
    torch.testing.assert_close(second, fresh)
    assert not torch.allclose(first, second)


def _scale_weight_through_data(model):
    model.features[0].weight.data.mul_(2)  # no version-counter bump


def _bn_eps(model):
    model.features[1].eps = 3.0


def _flip_through_data(model):
    model.features[0].weight.data.copy_(model.features[0].weight.data.flip(0))  # same sum, no version bump


def _conv_padding(model):
    model.features[0].padding = (0, 0)  # a folded convolution's setting


def _relu_to_identity(model):
    model.features[2] = nn.Identity()


def _maxpool_to_avgpool(model):
    model.features[3] = nn.AvgPool2d(2)


def _load_other_state(model):
    torch.manual_seed(1)
    model.load_state_dict(randomize_batchnorm(SmallVGG()).double().state_dict())


@pytest.mark.parametrize("edit", [_scale_weight_through_data, _flip_through_data, _bn_eps, _conv_padding,
                                  _relu_to_identity, _maxpool_to_avgpool, _load_other_state])
def test_lrp_after_a_model_edit_equals_a_fresh_models(edit):
    torch.manual_seed(0)
    model = randomize_batchnorm(SmallVGG()).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    before = pyexplain.explain(model, x, "lrp_epsilon", target=[0, 1]).attribution
    edit(model)
    after = pyexplain.explain(model, x, "lrp_epsilon", target=[0, 1]).attribution
    fresh = pyexplain.explain(copy.deepcopy(model), x, "lrp_epsilon", target=[0, 1]).attribution
    torch.testing.assert_close(after, fresh, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(before, after)


class _Switchable(nn.Module):
    """A model whose forward takes a branch on a plain attribute: a trace records one branch only."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)
        self.rectify = True

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.fc((y.relu() if self.rectify else y).mean((2, 3)))


def test_fold_is_traced_once_per_model_structure(monkeypatch):
    model = randomize_batchnorm(_Switchable()).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    traces = []
    real_trace = torch.fx.symbolic_trace
    monkeypatch.setattr(torch.fx, "symbolic_trace", lambda m: traces.append(m) or real_trace(m))
    first = pyexplain.explain(model, x, "lrp_epsilon", target=0).attribution
    torch.testing.assert_close(pyexplain.explain(model, x, "lrp_epsilon", target=0).attribution, first,
                               rtol=0, atol=0)
    assert len(traces) == 1  # the second call reused the trace
    model.rectify = False  # the branch the trace recorded is no longer the model's
    switched = pyexplain.explain(model, x, "lrp_epsilon", target=0).attribution
    assert len(traces) == 2
    fresh = pyexplain.explain(copy.deepcopy(model), x, "lrp_epsilon", target=0).attribution
    torch.testing.assert_close(switched, fresh, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(switched, first)


def test_kept_fold_does_not_keep_the_model_alive():
    import gc
    import weakref

    model = randomize_batchnorm(_Switchable()).eval()
    pyexplain.explain(model, torch.randn(1, 3, 8, 8), "lrp_epsilon", target=0)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


def test_untraceable_model_needs_fold_batchnorm_false():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)

        def forward(self, x):
            y = self.bn(self.conv(x))
            if y.sum() > 0:  # data-dependent control flow: not traceable by torch.fx
                y = y.relu()
            return self.fc(y.mean((2, 3)))

    model = randomize_batchnorm(Branchy())
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(PyExplainError, match="fold_batchnorm=False"):
        pyexplain.explain(model, x, "lrp_epsilon")
    assert pyexplain.explain(model, x, "lrp_epsilon", fold_batchnorm=False).attribution.shape == x.shape


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    return randomize_batchnorm(torchvision.models.resnet50(num_classes=10)).double().eval()


@pytest.mark.slow
def test_resnet50_matches_zennit_when_its_batchnorm_merge_is_exact(resnet50):
    # Bottlenecks with downsample branches: BN folded into every convolution (the downsample's too),
    # both summands of each residual add split in proportion. Agreement to float64 rounding.
    model = _exact_bn_merge(copy.deepcopy(resnet50))
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ours = pyexplain.explain(model, x, "lrp_epsilon", target=[1, 8], epsilon=EPS).attribution
    _close(ours, zennit_epsilon_lrp(copy.deepcopy(model), x, [1, 8], EPS, [ResNetCanonizer()]))


@pytest.mark.slow
def test_zennit_batchnorm_merge_keeps_a_scale_on_resnet50(resnet50):
    """The whole ε-LRP difference to Zennit on ResNet-50 with BN ε ≠ 0: Zennit's merge resets each
    BatchNorm's statistics and affine parameters but keeps its ε, so every merged BN still divides
    by √(1+ε) (relevance passes through it). Zennit's canonized network is the model with each BN's
    γ and β scaled by 1/√(1+ε), not the model; pyexplain folds exactly."""
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    canonized = copy.deepcopy(resnet50)
    handles = ResNetCanonizer().apply(canonized)
    with torch.no_grad():
        zennit_logits = canonized(x)
    for handle in handles:
        handle.remove()
    scaled = copy.deepcopy(resnet50)
    with torch.no_grad():
        for bn in scaled.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.mul_((1 + bn.eps) ** -0.5)
                bn.bias.mul_((1 + bn.eps) ** -0.5)
        torch.testing.assert_close(zennit_logits, scaled(x), rtol=1e-12, atol=1e-12)
        assert not torch.allclose(zennit_logits, resnet50(x), rtol=1e-8, atol=0)
    ours = pyexplain.explain(resnet50, x, "lrp_epsilon", target=[1, 8], epsilon=EPS).attribution
    theirs = zennit_epsilon_lrp(copy.deepcopy(resnet50), x, [1, 8], EPS, [ResNetCanonizer()])
    assert not torch.allclose(ours, theirs, rtol=1e-7, atol=1e-10 * theirs.abs().max().item())
