"""DeepLIFT's fused ops: ``ops.rescale`` (value and rescale multiplier of a ReLU-family activation)
and ``ops.checksums`` (the cache key's sums), the compiled kernels against hand computations and the
pure-PyTorch fallbacks (both CPU builds, one and two threads, shared references, the ``|Δ| ≤ eps``
branch, NaN), which calls take them, and DeepLIFT's maps and cache with the kernels and without."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import pyexplain
from pyexplain import _kernels, ops
from pyexplain.core.activations import ActivationCall
from pyexplain.core.model_state import model_state
from pyexplain.methods import deeplift as deeplift_module

from baseline_oracles import SmallVGG, randomize_batchnorm
from kernel_support import draw, needs_extension

TOLERANCE = {torch.float64: {"rtol": 1e-12, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 1e-6}}
EPS = 1e-10

RELU = ActivationCall(index=0, kind="relu", module_name="", shape=())
RELU6 = ActivationCall(index=0, kind="hardtanh", module_name="", shape=(), low=0.0, high=6.0)
HARDTANH = ActivationCall(index=0, kind="hardtanh", module_name="", shape=(), low=-1.0, high=2.0)
LEAKY = ActivationCall(index=0, kind="leaky_relu", module_name="", shape=(), negative_slope=0.1)
CALLS = {"relu": RELU, "relu6": RELU6, "hardtanh": HARDTANH, "leaky_relu": LEAKY}
# (f shape, reference shape): full, shared by the batch, one image, a classifier head [N, K], and two
# large enough (≥ 2^15 elements) for two threads to split them, one across an image boundary.
SHAPES = [((3, 4, 5, 6), (3, 4, 5, 6)), ((3, 4, 5, 6), (1, 4, 5, 6)), ((1, 7, 3, 3), (1, 7, 3, 3)),
          ((4, 10), (1, 10)), ((2, 16, 40, 40), (1, 16, 40, 40)), ((3, 9, 37, 41), (3, 9, 37, 41))]




def operands(f_shape, ref_shape, dtype, seed=0):
    """``f`` and ``f_ref`` with, besides random values, positions where they are equal, closer than
    ``eps``, and at the activations' kinks and bounds (0, 6, −1, 2)."""
    f, ref = draw(f_shape, dtype, seed, scale=4.0), draw(ref_shape, dtype, seed + 1, scale=4.0)
    flat, shared = f.view(-1), ref.expand_as(f).reshape(-1)
    n = flat.numel()
    flat[0:n:7] = shared[0:n:7]  # Δ = 0
    if dtype == torch.float64:
        flat[1:n:11] = shared[1:n:11] + 1e-12  # |Δ| ≤ eps
    for k, bound in enumerate((0.0, 6.0, -1.0, 2.0)):
        flat[2 + k:n:13] = bound
    return f, ref


def assert_pair_close(got, want, dtype):
    for a, b in zip(got, want):
        assert a.dtype == dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, equal_nan=True, **TOLERANCE[dtype])


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", list(CALLS))
def test_rescale_kernel_matches_the_fallback(kernel_setup, dtype, kind):
    call = CALLS[kind]
    for k, (f_shape, ref_shape) in enumerate(SHAPES):
        f, ref = operands(f_shape, ref_shape, dtype, seed=10 * k)
        assert _kernels.rescale_supported(call.kind, f, ref)
        fused = _kernels.rescale(call.kind, f, ref, call.low, call.high, call.negative_slope, EPS)
        assert_pair_close(fused, ops.rescale_fallback(call, f, ref, EPS), dtype)


@needs_extension
def test_rescale_hand_computed_cases(kernel_setup):
    """``m = (φ(f) − φ(f_ref)) / (f − f_ref)``, or ``φ'(f)`` where ``|f − f_ref| ≤ eps`` (f = f_ref,
    and a difference of 1e-12): by hand for ReLU, ReLU6 and leaky ReLU, kernel and fallback."""
    def check(call, f, ref, value, multiplier):
        f, ref = torch.tensor([f], dtype=torch.float64), torch.tensor([ref], dtype=torch.float64)
        for got in (_kernels.rescale(call.kind, f, ref, call.low, call.high, call.negative_slope, EPS),
                    ops.rescale_fallback(call, f, ref, EPS)):
            torch.testing.assert_close(got[0][0], torch.tensor(value, dtype=torch.float64), rtol=1e-15, atol=0)
            torch.testing.assert_close(got[1][0], torch.tensor(multiplier, dtype=torch.float64), rtol=1e-15, atol=0)

    near = 3.0 + 1e-12
    check(RELU, [-3.0, 2.0, 0.0, 1.0, 0.0, 3.0], [1.0, 0.0, 0.0, 1.0, -2.0, near],
          [0.0, 2.0, 0.0, 1.0, 0.0, 3.0], [0.25, 1.0, 0.0, 1.0, 0.0, 1.0])
    check(RELU6, [-1.0, 2.0, 7.0, 3.0, 3.0, 6.0, 0.0], [1.0, 0.0, 2.0, 3.0, near, 6.0, 0.0],
          [0.0, 2.0, 6.0, 3.0, 3.0, 6.0, 0.0], [0.5, 1.0, 0.8, 1.0, 1.0, 0.0, 0.0])
    check(LEAKY, [-2.0, -2.0, 1.0, 3.0], [-2.0, 3.0, -1.0, 1.0],
          [-0.2, -0.2, 1.0, 3.0], [0.1, 0.64, 0.55, 1.0])


@needs_extension
def test_rescale_shared_reference_equals_the_expanded_one(kernel_setup):
    for call in CALLS.values():
        f, ref = operands((3, 5, 8, 9), (1, 5, 8, 9), torch.float64, seed=3)
        shared = _kernels.rescale(call.kind, f, ref, call.low, call.high, call.negative_slope, EPS)
        full = _kernels.rescale(call.kind, f, ref.expand_as(f).contiguous(), call.low, call.high,
                                call.negative_slope, EPS)
        assert torch.equal(shared[0], full[0]) and torch.equal(shared[1], full[1])


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rescale_nan_as_the_fallback(kernel_setup, dtype):
    """A NaN ``f`` makes the value and the multiplier NaN, a NaN ``f_ref`` the multiplier."""
    for call in CALLS.values():
        f, ref = operands((2, 3, 4, 5), (2, 3, 4, 5), dtype, seed=5)
        f[0, 1, 2, 3] = math.nan
        ref[1, 2, 0, 0] = math.nan
        f[1, 0, 0, 0] = ref[1, 0, 0, 0] = math.nan
        value, multiplier = _kernels.rescale(call.kind, f, ref, call.low, call.high, call.negative_slope, EPS)
        assert_pair_close((value, multiplier), ops.rescale_fallback(call, f, ref, EPS), dtype)
        assert torch.equal(value.isnan(), f.isnan())
        assert torch.equal(multiplier.isnan(), f.isnan() | ref.isnan())


def test_other_kinds_dtypes_and_layouts_take_the_fallback(monkeypatch):
    """Smooth activations, float16, non-contiguous tensors, references of other shapes and tensors
    that require a gradient are not the kernel's: ``ops.rescale`` computes them with the fallback."""
    def no_kernel(*args):
        raise AssertionError("the kernel must not take this call")

    monkeypatch.setattr(_kernels, "rescale", no_kernel)
    f, ref = operands((2, 3, 4, 5), (2, 3, 4, 5), torch.float32)
    silu = ActivationCall(index=0, kind="silu", module_name="", shape=())
    cases = [(silu, f, ref), (RELU, f.half(), ref.half()), (RELU, f.transpose(2, 3), ref.transpose(2, 3)),
             (RELU, f, ref[:, :, :1]), (RELU, f, ref[:1, :1]), (RELU, f.double(), ref),
             (RELU, f.detach().requires_grad_(), ref)]
    for call, f_, ref_ in cases:
        assert not _kernels.rescale_supported(call.kind, f_, ref_)
        value, multiplier = ops.rescale(call, f_, ref_, EPS)
        assert value.shape == multiplier.shape == f_.shape
    value, multiplier = ops.rescale(silu, f, ref, EPS)
    distinct = (f - ref).abs() > EPS
    ratio = (nn.functional.silu(f) - nn.functional.silu(ref)) / (f - ref)
    torch.testing.assert_close(multiplier[distinct], ratio[distinct], rtol=1e-5, atol=1e-6)


def test_an_extension_without_the_ops_takes_the_fallbacks(monkeypatch):
    """An extension built from older sources (no ``rescale``, no ``checksums``) leaves DeepLIFT on the fallbacks."""
    if not _kernels.available():
        pytest.skip(f"extension not loaded ({_kernels.LOAD_ERROR})")

    class OlderBuild:
        pass

    f, ref = operands((2, 3, 4, 5), (1, 3, 4, 5), torch.float64)
    monkeypatch.setattr(_kernels, "_C", OlderBuild())
    assert not _kernels.rescale_supported("relu", f, ref)
    assert _kernels.checksums_supported([f]) == [False]
    assert_pair_close(ops.rescale(RELU6, f, ref, EPS), ops.rescale_fallback(RELU6, f, ref, EPS), torch.float64)
    assert ops.checksums([f]) == ops.checksums_fallback([f])


@needs_extension
def test_kernels_reject_bad_arguments():
    f, ref = operands((2, 3, 4, 5), (2, 3, 4, 5), torch.float32)
    for args in [(f.transpose(2, 3), ref), (f, ref[:, :2]), (f, ref.double()), (f.int(), ref.int()), (f[:0], ref[:0])]:
        with pytest.raises(RuntimeError, match="rescale|reference"):
            _kernels._C.rescale(*args, 0, 0.0, math.inf, 0.0, EPS)
    with pytest.raises(RuntimeError, match="kind"):
        _kernels._C.rescale(f, ref, 7, 0.0, math.inf, 0.0, EPS)
    for tensors in [[f.transpose(2, 3)], [f.half()], [f.int()]]:
        with pytest.raises(RuntimeError, match="checksums"):
            _kernels._C.checksums(tensors)


@needs_extension
def test_checksums_hand_computed_and_against_the_fallback(kernel_setup):
    """``(Σᵢ tᵢ, Σᵢ (i + 1)·tᵢ)``: by hand on 1..50 (more than one block of the kernel), and against the
    fallback for float32/float64/int64 tensors of many lengths; a NaN makes both sums NaN, as in the
    fallback."""
    t = torch.arange(1, 51, dtype=torch.float64)
    assert _kernels.checksums([t, t[:7], t[:0]]) == [[1275.0, 42925.0], [28.0, 140.0], [0.0, 0.0]]
    tensors = [draw((n,), torch.float64, n) for n in (1, 2, 3, 23, 24, 25, 48, 1000, 40_001)]
    tensors += [x.float() for x in tensors] + [torch.arange(-50, 53) * 7, draw((3, 4, 5, 6), torch.float32, 9, scale=4.0)]
    for got, want in zip(_kernels.checksums(tensors), ops.checksums_fallback(tensors)):
        torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-4)
    odd = torch.ones(10, dtype=torch.float32)
    odd[1], odd[5] = math.nan, math.inf
    got, want = _kernels.checksums([odd])[0], ops.checksums_fallback([odd])[0]
    assert all(math.isnan(v) for v in (*got, *want))


def test_checksums_mixes_kernel_and_fallback_in_order(monkeypatch):
    """Tensors the kernel does not take (non-contiguous, float16) are summed by the fallback, in place in the list."""
    tensors = [torch.arange(12.0), torch.arange(12.0).view(3, 4).t(), torch.arange(6, dtype=torch.float16),
               torch.arange(5, dtype=torch.int64)]
    want = [(66.0, 572.0), (66.0, 506.0), (15.0, 70.0), (10.0, 40.0)]  # the transpose's flat order: 0, 4, 8, 1, ...
    assert [tuple(pair) for pair in ops.checksums(tensors)] == want
    with ops.use_fallback():
        assert ops.checksums(tensors) == want
    monkeypatch.setenv("PYEXPLAIN_BACKEND", "fallback")
    monkeypatch.setattr(_kernels, "checksums", lambda tensors: pytest.fail("the kernel must not run"))
    assert ops.checksums(tensors) == want


def _nets(dtype):
    """Small conv nets with ReLU6 (not in place), leaky ReLU and in-place ReLU, and a max-pool."""
    torch.manual_seed(7)

    def net(act: nn.Module) -> nn.Module:
        return randomize_batchnorm(nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act, nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), copy.deepcopy(act), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(32, 16), copy.deepcopy(act), nn.Linear(16, 5))).to(dtype).eval()

    return [net(nn.ReLU6()), net(nn.LeakyReLU(0.2)), net(nn.ReLU(inplace=True))]


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_deeplift_map_with_the_kernels_equals_the_fallback(monkeypatch, dtype):
    """Every activation call goes through the rescale kernel; the maps (shared constant reference, and
    a per-image tensor reference) equal the fallback's, forced by ``ops.use_fallback`` and by
    ``PYEXPLAIN_BACKEND``; float64 maps sum to the output difference."""
    monkeypatch.delenv("PYEXPLAIN_BACKEND", raising=False)
    calls = []
    original = _kernels.rescale
    monkeypatch.setattr(_kernels, "rescale", lambda *args: calls.append(1) or original(*args))
    x = draw((3, 3, 12, 12), dtype, 11)
    tensor_reference = draw((3, 3, 12, 12), dtype, 12, scale=0.5)
    tolerance = TOLERANCE[dtype] if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}
    for model in _nets(dtype):
        for reference in (0.1, tensor_reference):
            calls.clear()
            fused = pyexplain.explain(model, x, "deeplift", target=[0, 3, 1], reference=reference).attribution
            assert len(calls) == 3
            with ops.use_fallback():
                fallback = pyexplain.explain(model, x, "deeplift", target=[0, 3, 1], reference=reference).attribution
            monkeypatch.setenv("PYEXPLAIN_BACKEND", "fallback")
            forced = pyexplain.explain(copy.deepcopy(model), x, "deeplift", target=[0, 3, 1],
                                       reference=reference).attribution
            monkeypatch.delenv("PYEXPLAIN_BACKEND")
            assert len(calls) == 3
            torch.testing.assert_close(fused, fallback, **tolerance)
            torch.testing.assert_close(forced, fallback, rtol=0, atol=0)
            if dtype == torch.float64:
                with torch.no_grad():
                    ref = deeplift_module.reference_like(reference, x)
                    delta = model(x)[[0, 1, 2], [0, 3, 1]] - model(ref)[[0, 1, 2], [0, 3, 1]]
                torch.testing.assert_close(fused.flatten(1).sum(1), delta, rtol=1e-9, atol=1e-12)


def _swap_two_weights(model):
    """Exchanges two weights through ``.data``: the version counter and (up to rounding) ``Σ t`` are
    unchanged, ``Σᵢ (i + 1)·tᵢ`` changes by ``w[0] − w[1]``."""
    w = model.features[4].weight.data.view(-1)
    first, second = float(w[0]), float(w[1])
    w[0], w[1] = second, first


@pytest.mark.parametrize("backend", ["extension", "fallback"])
def test_cached_reference_follows_a_sum_preserving_edit(monkeypatch, backend):
    """The cache key's second sum catches an edit that keeps every tensor's total (with the checksums
    kernel and with the fallback): the next call recomputes the reference's pass, as a fresh copy does."""
    if backend == "extension" and not _kernels.available():
        pytest.skip(f"extension not loaded ({_kernels.LOAD_ERROR})")
    monkeypatch.setenv("PYEXPLAIN_BACKEND", "auto" if backend == "extension" else "fallback")
    torch.manual_seed(4)
    model = randomize_batchnorm(SmallVGG()).double().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    before = pyexplain.explain(model, x, "deeplift", target=[1, 2], reference=0.2).attribution
    key = model_state(model)
    assert model_state(model) == key
    _swap_two_weights(model)
    assert model_state(model) != key
    after = pyexplain.explain(model, x, "deeplift", target=[1, 2], reference=0.2).attribution
    fresh = pyexplain.explain(copy.deepcopy(model), x, "deeplift", target=[1, 2], reference=0.2).attribution
    torch.testing.assert_close(after, fresh, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(after, before, rtol=1e-6)
