"""Networks whose activations are not ReLU-family (SiLU, GELU, Hardswish, ...): interception of every
call, LPR's rule at each of them, DeepLIFT's rescale rule and ε-LRP's pass-through against Captum and
Zennit, and a one-line refusal from every method that has no rule for them."""
from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
from torch import nn
from torchvision.models import get_model

import pyexplain
from pyexplain.core.activations import ACTIVATIONS, identity_rule, intercept_activations, list_activation_calls
from pyexplain.core.targets import Targets, target_scores
from pyexplain.errors import PyExplainError
from pyexplain.methods._lpr import RuleGraph

from baseline_oracles import zennit_epsilon_lrp
from model_support import calibrate_batchnorm


class SmoothNet(nn.Module):
    """One module per activation call (so Captum/Zennit can hook them), no products of activations."""

    def __init__(self, *activations: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(0)
        width = 6
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1)]
        for act in activations:
            layers += [act, nn.Conv2d(width, width, 3, padding=1)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, 4)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class GatedNet(nn.Module):
    """ReLU trunk with a squeeze-excitation sigmoid gate (a product of two activations)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.relu1 = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()
        self.squeeze, self.relu2, self.excite = nn.Conv2d(6, 3, 1), nn.ReLU(), nn.Conv2d(3, 6, 1)
        self.gate = nn.Sigmoid()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        h = self.relu1(self.conv1(x))
        s = self.gate(self.excite(self.relu2(self.squeeze(h.mean((2, 3), keepdim=True)))))
        return self.fc((h * s).mean((2, 3)))


def _x(n=2, size=8):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


ALL_SMOOTH = (nn.SiLU(inplace=True), nn.GELU(), nn.GELU(approximate="tanh"), nn.Hardswish(inplace=True), nn.Mish(),
              nn.ELU(0.5), nn.SELU(), nn.CELU(0.7), nn.Softplus(2.0, 5.0))


def test_every_smooth_activation_is_seen_in_order_with_its_options():
    model = SmoothNet(*ALL_SMOOTH).double().eval()
    tracker = list_activation_calls(model, _x(), kinds=ACTIVATIONS)
    assert [c.kind for c in tracker.calls] == ["silu", "gelu", "gelu", "hardswish", "mish", "elu", "selu", "celu",
                                               "softplus"]
    assert [c.module_name for c in tracker.calls] == [f"features.{2 * i + 1}" for i in range(9)]
    assert dict(tracker.calls[2].options) == {"approximate": "tanh"}
    assert dict(tracker.calls[8].options) == {"beta": 2.0, "threshold": 5.0}
    assert all(c.spatial for c in tracker.calls) and not tracker.others
    # default kinds (the ReLU family): the same calls are listed as others, not given to the rule
    default = list_activation_calls(model, _x())
    assert not default.calls and [c.kind for c in default.others] == [c.kind for c in tracker.calls]


def test_identity_rule_on_smooth_activations_keeps_values_and_gradients():
    model = SmoothNet(*ALL_SMOOTH).double().eval()
    x = _x().requires_grad_(True)
    plain = model(x)
    (g_plain,) = torch.autograd.grad(plain[:, 1].sum(), x)
    with intercept_activations(model, identity_rule, kinds=ACTIVATIONS) as tracker:
        ruled = model(x)
    (g_ruled,) = torch.autograd.grad(ruled[:, 1].sum(), x)
    assert len(tracker.calls) == len(ALL_SMOOTH)
    torch.testing.assert_close(ruled, plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ruled, g_plain, rtol=1e-10, atol=1e-12)


def test_derivatives_against_closed_forms():
    model = SmoothNet(nn.SiLU(), nn.GELU(), nn.Hardswish()).double().eval()
    calls = list_activation_calls(model, _x(), kinds=ACTIVATIONS).calls
    f = torch.linspace(-4, 4, 80, dtype=torch.float64)  # not at hardswish's kinks ±3
    s = torch.sigmoid(f)
    pdf = torch.exp(-f ** 2 / 2) / math.sqrt(2 * math.pi)
    expected = [s * (1 + f * (1 - s)), 0.5 * (1 + torch.erf(f / math.sqrt(2))) + f * pdf,
                torch.where(f < -3, 0.0, torch.where(f > 3, 1.0, (2 * f + 3) / 6))]
    for call, truth in zip(calls, expected):
        torch.testing.assert_close(call.derivative(f), truth, rtol=1e-12, atol=1e-12)


_BUILT: dict[str, nn.Module] = {}


def _efficientnet_b0():
    """torchvision EfficientNet-B0 (SiLU, sigmoid squeeze-excitation gates), random weights, float64."""
    if "efficientnet_b0" not in _BUILT:
        torch.manual_seed(0)
        model = get_model("efficientnet_b0", weights=None)
        _BUILT["efficientnet_b0"] = calibrate_batchnorm(model, torch.randn(64, 3, 32, 32)).double()
    return _BUILT["efficientnet_b0"]


def _vit_tiny():
    """timm ViT-tiny (nn.GELU in every MLP block, fused attention) on 32×32 inputs, random weights, float64."""
    if "vit_tiny" not in _BUILT:
        torch.manual_seed(0)
        _BUILT["vit_tiny"] = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval().double()
    return _BUILT["vit_tiny"]


@pytest.mark.slow
@pytest.mark.parametrize("build,kind,calls", [(_efficientnet_b0, "silu", 49), (_vit_tiny, "gelu", 12)])
def test_lpr_puts_a_rule_on_every_smooth_activation_call(build, kind, calls):
    """Sites at every call of the activation (EfficientNet-B0: 32 after convolutions + 16 inside the
    squeeze-excitation blocks + the head's = 49; ViT-tiny: one GELU per block); with ``W = 20/f`` and the
    activation mask the rule is ``tanh(20)·φ'(f) = φ'(f)``, so the attribution is Grad×Input."""
    model = build()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    targets = Targets(None)
    graph = RuleGraph.build(model, x, targets, variant="feature", f_ref=None, keep_activation_mask=True, head=True)
    assert [s.call.kind for s in graph.sites] == [kind] * calls
    graph.bind([20 / torch.where(s.shift == 0, torch.ones_like(s.shift), s.shift) for s in graph.sites])
    ruled = graph.attribution(create_graph=False)
    xx = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(target_scores(model(xx), targets.indices).sum(), xx)
    scale = float((plain * x).abs().max())
    assert scale > 0
    torch.testing.assert_close(ruled, plain * x, rtol=1e-7, atol=1e-9 * scale)


def test_lpr_rule_uses_the_activation_input_minus_the_reference():
    """``f − f_ref`` is taken at each SiLU's input: the sites' shifts equal the recorded inputs of the
    image's pass minus those of the all-zero reference."""
    model = SmoothNet(nn.SiLU(), nn.GELU()).double().eval()
    x = _x(1)
    inputs = {}

    def record(tag):
        def rule(call, f):
            inputs.setdefault(tag, []).append(f.detach().clone())
            return call.forward(f)
        return rule

    for tag, data in (("image", x), ("reference", torch.zeros_like(x))):
        with torch.no_grad(), intercept_activations(model, record(tag), kinds=ACTIVATIONS):
            model(data)
    from pyexplain.methods._lpr import reference_activations

    graph = RuleGraph.build(model, x, Targets(None), variant="feature", f_ref=reference_activations(model, x, False),
                            keep_activation_mask=False, head=False)
    for site, f, f_ref in zip(graph.sites, inputs["image"], inputs["reference"], strict=True):
        torch.testing.assert_close(site.shift, f - f_ref)


@pytest.mark.slow
@pytest.mark.parametrize("build", [_efficientnet_b0, _vit_tiny])
def test_lpr_runs_and_its_loss_falls(build):
    model = copy.deepcopy(build()).float()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    e = pyexplain.explain(model, x, "lpr", iterations=5)
    history = e.extras["loss_history"][0]
    assert torch.isfinite(e.attribution).all() and e.attribution.abs().amax() > 0
    assert torch.isfinite(history).all()
    assert history[-1] < history[0]  # the rules on the SiLU/GELU calls receive a gradient that lowers the loss


def test_lpr_on_mobilenet_v3_hardswish_and_hardsigmoid_gates():
    """Hardswish calls get rules; the squeeze-excitation hard-sigmoid gate keeps its gradient, computed
    in a form that has a second-order backward."""
    torch.manual_seed(0)
    model = calibrate_batchnorm(get_model("mobilenet_v3_small", weights=None), torch.randn(64, 3, 32, 32))
    e = pyexplain.explain(model, torch.randn(1, 3, 32, 32), "lpr", iterations=2)
    assert torch.isfinite(e.attribution).all() and torch.isfinite(e.extras["loss_history"]).all()


def test_dmbp_refusal_names_the_function_and_its_module():
    with pytest.raises(PyExplainError) as info:
        pyexplain.explain(_efficientnet_b0(), _x(1, 32), "dmbp", iterations=1)
    message = str(info.value)
    assert message.startswith("dmbp needs a piecewise-linear network (ReLU family, max/avg pooling); "
                              "found silu at features.0.2")
    assert "\n" not in message


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "guided_gradcam", "fullgrad", "dmbp"])
@pytest.mark.parametrize("activation,kind", [(nn.SiLU(), "silu"), (nn.GELU(), "gelu"), (nn.Hardswish(), "hardswish"),
                                             (nn.ELU(), "elu")])
def test_methods_without_a_rule_refuse_in_one_line(method, activation, kind):
    model = SmoothNet(nn.ReLU(), activation).double().eval()
    options = {"iterations": 1} if method == "dmbp" else {}
    with pytest.raises(PyExplainError, match=f"found {kind} at features.3") as info:
        pyexplain.explain(model, _x(), method, **options)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("method", ["fullgrad", "lrp_epsilon", "dmbp"])
def test_sigmoid_gate_is_refused_where_the_rule_needs_piecewise_linearity(method):
    options = {"iterations": 1} if method == "dmbp" else {}
    with pytest.raises(PyExplainError, match="found sigmoid at gate"):
        pyexplain.explain(GatedNet().double().eval(), _x(), method, **options)


def test_guided_backprop_keeps_the_gradient_of_a_sigmoid_gate_like_captum():
    from captum.attr import Deconvolution, GuidedBackprop

    model, x = GatedNet().double().eval(), _x()
    for name, oracle in (("guided_backprop", GuidedBackprop), ("deconvnet", Deconvolution)):
        ours = pyexplain.explain(model, x, name, target=[1, 2]).attribution
        theirs = oracle(model).attribute(x.clone(), target=[1, 2])
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_deeplift_rescales_elu_sigmoid_tanh_like_captum_and_sums_to_delta_on_silu_gelu():
    from captum.attr import DeepLift

    x = _x()
    model = SmoothNet(nn.ELU(), nn.Tanh(), nn.Sigmoid(), nn.Softplus()).double().eval()
    ours = pyexplain.explain(model, x, "deeplift", target=[0, 3]).attribution
    theirs = DeepLift(model).attribute(x.clone(), baselines=0.0, target=[0, 3])
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-10)
    model = SmoothNet(nn.SiLU(), nn.GELU(), nn.Hardswish(), nn.Mish()).double().eval()
    a = pyexplain.explain(model, x, "deeplift", target=[0, 3]).attribution
    with torch.no_grad():
        delta = model(x)[[0, 1], [0, 3]] - model(torch.zeros_like(x))[0, [0, 3]]
    torch.testing.assert_close(a.flatten(1).sum(1), delta, rtol=1e-9, atol=1e-12)
    plain = pyexplain.explain(model, x, "gradxinput", target=[0, 3]).attribution
    assert not torch.allclose(a, plain)  # the rescale multipliers, not the gradient


def test_lrp_passes_relevance_through_smooth_activations_like_zennit():
    model = SmoothNet(nn.SiLU(), nn.GELU(), nn.Hardswish(), nn.ELU()).double().eval()
    x = _x()
    ours = pyexplain.explain(model, x, "lrp_epsilon", target=[0, 3], epsilon=1e-6).attribution
    theirs = zennit_epsilon_lrp(model, x, [0, 3], 1e-6, [])
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-10 * float(theirs.abs().max()))


@pytest.mark.parametrize("method", ["saliency", "gradxinput", "integrated_gradients", "smoothgrad"])
def test_gradient_methods_run_on_smooth_networks(method):
    model = SmoothNet(*ALL_SMOOTH).double().eval()
    x = _x()
    a = pyexplain.explain(model, x, method, target=[0, 3]).attribution
    assert a.shape == x.shape and torch.isfinite(a).all() and a.abs().amax() > 0
    if method == "integrated_gradients":  # completeness holds for any differentiable network
        with torch.no_grad():
            delta = model(x)[[0, 1], [0, 3]] - model(torch.zeros_like(x))[0, [0, 3]]
        torch.testing.assert_close(a.flatten(1).sum(1), delta, rtol=2e-2, atol=1e-3 * float(delta.abs().max()))
