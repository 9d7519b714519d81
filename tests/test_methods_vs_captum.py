"""Each foundation method agrees with Captum's implementation on the same model and input:
EfficientNet-Lite0 with its real weights on a real photo, and ResNet-18 (seeded random weights).

Captum modifies the backward of ``nn.ReLU`` modules only; EfficientNet-Lite0 uses ``nn.ReLU6``.
For the modified-backward methods the oracle model therefore swaps each ReLU6 for an ``nn.ReLU``
subclass that computes the same clamp(0, 6), so Captum applies its rule there too.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from captum.attr import (
    GuidedBackprop, GuidedGradCam, Deconvolution, InputXGradient, IntegratedGradients, LayerAttribution,
    LayerGradCam, NoiseTunnel, Saliency,
)
from torch import nn

import pyexplain
from pyexplain.core.layers import get_layer


class _ReLU6AsReLU(nn.ReLU):
    def forward(self, x):
        return F.hardtanh(x, 0.0, 6.0)


def captum_compatible(model: nn.Module) -> nn.Module:
    """A copy with ReLU6 as an nn.ReLU subclass and in-place ReLUs made out-of-place."""
    model = copy.deepcopy(model)
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, _ReLU6AsReLU())
            elif isinstance(child, nn.ReLU):
                child.inplace = False
    return model


def assert_agrees(ours: torch.Tensor, theirs: torch.Tensor, rel: float = 1e-4) -> None:
    scale = theirs.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=rel * 10, atol=rel * scale)


@pytest.fixture(scope="module", params=["efficientnet_lite0", "resnet18"])
def case(request, lite0, chelsea, resnet18):
    if request.param == "efficientnet_lite0":
        return lite0[0], chelsea, 285, "_head_act"
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    return resnet18, x, 7, "layer4"


def test_saliency(case):
    model, x, t, _ = case
    ours = pyexplain.explain(model, x, "saliency", target=t).attribution
    assert_agrees(ours, Saliency(model).attribute(x, target=t, abs=True))


def test_gradxinput(case):
    model, x, t, _ = case
    ours = pyexplain.explain(model, x, "gradxinput", target=t).attribution
    assert_agrees(ours, InputXGradient(model).attribute(x, target=t))


def test_integrated_gradients(case):
    model, x, t, _ = case
    ours = pyexplain.explain(model, x, "integrated_gradients", target=t, steps=20).attribution
    theirs = IntegratedGradients(model).attribute(x, target=t, n_steps=20, method="gausslegendre")
    assert_agrees(ours, theirs, rel=1e-3)


@pytest.mark.parametrize("method,nt_type", [("smoothgrad", "smoothgrad"), ("smoothgrad_sq", "smoothgrad_sq")])
def test_smoothgrad_family(case, method, nt_type):
    model, x, t, _ = case
    ours = pyexplain.explain(model, x, method, target=t, samples=8, seed=5).attribution
    torch.manual_seed(5)  # our seeded generator draws the same normal stream as Captum's global one
    sigma = 0.15 * (x.max() - x.min()).item()
    theirs = NoiseTunnel(Saliency(model)).attribute(
        x, target=t, nt_type=nt_type, nt_samples=8, stdevs=sigma, abs=False)
    assert_agrees(ours, theirs, rel=1e-3)


@pytest.mark.parametrize("method,oracle", [("guided_backprop", GuidedBackprop), ("deconvnet", Deconvolution)])
def test_modified_relu_backward(case, method, oracle):
    model, x, t, _ = case
    ours = pyexplain.explain(model, x, method, target=t).attribution
    assert_agrees(ours, oracle(captum_compatible(model)).attribute(x, target=t))


def test_gradcam(case):
    model, x, t, layer = case
    result = pyexplain.explain(model, x, "gradcam", target=t, layer=layer)
    cam = LayerGradCam(model, get_layer(model, layer)).attribute(x, target=t, relu_attributions=True)
    theirs = LayerAttribution.interpolate(cam, x.shape[-2:], "bilinear")[:, 0]
    assert_agrees(result.map, theirs)


def test_gradcam_default_layer_is_the_last_spatial_one(case):
    model, x, t, layer = case
    default = pyexplain.explain(model, x, "gradcam", target=t).attribution
    named = pyexplain.explain(model, x, "gradcam", target=t, layer=layer).attribution
    torch.testing.assert_close(default, named)


def test_guided_gradcam(case):
    model, x, t, layer = case
    ours = pyexplain.explain(model, x, "guided_gradcam", target=t, layer=layer).attribution
    oracle_model = captum_compatible(model)
    theirs = GuidedGradCam(oracle_model, get_layer(oracle_model, layer)).attribute(
        x, target=t, interpolate_mode="bilinear")
    assert_agrees(ours, theirs)
