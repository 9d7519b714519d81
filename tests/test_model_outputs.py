"""Models returning tuples, dicts or objects with ``.logits`` are explained as the plain-tensor model."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import pyexplain
from pyexplain import PyExplainError


class Wrapped(nn.Module):
    """The same network, its logits returned in a container (``kind``)."""

    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x):
        logits = self.net(x)
        if self.kind == "tuple":
            return logits, x.mean()
        if self.kind == "dict":
            return {"logits": logits, "hidden": x.mean()}
        if self.kind == "object":
            return SimpleNamespace(logits=logits, loss=None)
        if self.kind == "nested":
            return {"out": {"scores": logits}}
        return logits


class Plain(nn.Module):
    """Plain wrapper (same layer names as :class:`Wrapped`)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5)).eval()
    with torch.no_grad():  # non-trivial statistics, so folding BatchNorm (LRP) matters
        net[1].running_mean.uniform_(-0.2, 0.2), net[1].running_var.uniform_(0.5, 1.5), net[1].weight.uniform_(0.5, 1.5)
    return net


METHODS = {"gradxinput": {}, "integrated_gradients": {"steps": 4}, "gradcam": {"layer": "net.3"},
           "guided_backprop": {}, "lpr": {"iterations": 3}, "lrp_epsilon": {}, "dmbp": {}}


@pytest.mark.parametrize("kind", ["tuple", "dict", "object"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_container_outputs_give_the_plain_models_maps(net, kind, method):
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    expected = pyexplain.explain(Plain(net), x, method, **METHODS[method])
    got = pyexplain.explain(Wrapped(net, kind), x, method, **METHODS[method])
    assert torch.equal(got.targets, expected.targets)
    torch.testing.assert_close(got.attribution, expected.attribution)
    torch.testing.assert_close(got.logits, expected.logits)
    assert expected.attribution.abs().sum() > 0


def test_output_callable_selects_the_logits_and_default_cam_layer_names_stay_the_models(net):
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    model = Wrapped(net, "nested")
    with pytest.raises(PyExplainError, match=r"returned a dict with keys 'out'.*output=") as info:
        pyexplain.explain(model, x, "saliency")
    assert "\n" not in str(info.value)
    got = pyexplain.explain(model, x, "gradcam", output=lambda out: out["out"]["scores"])
    expected = pyexplain.explain(Plain(net), x, "gradcam")
    torch.testing.assert_close(got.attribution, expected.attribution)
    with pytest.raises(PyExplainError, match="model has no layer 'model.net.3'"):
        pyexplain.explain(model, x, "gradcam", layer="model.net.3", output=lambda out: out["out"]["scores"])


def test_unusable_outputs_are_one_line_errors(net):
    x = torch.randn(1, 3, 12, 12)
    with pytest.raises(PyExplainError, match="returned a str"):
        pyexplain.explain(_Returns("text"), x, "saliency")
    with pytest.raises(PyExplainError, match=r"logits have shape \(1, 3, 12, 12\)"):
        pyexplain.explain(nn.Identity(), x, "saliency")
    with pytest.raises(PyExplainError, match="output= returned a tuple"):
        pyexplain.explain(Wrapped(net, "tuple"), x, "saliency", output=lambda out: out)


class _Returns(nn.Module):
    def __init__(self, value) -> None:
        super().__init__()
        self.value = value
        self.conv = nn.Conv2d(3, 1, 1)

    def forward(self, x):
        return self.value
