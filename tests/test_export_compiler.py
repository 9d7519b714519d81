"""The explainer compiler's parts and failure modes. (Every fixed rule on EfficientNet-Lite0, ResNet-18
and VGG16, compiled and exported, is compared with the eager methods in test_export_formats.py.)"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyexplain
from pyexplain.core.activations import ActivationCall
from pyexplain.core.rules import guided_backprop_rule
from pyexplain.errors import PyExplainError
from pyexplain.export import compile_explainer, steps as S
from pyexplain.export.graph import SUPPORTED

from export_support import (TOLERANCE, channel_rules, compiled, images, model, one_torch_thread,  # noqa: F401
                            relative_error)


@pytest.mark.parametrize("kind,params", [("relu", {}), ("hardtanh", {"low": 0.0, "high": 6.0}),
                                         ("hardtanh", {"low": -1.0, "high": 1.0}), ("leaky_relu", {"negative_slope": 0.1})])
def test_activation_rules_match_autograd_at_thresholds(kind, params):
    """Gates exactly at the thresholds: the plain rule equals autograd of the activation, the guided
    rule equals the eager Guided Backprop rule, Deconvnet rectifies."""
    f = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 6.0, 7.0], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0, -6.0, 7.0], dtype=torch.float64)
    call = ActivationCall(0, kind, "", tuple(f.shape), **params)
    step = S.Activation("a", ("x",), 0, kind, **params)
    (plain,) = torch.autograd.grad(call.forward(f), f, g)
    (guided,) = torch.autograd.grad(guided_backprop_rule(call, f), f, g)
    assert torch.equal(step.grad(g, f.detach(), "gradient")[0], plain)
    assert torch.equal(step.grad(g, f.detach(), "guided")[0], guided)
    assert torch.equal(step.grad(g, f.detach(), "deconvnet")[0], g.clamp(min=0))
    assert torch.equal(step.run(f.detach())[0], call.forward(f.detach()))


class _Branchy(nn.Module):
    """Functional forms and odd sizes: dilated grouped strided convs on odd inputs, functional pools
    with ceil mode, a LeakyReLU, a Hardtanh, a concatenation, a pad, a view, a BatchNorm1d head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.branch_a = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
        self.branch_b = nn.Conv2d(8, 4, 1)
        self.pad = nn.ZeroPad2d((1, 0, 2, 1))
        self.leaky = nn.LeakyReLU(0.05)
        self.tanh_like = nn.Hardtanh(-0.5, 0.5)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False, ceil_mode=True)
        self.fc = nn.Linear(12 * 3 * 3, 16)
        self.bn1d = nn.BatchNorm1d(16)
        self.out = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.max_pool2d(x, 3, 2, 1, ceil_mode=True) + 0.5
        y = torch.cat([self.leaky(self.branch_a(x)), self.tanh_like(self.branch_b(x))], dim=1)
        y = F.pad(self.pool(self.pad(y)), (0, 0, 0, 0))
        y = F.adaptive_avg_pool2d(y, (3, 3))
        h = torch.relu(self.bn1d(self.fc(y.view(y.size(0), -1))))
        return self.out(h.relu())


@pytest.mark.parametrize("method", ["saliency", "gradxinput", "guided_backprop", "deconvnet", "gradcam"])
def test_compiler_handles_functional_ops_and_odd_sizes(method):
    """In float64: the compiled average pools (matrix products) round differently from torch's pooling
    kernels, and a gate after them must not lie within that rounding of its threshold on any CPU."""
    torch.manual_seed(0)
    net = _Branchy().double().eval()
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 3, 23, 19, dtype=torch.float64)
    explainer = compile_explainer(net, method, x, **({"layer": "branch_a"} if method == "gradcam" else {}))
    options = {"layer": "branch_a"} if method == "gradcam" else {}
    reference = pyexplain.explain(net, x, method, target=[0, 3, 4], **options).attribution
    with torch.no_grad():
        _, attribution = explainer(x, torch.tensor([0, 3, 4]))
    assert relative_error(attribution, reference).max() <= TOLERANCE


@pytest.mark.parametrize("pool,size", [(nn.AdaptiveAvgPool2d((7, 7)), (2, 3)), (nn.AdaptiveAvgPool2d((3, 2)), (7, 5)),
                                        (nn.AvgPool2d(3, 2, 1), (9, 8)), (nn.AvgPool2d(2, ceil_mode=True), (5, 5))])
def test_average_pooling_as_separable_matrices(pool, size):
    """Forward ``P_h x P_wᵀ`` equals the pooling op; backward ``P_hᵀ g P_w`` equals its autograd."""
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    net = nn.Sequential(pool, nn.Flatten(), nn.Linear(3 * pool(x).shape[-1] * pool(x).shape[-2], 2)).double()
    step = compile_explainer(net, "saliency", x).steps[0]
    assert isinstance(step, S.AvgPool)
    y = pool(x)
    g = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, g)
    assert torch.allclose(step.run(x.detach())[0], y, atol=1e-12)
    assert torch.allclose(step.grad(g, None, "gradient")[0], expected, atol=1e-12)


def test_gradcam_layer_option_matches_eager():
    net, x = model("resnet18"), images("resnet18")
    explainer = compile_explainer(net, "gradcam", x, layer="layer3")
    with torch.no_grad():
        _, attribution = explainer(x, torch.full((4,), -1))
    reference = pyexplain.explain(net, x, "gradcam", layer="layer3").attribution
    assert relative_error(attribution, reference).max() <= TOLERANCE


def test_unsupported_layer_is_named(tmp_path, monkeypatch, capsys):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(PyExplainError) as error:
        compile_explainer(net, "saliency", torch.randn(1, 3, 8, 8))
    message = str(error.value)
    assert "layer '1' (SiLU)" in message and SUPPORTED in message and "\n" not in message
    # the CLI: one line on stderr, exit 2, no file written
    (tmp_path / "silu_model.py").write_text(
        "from torch import nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from pyexplain.cli import main

    out = tmp_path / "silu.onnx"
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--model", "silu_model:make", "--method", "saliency", "--format", "onnx", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.count("\n") == 0 and "layer '1' (SiLU)" in err
    assert list(tmp_path.glob("silu*.onnx*")) == [] and not list(tmp_path.glob(".silu*"))


def test_bad_methods_and_options_are_refused():
    net, x = model("resnet18"), images("resnet18")[:1]
    for method, opts, text in [("integrated_gradients", {}, "cannot be exported"), ("saliency", {"steps": 3}, "no export option"),
                               ("lpr", {}, "needs its frozen channel rules"),
                               ("lpr", {"rules": [torch.ones(3)]}, "do not match the model")]:
        with pytest.raises(PyExplainError, match=text):
            compile_explainer(net, method, x, **opts)


def test_compiling_leaves_the_model_alone():
    net, x = model("resnet18"), images("resnet18")[:1]
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    try:
        compile_explainer(net, "guided_backprop", x)
        assert all(m.training for m in net.modules())
    finally:
        net.eval()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def _rules_file(name: str) -> dict:
    """The dict `pyexplain fit-rules` writes (format version 1), built from the seeded test rules."""
    from pyexplain.core.activations import list_activation_calls

    calls = list_activation_calls(model(name), images(name)[:1]).calls
    rules = channel_rules(name)
    ruled = [c for c in calls if rules[c.index] is not None]
    return {"format": "pyexplain-lpr-rules", "version": 1, "model": name, "variant": "feature", "reference": True,
            "keep_activation_mask": False, "head": False,
            "calls": [{"index": c.index, "kind": c.kind, "module": c.module_name, "shape": list(c.shape[1:])} for c in ruled],
            "weights": [rules[c.index] for c in ruled]}


def test_lpr_rules_file_equals_rule_list(tmp_path):
    net, x = model("resnet18"), images("resnet18")
    path = tmp_path / "rules.pt"
    torch.save(_rules_file("resnet18"), path)
    from_file = compile_explainer(net, "lpr", x, rules=str(path))
    from_list = compiled("resnet18", "lpr")
    t = torch.tensor([3, -1, 5, -1])
    with torch.no_grad():
        assert torch.equal(from_file(x, t)[1], from_list(x, t)[1])
    damaged = _rules_file("resnet18")
    damaged["weights"] = damaged["weights"][:-1]
    torch.save(damaged, path)
    with pytest.raises(PyExplainError, match="damaged"):
        compile_explainer(net, "lpr", x, rules=str(path))
    torch.save({"format": "something else"}, path)
    with pytest.raises(PyExplainError, match="not a pyexplain LPR rules file"):
        compile_explainer(net, "lpr", x, rules=str(path))


def test_lpr_export_equals_amortized_lpr(tmp_path):
    """Rules fitted by amortized LPR (`pyexplain fit-rules`) give the same attribution exported as in
    LPR's own fixed-rule path (runs where the LPR method is installed)."""
    lpr_rules = pytest.importorskip("pyexplain.methods._lpr_rules")
    from pyexplain.core.targets import Targets

    net, x = model("resnet18"), images("resnet18")
    rules = lpr_rules.fit_rules(net, x[:2], model_name="resnet18", iterations=2)
    path = lpr_rules.save_rules(rules, tmp_path / "rules.pt")
    targets = torch.tensor([0, 3, 1, 5])
    expected = lpr_rules.fixed_rule_attribution(net, x, Targets(targets), str(path))
    explainer = compile_explainer(net, "lpr", x, rules=str(path))
    with torch.no_grad():
        _, attribution = explainer(x, targets)
    assert relative_error(attribution, expected).max() <= TOLERANCE
