"""ε-LRP's fused divisions ``ops.epsilon_divide`` and ``ops.proportional_split``: the compiled kernels
against hand-computed values and the pure-PyTorch fallback (both CPU builds, one and two threads),
which calls take them, and ε-LRP's maps with the kernels against the fallback."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision

import pyexplain
from pyexplain import _kernels, ops

from baseline_oracles import SmallVGG, randomize_batchnorm
from kernel_support import draw, needs_extension

TOLERANCE = {torch.float64: {"rtol": 1e-12, "atol": 0.0}, torch.float32: {"rtol": 1e-6, "atol": 0.0}}
EPS = 0.25  # large enough that the sign of the stabilizer shows in every hand-computed value



def _stabilized(z: float) -> float:
    """``z + ε·s(z)``, ``s = +1`` at ``z ≥ 0`` (−0.0 included), −1 below; NaN stays NaN."""
    return z - EPS if z < 0 else z + EPS


Z_VALUES = [2.0, -3.0, 0.0, -0.0, 0.125, -0.125, -EPS, 1e-30]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_epsilon_divide_by_hand(kernel_setup, dtype):
    z = torch.tensor(Z_VALUES, dtype=dtype)
    r = torch.tensor([1.0, 2.0, -3.0, 4.0, 5.0, -6.0, 7.0, 8.0], dtype=dtype)
    want = torch.tensor([float(ri) / _stabilized(float(zi)) for ri, zi in zip(r, z)], dtype=torch.float64)
    got = _kernels.epsilon_divide(r, z, EPS)
    torch.testing.assert_close(got.double(), want, **TOLERANCE[dtype])
    assert got[3].item() == 4.0 / EPS  # −0.0 takes +ε, as +0.0 does
    assert got[6].item() == 7.0 / (-2 * EPS)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_proportional_split_by_hand(kernel_setup, dtype):
    a = torch.tensor([1.0, -1.0, 2.0, 0.5, -0.0], dtype=dtype)
    b = torch.tensor([3.0, -2.0, -2.0, -1.0, 0.0], dtype=dtype)
    r = torch.tensor([8.0, 6.0, 1.0, -2.0, 5.0], dtype=dtype)
    q = [float(ri) / _stabilized(float(ai) + float(bi)) for ai, bi, ri in zip(a, b, r)]
    share_a, share_b = _kernels.proportional_split(r, a, b, EPS)
    torch.testing.assert_close(share_a.double(), torch.tensor([float(ai) * qi for ai, qi in zip(a, q)], dtype=torch.float64), **TOLERANCE[dtype])
    torch.testing.assert_close(share_b.double(), torch.tensor([float(bi) * qi for bi, qi in zip(b, q)], dtype=torch.float64), **TOLERANCE[dtype])
    assert share_a[2].item() == 0.0 + 2.0 * (1.0 / EPS)  # a + b = 0: the relevance over +ε, shares ±2/ε


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(7,), (2, 3, 5, 5), (1, 64, 40, 41), (3, 16, 33, 31)], ids=str)
def test_kernels_match_the_fallback(kernel_setup, dtype, shape):
    """Random tensors, some exactly zero; the larger shapes exceed one thread's block (2^15 elements)."""
    r, z, a, b = (draw(shape, dtype, seed) for seed in range(4))
    z.view(-1)[::7] = 0.0
    b.view(-1)[::5] = -a.view(-1)[::5]  # a + b = 0
    torch.testing.assert_close(_kernels.epsilon_divide(r, z, 1e-3), ops.epsilon_divide_fallback(r, z, 1e-3),
                               **TOLERANCE[dtype])
    for got, want in zip(_kernels.proportional_split(r, a, b, 1e-3), ops.proportional_split_fallback(r, a, b, 1e-3)):
        torch.testing.assert_close(got, want, **TOLERANCE[dtype])


def test_nan_propagates(kernel_setup):
    z = torch.tensor([math.nan, 1.0])
    r = torch.tensor([1.0, math.nan])
    assert _kernels.epsilon_divide(r, z, EPS).isnan().all()
    share_a, share_b = _kernels.proportional_split(torch.ones(2), torch.tensor([math.nan, 1.0]), torch.ones(2), EPS)
    assert share_a[0].isnan() and share_b[0].isnan() and share_a[1].item() == pytest.approx(1.0 / (2.0 + EPS))


def test_other_layouts_and_differentiable_calls_take_the_fallback(monkeypatch):
    """Non-contiguous, float16, mismatched and differentiated arguments are not the kernels': ``ops``
    still computes them, through the fallback (the kernels are replaced by a failure here)."""
    def no_kernel(*args):
        raise AssertionError("the kernel must not take this call")

    monkeypatch.setattr(_kernels, "epsilon_divide", no_kernel)
    monkeypatch.setattr(_kernels, "proportional_split", no_kernel)
    r, z = draw((2, 3, 4, 5), torch.float32, 0), draw((2, 3, 4, 5), torch.float32, 1)
    cases = [(r.transpose(2, 3), z.transpose(2, 3)), (r.half(), z.half()), (r, z.double()), (r, z[:1]),
             (r, z.clone().requires_grad_(True))]
    for r_, z_ in cases:
        if r_.shape == z_.shape:
            torch.testing.assert_close(ops.epsilon_divide(r_, z_, EPS), r_ / ops.stabilize(z_, EPS))
        assert not _kernels.elementwise_supported("epsilon_divide", r_, z_)
    grad_z = z.clone().requires_grad_(True)
    (ops.epsilon_divide(r, grad_z, EPS).sum() + sum(ops.proportional_split(r, grad_z, z, EPS)).sum()).backward()
    assert grad_z.grad is not None  # differentiable through the fallback
    with torch.no_grad():
        assert _kernels.available() == _kernels.elementwise_supported("epsilon_divide", r, grad_z)


def test_an_extension_without_the_ops_takes_the_fallback(monkeypatch):
    """An extension built from older sources (no ε-LRP ops) leaves ε-LRP on the fallback."""
    if not _kernels.available():
        pytest.skip(f"extension not loaded ({_kernels.LOAD_ERROR})")

    class OlderBuild:
        pass

    r, z = draw((2, 3), torch.float64, 0), draw((2, 3), torch.float64, 1)
    monkeypatch.setattr(_kernels, "_C", OlderBuild())
    assert not _kernels.elementwise_supported("epsilon_divide", r, z)
    assert not _kernels.elementwise_supported("proportional_split", r, z, z)
    torch.testing.assert_close(ops.epsilon_divide(r, z, EPS), r / ops.stabilize(z, EPS), rtol=0, atol=0)


@needs_extension
def test_kernels_reject_bad_arguments():
    r = draw((2, 3, 4), torch.float32, 0)
    for args in [(r, r[:1]), (r, r.double()), (r.transpose(1, 2), r), (r.int(), r.int())]:
        with pytest.raises(RuntimeError, match="epsilon_divide"):
            _kernels._C.epsilon_divide(*args, 0.1)
    with pytest.raises(RuntimeError, match="proportional_split"):
        _kernels._C.proportional_split(r, r, r[:1], 0.1)


def _count_calls(monkeypatch, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(_kernels, name)
    monkeypatch.setattr(_kernels, name, lambda *args: calls.append(1) or original(*args))
    return calls


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lrp_map_with_the_kernels_equals_the_fallback(monkeypatch, dtype):
    """Every ε-rule layer and residual sum of a ResNet-18 goes through the kernels; the map equals the
    one the fallback computes (forced by ``ops.use_fallback``)."""
    monkeypatch.delenv("PYEXPLAIN_BACKEND", raising=False)
    divides, splits = _count_calls(monkeypatch, "epsilon_divide"), _count_calls(monkeypatch, "proportional_split")
    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=5)).to(dtype).eval()
    x = draw((2, 3, 32, 32), dtype, 5)
    fused = pyexplain.explain(model, x, "lrp_epsilon", target=[0, 3]).attribution
    # 20 convolutions (BN folded), the average pool and the linear layer; 8 residual sums.
    assert (len(divides), len(splits)) == (22, 8)
    with ops.use_fallback():
        fallback = pyexplain.explain(model, x, "lrp_epsilon", target=[0, 3]).attribution
    assert (len(divides), len(splits)) == (22, 8)
    scale = fallback.abs().max().item()
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(fused, fallback, rtol=tolerance, atol=tolerance * scale)


@needs_extension
def test_unfolded_batchnorm_goes_through_the_kernel_too(monkeypatch):
    divides = _count_calls(monkeypatch, "epsilon_divide")
    model = randomize_batchnorm(SmallVGG()).double().eval()
    x = draw((1, 3, 16, 16), torch.float64, 2)
    fused = pyexplain.explain(model, x, "lrp_epsilon", target=1, fold_batchnorm=False).attribution
    assert len(divides) == 7  # 3 convolutions, 1 BatchNorm, the adaptive average pool, 2 linear layers
    with ops.use_fallback():
        fallback = pyexplain.explain(model, x, "lrp_epsilon", target=1, fold_batchnorm=False).attribution
    torch.testing.assert_close(fused, fallback, rtol=1e-10, atol=1e-10 * fallback.abs().max().item())
