"""FullGrad's fused reduction ``ops.abs_channel_stats``: the compiled kernel against a hand-written
loop and the pure-PyTorch fallback (both CPU builds, one and two threads, both site kinds, odd
shapes, NaN), which calls take the kernel, and FullGrad's maps with the kernel against the fallback."""
from __future__ import annotations

import math

import pytest
import torch

import pyexplain
from pyexplain import _kernels, ops
from pyexplain.methods import fullgrad as fullgrad_module

from kernel_support import draw, needs_extension

from _dmbp_nets import small_input, small_net

TOLERANCE = {torch.float64: {"rtol": 1e-12, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 1e-5}}
# (N, C, H, W): one image, a batch, one position, more channels than a group of the kernel (256),
# more positions than a tile (2048), a single channel; the last two are large enough (≥ 2^15
# elements) for two threads to split one image's channels, and to share the images of a batch.
SHAPES = [(1, 5, 7, 9), (3, 4, 6, 5), (2, 3, 1, 1), (2, 300, 3, 2), (1, 2, 50, 45), (4, 1, 8, 8),
          (1, 41, 30, 30), (3, 8, 40, 41)]




def loop_stats(g, weight, reference, threshold):
    """Element by element, in float64: ``m = |g|·1[reference > threshold]``, its per-(n, c) extremes and
    ``Σ_c weight_c·m``."""
    g64, w64 = g.double(), weight.double()
    n_, c_, h_, w_ = g.shape
    low, high = torch.empty(n_, c_, dtype=torch.float64), torch.empty(n_, c_, dtype=torch.float64)
    total = torch.zeros(n_, h_, w_, dtype=torch.float64)
    for n in range(n_):
        for c in range(c_):
            values = []
            for i in range(h_):
                for j in range(w_):
                    keep = reference is None or not float(reference[n, c, i, j]) <= threshold  # NaN: kept
                    m = abs(float(g64[n, c, i, j])) if keep else 0.0
                    values.append(m)
                    total[n, i, j] += float(w64[c]) * m
            low[n, c], high[n, c] = min(values), max(values)
    return low, high, total


def inputs(shape, dtype, gated, seed=0):
    g = draw(shape, dtype, seed)
    weight = draw(shape[1], dtype, seed + 1).abs()
    reference = draw(shape, dtype, seed + 2, scale=4.0) if gated else None
    return g, weight, reference, (1.5 if gated else 0.0)


def assert_stats_close(got, want, dtype):
    for a, b in zip(got, want):
        assert a.dtype == dtype and a.shape == b.shape
        torch.testing.assert_close(a.double(), b.double(), **TOLERANCE[dtype])


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gated", [False, True], ids=["bias", "saturation"])
def test_kernel_matches_a_loop_and_the_fallback(kernel_setup, dtype, gated):
    for k, shape in enumerate(SHAPES):
        g, weight, reference, threshold = inputs(shape, dtype, gated, seed=10 * k)
        assert _kernels.stats_supported(g, weight, reference)
        fused = _kernels.abs_channel_stats(g, weight, reference, threshold)
        fallback = ops.abs_channel_stats_fallback(g, weight, reference, threshold)
        assert_stats_close(fused, fallback, dtype)
        if math.prod(shape) <= 500:  # the element loop is slow
            assert_stats_close(fused, loop_stats(g, weight, reference, threshold), dtype)


@needs_extension
def test_hand_computed_case(kernel_setup):
    """``g`` [1, 2, 1, 3], gate ``reference > 6``: channel 0 keeps positions 0 and 2, channel 1 none."""
    g = torch.tensor([[[[-1.0, 2.0, -3.0]], [[4.0, -5.0, 6.0]]]], dtype=torch.float64)
    reference = torch.tensor([[[[7.0, 6.0, 6.5]], [[1.0, 6.0, -7.0]]]], dtype=torch.float64)
    weight = torch.tensor([2.0, 0.5], dtype=torch.float64)
    low, high, total = _kernels.abs_channel_stats(g, weight, reference, 6.0)
    assert low.tolist() == [[0.0, 0.0]] and high.tolist() == [[3.0, 0.0]]
    assert total.tolist() == [[[2.0, 0.0, 6.0]]]
    low, high, total = _kernels.abs_channel_stats(g, weight, None, 0.0)
    assert low.tolist() == [[1.0, 4.0]] and high.tolist() == [[3.0, 6.0]]
    assert total.tolist() == [[[4.0, 6.5, 9.0]]]


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_channels_and_all_zero_gradients(kernel_setup, dtype):
    g, weight, _, _ = inputs((2, 0, 3, 4), dtype, False)
    low, high, total = _kernels.abs_channel_stats(g, weight, None, 0.0)
    assert low.shape == high.shape == (2, 0) and total.shape == (2, 3, 4) and (total == 0).all()
    assert_stats_close((low, high, total), ops.abs_channel_stats_fallback(g, weight, None, 0.0), dtype)
    g, weight, reference, threshold = inputs((2, 3, 4, 5), dtype, True)
    g[:, 1] = 0.0  # a channel without gradient
    reference[0] = -1.0  # an image where nothing saturates
    fused = _kernels.abs_channel_stats(g, weight, reference, threshold)
    assert (fused[0][:, 1] == 0).all() and (fused[1][:, 1] == 0).all() and (fused[1][0] == 0).all()
    assert (fused[2][0] == 0).all()
    assert_stats_close(fused, ops.abs_channel_stats_fallback(g, weight, reference, threshold), dtype)


@needs_extension
def test_nan_propagates_to_its_channel_extremes_as_with_amin(kernel_setup):
    g, weight, _, _ = inputs((2, 3, 4, 5), torch.float32, False)
    g[1, 2, 3, 1] = math.nan
    low, high, total = _kernels.abs_channel_stats(g, weight, None, 0.0)
    want = ops.abs_channel_stats_fallback(g, weight, None, 0.0)
    for got, expected in zip((low, high, total), want):
        assert torch.equal(got.isnan(), expected.isnan())
    assert low[1, 2].isnan() and high[1, 2].isnan() and total[1, 3, 1].isnan() and not low[1, :2].isnan().any()


@needs_extension
def test_nan_reference_keeps_the_gradient_as_threshold_backward_does(kernel_setup):
    g, weight, reference, threshold = inputs((2, 3, 4, 5), torch.float64, True)
    reference[0, 1, 2, 3] = math.nan
    reference[1, 0] = math.nan
    fused = _kernels.abs_channel_stats(g, weight, reference, threshold)
    assert_stats_close(fused, ops.abs_channel_stats_fallback(g, weight, reference, threshold), torch.float64)
    assert_stats_close(fused, loop_stats(g, weight, reference, threshold), torch.float64)
    torch.testing.assert_close(fused[0][1, 0], g[1, 0].abs().min())


def test_other_layouts_and_dtypes_take_the_fallback(monkeypatch):
    """Non-contiguous, channels-last, float16 and 3-d inputs are not the kernel's: ``ops`` still
    computes them, through the fallback (the kernel is replaced by a failure here)."""
    def no_kernel(*args):
        raise AssertionError("the kernel must not take this call")

    monkeypatch.setattr(_kernels, "abs_channel_stats", no_kernel)
    g, weight, reference, threshold = inputs((2, 3, 4, 5), torch.float32, True)
    cases = [(g.transpose(2, 3), weight, reference.transpose(2, 3)),
             (g.contiguous(memory_format=torch.channels_last), weight, reference),
             (g, weight, reference.contiguous(memory_format=torch.channels_last)),
             (g, draw(6, torch.float32, 0)[::2], reference),
             (g.double(), weight.double(), reference)]
    for case in cases:
        assert not _kernels.stats_supported(*case)
    for g_, w_, r_ in cases[:4]:
        got = ops.abs_channel_stats(g_, w_, r_, threshold)
        assert_stats_close(got, loop_stats(g_, w_, r_, threshold), torch.float32)
    half = g.half(), weight.half(), None
    assert not _kernels.stats_supported(*half)
    low, high, _ = ops.abs_channel_stats(*half)
    torch.testing.assert_close(low, g.half().abs().amin((2, 3)))
    assert not _kernels.stats_supported(g[0], weight, None)


def test_an_extension_without_the_op_takes_the_fallback(monkeypatch):
    """An extension built from older sources (no ``abs_channel_stats``) leaves FullGrad on the fallback."""
    if not _kernels.available():
        pytest.skip(f"extension not loaded ({_kernels.LOAD_ERROR})")

    class OlderBuild:
        pass

    g, weight, reference, threshold = inputs((2, 3, 4, 5), torch.float64, True)
    monkeypatch.setattr(_kernels, "_C", OlderBuild())
    assert not _kernels.stats_supported(g, weight, reference)
    assert_stats_close(ops.abs_channel_stats(g, weight, reference, threshold),
                       loop_stats(g, weight, reference, threshold), torch.float64)


@needs_extension
def test_kernel_rejects_bad_arguments():
    g, weight, reference, _ = inputs((2, 3, 4, 5), torch.float32, True)
    for args in [(g.transpose(2, 3), weight, None), (g, weight[:2], None), (g, weight, reference[:1]),
                 (g[0], weight, None), (g.int(), weight.int(), None), (g[..., :0], weight, None)]:
        with pytest.raises(RuntimeError, match="abs_channel_stats|weight|reference"):
            _kernels._C.abs_channel_stats(*args, 0.0)


def _count_kernel_calls(monkeypatch) -> list[int]:
    calls = []
    original = _kernels.abs_channel_stats
    monkeypatch.setattr(_kernels, "abs_channel_stats", lambda *args: calls.append(1) or original(*args))
    return calls


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fullgrad_map_with_the_kernel_equals_the_fallback(monkeypatch, dtype):
    """Every spatial conv/BN/ReLU6 site of the small net goes through the kernel; the map equals the
    one the fallback computes (forced by ``ops.use_fallback`` and by ``PYEXPLAIN_BACKEND``)."""
    monkeypatch.delenv("PYEXPLAIN_BACKEND", raising=False)
    calls = _count_kernel_calls(monkeypatch)
    model, x = small_net(dtype=dtype), small_input(3, dtype=dtype)
    fused = pyexplain.explain(model, x, "fullgrad", target=[0, 3, 1]).attribution
    assert len(calls) == 6  # conv1, bn1, depthwise, bn2, relu6, project
    with ops.use_fallback():
        fallback = pyexplain.explain(model, x, "fullgrad", target=[0, 3, 1]).attribution
    monkeypatch.setenv("PYEXPLAIN_BACKEND", "fallback")
    forced = pyexplain.explain(model, x, "fullgrad", target=[0, 3, 1]).attribution
    assert len(calls) == 6
    tolerance = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(fused, fallback, **tolerance)
    torch.testing.assert_close(forced, fallback, rtol=0, atol=0)


@needs_extension
def test_saturation_site_matches_threshold_backward_at_the_bound(monkeypatch):
    """The ReLU6 site's gate ``reference > _below(6)`` keeps an input exactly at 6 and drops the one
    just below, as ``threshold_backward`` does (float32 and float64)."""
    for dtype in (torch.float32, torch.float64):
        six = torch.tensor(6.0, dtype=dtype)
        below = torch.nextafter(six, torch.tensor(0.0, dtype=dtype))
        reference = torch.stack([six, below, six + 1, torch.tensor(-1.0, dtype=dtype)]).view(1, 1, 2, 2)
        g = torch.tensor([1.0, -2.0, -3.0, 4.0], dtype=dtype).view(1, 1, 2, 2)
        threshold = fullgrad_module._below(6.0, dtype)
        weight = torch.full((1,), 6.0, dtype=dtype)
        low, high, total = _kernels.abs_channel_stats(g, weight, reference, threshold)
        assert total.flatten().tolist() == [6.0, 0.0, 18.0, 0.0] and high.item() == 3.0 and low.item() == 0.0
        want = torch.ops.aten.threshold_backward(g, reference, threshold).abs()
        assert torch.equal(total, 6.0 * want[:, 0])
