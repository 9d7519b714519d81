"""The fused kernels (pyexplain._C) against autograd and the pure-PyTorch fallback.

gradcheck/gradgradcheck in float64 (finite differences: an independent truth for the fused first-
and second-order kernels), equality with the fallback in float32 (values, gradients, second-order
gradients) for every parameter layout, hand-computed gates, and the backend switches. CUDA tests
run only where a GPU and the CUDA build are present.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import pyexplain
from pyexplain import _kernels, ops
from pyexplain.core.activations import intercept_activations
from pyexplain.core.rules import replace_backward

from kernel_support import CPU_ISAS, needs_extension

ROOT = Path(__file__).resolve().parents[1]
BUILT = any((ROOT / "pyexplain").glob("_C*.so")) or any((ROOT / "pyexplain").glob("_C*.pyd"))
HAS_CUDA = torch.cuda.is_available() and _kernels.cuda_built()

# (f_ref shape, W shape) against an activation [2, 3, 4, 5]: full, shared by the batch, per
# channel per row, per channel, one value, with and without leading 1s.
FULL = (2, 3, 4, 5)
PARAM_SHAPES = [
    ((2, 3, 4, 5), (2, 3, 4, 5)),
    ((1, 3, 4, 5), (2, 3, 1, 1)),
    ((3, 4, 5), (1, 3, 1, 1)),
    ((), (3, 1, 1)),
    ((1, 1, 1, 1), (1,)),
]


@pytest.fixture(params=CPU_ISAS)
def cpu_isa(request):
    """Runs a test with each CPU build of the kernels (baseline and AVX2+FMA where available)."""
    if not _kernels.available():
        yield None
        return
    previous = _kernels._C.set_cpu_isa(request.param)
    yield request.param
    _kernels._C.set_cpu_isa(previous)


def rand(shape, dtype=torch.float64, device="cpu", seed=0, low=None, high=None):
    gen = torch.Generator().manual_seed(seed)
    if low is None:
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
    else:
        t = torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low
    return t.to(device=device, dtype=dtype).requires_grad_()


def plugin_inputs(ref_shape, w_shape, full=FULL, **kw):
    return (rand(full, seed=1, **kw), rand(full, seed=2, **kw), rand(ref_shape, seed=3, **kw), rand(w_shape, seed=4, **kw))


def masked_inputs(mask_shape, full=FULL, **kw):
    # f spread over [-2, 8] so both gates see values on each side of 0 and of 6.
    return rand(full, seed=1, **kw), rand(full, seed=2, low=-2.0, high=8.0, **kw), rand(mask_shape, seed=3, **kw)


# ---------------------------------------------------------------------------------- backend


def test_extension_loads_when_built():
    """A built extension must load and be the backend; CI (make test) also demands that it was built."""
    expected = os.environ.get("PYEXPLAIN_EXPECT_EXTENSION") == "1"  # make test, with a C++ compiler
    if not (BUILT or expected):
        pytest.skip("extension not built in this checkout")
    assert _kernels.available(), _kernels.LOAD_ERROR
    assert pyexplain.backend() == "extension"
    g, f, r, w = plugin_inputs(*PARAM_SHAPES[1], dtype=torch.float32)
    assert ops.plugin_rule(g, f, r, w).grad_fn.name() == "_PluginRuleBackward"
    assert ops.masked_relu_backward(g, f, w).grad_fn.name() == "_MaskedReluBackwardBackward"


def _backend_in_subprocess(value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYEXPLAIN_BACKEND"}
    if value is not None:
        env["PYEXPLAIN_BACKEND"] = value
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    code = ("import torch, pyexplain; from pyexplain import ops; x = torch.ones(2, 3, requires_grad=True); "
            "print(pyexplain.backend(), ops.plugin_rule(x, x, None, x).grad_fn.name())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_environment_forces_fallback():
    assert _backend_in_subprocess("fallback") == "fallback MulBackward0"
    expected = "extension _PluginRuleBackward" if _kernels.available() else "fallback MulBackward0"
    assert _backend_in_subprocess(None) == expected


def test_use_fallback_context_and_bad_environment(monkeypatch):
    with ops.use_fallback():
        assert pyexplain.backend() == "fallback"
        x = torch.ones(2, 3, requires_grad=True)
        assert ops.plugin_rule(x, x, None, x).grad_fn.name() == "MulBackward0"
    monkeypatch.setenv("PYEXPLAIN_BACKEND", "fast")
    with pytest.raises(pyexplain.PyExplainError, match="PYEXPLAIN_BACKEND"):
        pyexplain.backend()


@needs_extension
def test_unsupported_arguments_fall_back():
    """Layouts, dtypes and shapes outside the fused path give the fallback's result through the fallback."""
    g, f = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    for w in (torch.randn(2, 1, 4, 5), torch.randn(1, 1, 4, 1)):  # per position, shared by channels
        y = ops.plugin_rule(g, f, None, w)
        assert y.grad_fn is None or y.grad_fn.name() != "_PluginRuleBackward"
        torch.testing.assert_close(y, g * torch.tanh(w * f))
    half = ops.plugin_rule(g.half(), f.half(), None, g.half())  # half on CPU: fallback
    torch.testing.assert_close(half, (g.half() * torch.tanh(g.half() * f.half())))
    assert not _kernels.supported(f, (g,), (torch.randn(2, 3, 4, 5, dtype=torch.float64),))  # mixed dtypes
    assert not _kernels.supported(f, (g[:1],), (g,))  # g_out not shaped like f


@needs_extension
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace is deprecated, still used by exporters
def test_tracing_sees_the_fallback_ops():
    """TorchScript tracing (as exporters do) records standard ops, never the extension's calls."""
    g, f, w = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4), torch.randn(1, 3, 1, 1)
    traced = torch.jit.trace(lambda g, f, w: ops.plugin_rule(g, f, None, w), (g, f, w))
    assert "aten::tanh" in str(traced.graph)
    torch.testing.assert_close(traced(g, f, w), ops.plugin_rule(g, f, None, w))


def test_cli_info_prints_backend_and_build(capsys):
    from pyexplain.cli import main

    main(["info"])
    out = capsys.readouterr().out
    assert f"backend     {pyexplain.backend()}" in out
    assert torch.__version__ in out
    if _kernels.available():
        assert _kernels.build_info()["cpu_isa"] in out


# ----------------------------------------------------------------- gradcheck / gradgradcheck


@needs_extension
@pytest.mark.parametrize("ref_shape,w_shape", PARAM_SHAPES)
def test_plugin_rule_gradcheck(cpu_isa, ref_shape, w_shape):
    inputs = plugin_inputs(ref_shape, w_shape)
    assert ops.plugin_rule(*inputs).grad_fn.name() == "_PluginRuleBackward"
    assert gradcheck(ops.plugin_rule, inputs)
    assert gradgradcheck(ops.plugin_rule, inputs)


@needs_extension
def test_plugin_rule_gradcheck_head_and_no_reference(cpu_isa):
    """Classifier-head activations [N, K] (per-unit W) and ``f_ref=None``."""
    g, f, w = rand((3, 7), seed=1), rand((3, 7), seed=2), rand((7,), seed=3)
    assert gradcheck(lambda g, f, w: ops.plugin_rule(g, f, None, w), (g, f, w))
    assert gradgradcheck(lambda g, f, w: ops.plugin_rule(g, f, None, w), (g, f, w))


@needs_extension
@pytest.mark.parametrize("high", [math.inf, 6.0], ids=["relu", "relu6"])
@pytest.mark.parametrize("mask_shape", [FULL, (1, 3, 1, 1), (2, 3, 1, 1), (1, 3, 4, 5), ()])
def test_masked_relu_backward_gradcheck(cpu_isa, high, mask_shape):
    g, f, m = masked_inputs(mask_shape)
    fn = lambda g, f, m: ops.masked_relu_backward(g, f, m, 0.0, high)  # noqa: E731
    assert fn(g, f, m).grad_fn.name() == "_MaskedReluBackwardBackward"
    assert gradcheck(fn, (g, f, m))
    assert gradgradcheck(fn, (g, f, m))


@needs_extension
def test_third_order_is_refused():
    g, f, r, w = plugin_inputs(*PARAM_SHAPES[0])
    (dw,) = torch.autograd.grad(ops.plugin_rule(g, f, r, w).sum(), w, create_graph=True)
    (d2,) = torch.autograd.grad((dw * dw).sum(), w, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(d2.sum(), w)


# ------------------------------------------------------------- equality with the fallback


def _first_and_second_order(fn, inputs, seed=7):
    """Value, first-order grads for a random upstream gradient, and the grads of a random
    linear function of those first-order grads (second order)."""
    y = fn(*inputs)
    gy = rand(y.shape, dtype=y.dtype, device=y.device, seed=seed)
    wanted = [t for t in inputs if t.requires_grad]
    first = torch.autograd.grad(y, wanted, gy, create_graph=True)
    tangents = [rand(d.shape, dtype=d.dtype, device=d.device, seed=seed + 1 + i) for i, d in enumerate(first)]
    scalar = sum((d * a).sum() for d, a in zip(first, tangents))
    second = torch.autograd.grad(scalar, [gy, *wanted])
    return y, first, second


def _assert_matches_fallback(fn, inputs, fused_name, rtol=1e-5, atol=1e-5):
    y, first, second = _first_and_second_order(fn, inputs)
    assert y.grad_fn.name() == fused_name
    with ops.use_fallback():
        y_ref, first_ref, second_ref = _first_and_second_order(fn, inputs)
    torch.testing.assert_close(y, y_ref)
    for got, want in zip((*first, *second), (*first_ref, *second_ref)):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


# [2, 8, 48, 48]: several CPU tiles per channel (reductions across tiles) and > 2^15 elements
# (the OpenMP-parallel path).
BIG = (2, 8, 48, 48)


@needs_extension
@pytest.mark.parametrize("ref_shape,w_shape", [
    (BIG, BIG), ((1, *BIG[1:]), (1, BIG[1], 1, 1)), ((1, *BIG[1:]), (BIG[0], BIG[1], 1, 1)), ((), (1, *BIG[1:])),
])
def test_plugin_rule_matches_fallback_float32(cpu_isa, ref_shape, w_shape):
    inputs = plugin_inputs(ref_shape, w_shape, full=BIG, dtype=torch.float32)
    _assert_matches_fallback(ops.plugin_rule, inputs, "_PluginRuleBackward")


@needs_extension
def test_plugin_rule_matches_fallback_head_float32(cpu_isa):
    inputs = plugin_inputs((1, 4096), (4096,), full=(4, 4096), dtype=torch.float32)
    _assert_matches_fallback(ops.plugin_rule, inputs, "_PluginRuleBackward")


@needs_extension
@pytest.mark.parametrize("high", [math.inf, 6.0], ids=["relu", "relu6"])
@pytest.mark.parametrize("mask_shape", [BIG, (1, BIG[1], 1, 1), (1, *BIG[1:])])
def test_masked_relu_backward_matches_fallback_float32(cpu_isa, high, mask_shape):
    g, f, m = masked_inputs(mask_shape, full=BIG, dtype=torch.float32)
    fn = lambda g, f, m: ops.masked_relu_backward(g, f, m, 0.0, high)  # noqa: E731
    _assert_matches_fallback(fn, (g, f.detach(), m), "_MaskedReluBackwardBackward")


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_tanh_accuracy_and_special_values(cpu_isa, dtype):
    """tanh inside the CPU kernels: within 2-3 ulp of torch.tanh over 70 binades, exact at the specials."""
    exponents = torch.linspace(-40, 30, 20001, dtype=torch.float64)
    x = torch.cat([torch.exp2(exponents), -torch.exp2(exponents)]).to(dtype)
    one = torch.ones_like(x)
    got = ops.plugin_rule(one, x, None, one)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(got, torch.tanh(x.double()).to(dtype), rtol=3 * eps, atol=0)
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 9.5, 25.0, -1e-30], dtype=dtype)
    ones = torch.ones_like(special)
    got = ops.plugin_rule(ones, special, None, ones)
    torch.testing.assert_close(got, torch.tanh(special), equal_nan=True, rtol=0, atol=0)
    assert torch.equal(torch.signbit(got[:2]), torch.tensor([False, True]))


@needs_extension
def test_gates_hand_computed(cpu_isa):
    f = torch.tensor([[-1.0, 0.0, 0.5, 5.9, 6.0, 7.0]])
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    mask = torch.full((1, 6), 0.5)
    relu = ops.masked_relu_backward(g, f, mask)
    relu6 = ops.masked_relu_backward(g, f, mask, 0.0, 6.0)
    assert relu.grad_fn is None and _kernels.supported(f, (g,), (mask,))
    assert relu.tolist() == [[0.0, 0.0, 1.5, 2.0, 2.5, 3.0]]
    assert relu6.tolist() == [[0.0, 0.0, 1.5, 2.0, 0.0, 0.0]]


@needs_extension
def test_lpr_style_second_order_matches_fallback(cpu_isa):
    """The plugin rule inside replaced backwards of a small CNN; d(loss of the attribution)/dW
    with create_graph=True, fused vs fallback — the way LPR uses the op."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1),
                                torch.nn.ReLU6(), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 5)).eval()
    x = torch.randn(2, 3, 8, 8)

    def attribution_loss_grads():
        weights = [torch.full((2, 4, 8, 8), 0.5, requires_grad=True), torch.full((1, 4, 1, 1), 0.5, requires_grad=True)]

        def rule(call, f):
            w = weights[call.index]
            return replace_backward(call, f, lambda g: ops.plugin_rule(g, f.detach(), torch.zeros_like(f[:1]), w))

        xi = x.clone().requires_grad_()
        with intercept_activations(model, rule):
            score = model(xi)[:, 1].sum()
        (grad,) = torch.autograd.grad(score, xi, create_graph=True)
        loss = (grad * xi).sum(1).pow(2).mean()
        return torch.autograd.grad(loss, weights)

    fused = attribution_loss_grads()
    with ops.use_fallback():
        reference = attribution_loss_grads()
    for got, want in zip(fused, reference):
        assert got.abs().sum() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------- CUDA

gpu_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and the CUDA build of the extension")


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("ref_shape,w_shape", PARAM_SHAPES)
def test_cuda_plugin_rule_gradcheck(ref_shape, w_shape):
    inputs = plugin_inputs(ref_shape, w_shape, device="cuda")
    assert gradcheck(ops.plugin_rule, inputs)
    assert gradgradcheck(ops.plugin_rule, inputs)


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("high", [math.inf, 6.0], ids=["relu", "relu6"])
@pytest.mark.parametrize("mask_shape", [FULL, (1, 3, 1, 1), (1, 3, 4, 5), ()])
def test_cuda_masked_relu_backward_gradcheck(high, mask_shape):
    g, f, m = masked_inputs(mask_shape, device="cuda")
    fn = lambda g, f, m: ops.masked_relu_backward(g, f, m, 0.0, high)  # noqa: E731
    assert gradcheck(fn, (g, f, m))
    assert gradgradcheck(fn, (g, f, m))


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("ref_shape,w_shape", [(BIG, BIG), ((1, *BIG[1:]), (1, BIG[1], 1, 1)), ((), (BIG[0], BIG[1], 1, 1))])
def test_cuda_matches_fallback(dtype, tol, ref_shape, w_shape):
    inputs = plugin_inputs(ref_shape, w_shape, full=BIG, device="cuda", dtype=dtype)
    _assert_matches_fallback(ops.plugin_rule, inputs, "_PluginRuleBackward", rtol=tol, atol=tol)
    g, f, m = masked_inputs(w_shape, full=BIG, device="cuda", dtype=dtype)
    fn = lambda g, f, m: ops.masked_relu_backward(g, f, m, 0.0, 6.0)  # noqa: E731
    _assert_matches_fallback(fn, (g, f.detach(), m), "_MaskedReluBackwardBackward", rtol=tol, atol=tol)
