"""Activation-call interception: every call seen in order, values and gradients untouched by the
identity rule, nothing left behind on the model or in torch's global hooks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyexplain.core.activations import identity_rule, intercept_activations, list_activation_calls
from pyexplain.core.rules import replace_backward


def _global_hook_counts():
    module = nn.modules.module
    return len(module._global_forward_hooks), len(module._global_forward_pre_hooks)


def _local_hook_counts(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_resnet18_reused_inplace_relu_is_seen_per_call(resnet18, small_images):
    tracker = list_activation_calls(resnet18, small_images)
    # stem relu + two calls of each BasicBlock's single `relu` module x 8 blocks
    assert len(tracker.calls) == 17
    assert [c.index for c in tracker.calls] == list(range(17))
    assert tracker.calls[0].module_name == "relu"
    assert [c.module_name for c in tracker.calls[1:3]] == ["layer1.0.relu", "layer1.0.relu"]
    assert all(c.kind == "relu" and c.spatial for c in tracker.calls)


def test_efficientnet_lite0_relu6_calls(lite0, chelsea):
    tracker = list_activation_calls(lite0[0], chelsea)
    # stem + first block (no expansion: 1 call) + 15 blocks x 2 calls (one reused module) + head
    assert len(tracker.calls) == 1 + 1 + 15 * 2 + 1
    assert all(c.kind == "hardtanh" and (c.low, c.high) == (0.0, 6.0) for c in tracker.calls)
    assert tracker.calls[2].module_name == tracker.calls[3].module_name == "_blocks.1._swish"


def test_functional_relu_in_inception_is_seen():
    torch.manual_seed(0)
    from torchvision.models import inception_v3

    model = inception_v3(weights=None, aux_logits=False, init_weights=False).eval()
    tracker = list_activation_calls(model, torch.randn(1, 3, 75, 75))
    assert len(tracker.calls) == 94  # every BasicConv2d calls F.relu(x, inplace=True)
    assert tracker.calls[0].module_name == "Conv2d_1a_3x3"


def test_identity_rule_keeps_values_and_gradients(resnet18, small_images):
    x = small_images.clone().requires_grad_(True)
    plain = resnet18(x)
    (g_plain,) = torch.autograd.grad(plain[:, 3].sum(), x)
    with intercept_activations(resnet18, identity_rule):
        ruled = resnet18(x)
    (g_ruled,) = torch.autograd.grad(ruled[:, 3].sum(), x)
    torch.testing.assert_close(ruled, plain)
    torch.testing.assert_close(g_ruled, g_plain)


def test_rule_equal_to_own_derivative_gives_plain_gradient(lite0, chelsea):
    model = lite0[0]

    def own_derivative(call, x):
        gate = call.derivative(x.detach())
        return replace_backward(call, x, lambda g: g * gate)

    x = chelsea.clone().requires_grad_(True)
    (g_plain,) = torch.autograd.grad(model(x)[0, 285], x)
    with intercept_activations(model, own_derivative):
        out = model(x)
    (g_rule,) = torch.autograd.grad(out[0, 285], x)
    torch.testing.assert_close(g_rule, g_plain, rtol=1e-5, atol=1e-7)


def test_model_and_hooks_unchanged_also_when_forward_raises(resnet18, small_images):
    before_state = {k: v.clone() for k, v in resnet18.state_dict().items()}
    before_out = resnet18(small_images)
    hooks = (_global_hook_counts(), _local_hook_counts(resnet18))

    def failing_rule(call, x):
        if call.index == 5:
            raise RuntimeError("rule failed")
        return call.forward(x)

    with pytest.raises(RuntimeError, match="rule failed"):
        with intercept_activations(resnet18, failing_rule):
            resnet18(small_images)
    assert (_global_hook_counts(), _local_hook_counts(resnet18)) == hooks
    assert all(m.inplace for m in resnet18.modules() if isinstance(m, nn.ReLU))
    torch.testing.assert_close(resnet18(small_images), before_out)
    for key, value in resnet18.state_dict().items():
        assert torch.equal(value, before_state[key])


def test_other_nonlinearities_are_counted_not_replaced():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 8, 8))
    tracker = list_activation_calls(model.eval(), torch.randn(1, 3, 8, 8))
    assert len(tracker.calls) == 1
    assert tracker.other_nonlinearities["silu"] == 1


def test_leaky_relu_and_tensor_relu_kinds():
    class Net(nn.Module):
        def forward(self, x):
            return F.leaky_relu(x, 0.2).relu() + torch.relu(x)

    tracker = list_activation_calls(Net(), torch.randn(2, 3))
    assert [c.kind for c in tracker.calls] == ["leaky_relu", "relu", "relu"]
    assert tracker.calls[0].negative_slope == pytest.approx(0.2)
    assert not tracker.calls[0].spatial


class _StatementInplace(nn.Module):
    """Uses in-place activations as statements, ignoring their return values."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x)
        h.relu_()
        h = self.b(h)
        F.relu(h, inplace=True)
        return self.c(h)


class _OutOfPlaceTwin(_StatementInplace):
    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_inplace_statements_keep_forward_values():
    from pyexplain.core.rules import guided_backprop_rule

    statement, twin = _StatementInplace().eval(), _OutOfPlaceTwin().eval()
    x = torch.randn(5, 4)
    with intercept_activations(statement, guided_backprop_rule) as tracker:
        out = statement(x)
    torch.testing.assert_close(out, twin(x))
    assert len(tracker.calls) == 2


def test_inplace_module_gets_the_rule_and_keeps_captured_inputs():
    """ReLU(inplace=True) after a captured tensor: the rule applies, and the captured tensor is
    still the pre-activation node (its gradient is the gradient at the activation's input)."""
    from pyexplain.core.rules import guided_backprop_rule

    torch.manual_seed(0)
    inplace = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 3)).eval()
    outplace = nn.Sequential(inplace[0], nn.ReLU(), inplace[2]).eval()
    x = torch.randn(5, 4)
    results = []
    for model in (inplace, outplace):
        xi = x.clone().requires_grad_(True)
        with intercept_activations(model, guided_backprop_rule):
            pre = model[0](xi)
            out = model[2](model[1](pre))
        results.append((out, *torch.autograd.grad(out[:, 1].sum(), [xi, pre])))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    xi = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(outplace(xi)[:, 1].sum(), xi)
    assert not torch.allclose(plain, results[0][1])  # the rule really changed the backward
