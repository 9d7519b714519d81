"""MoRF/LeRF pixel flipping on hand-computed cases."""
import pytest
import torch
from torch import nn

from pyexplain.errors import PyExplainError
from pyexplain.metrics import lerf, morf, pixel_flipping


def linear_model(weights, bias=0.0):
    layer = nn.Linear(len(weights), 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weights, [0.0] * len(weights)]))
        layer.bias.copy_(torch.tensor([bias, -100.0]))
    return nn.Sequential(nn.Flatten(), layer).eval()


X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # F = 1+2+3+4 = 10 with unit weights


def test_morf_lerf_hand_computed():
    model = linear_model([1.0, 1.0, 1.0, 1.0])
    m = morf(model, X, X.clone(), max_fraction=1.0, steps=4)
    # removes 4, then 3, 2, 1: F = 6, 3, 1, 0 → ratios 1, .6, .3, .1, 0
    assert torch.allclose(m.curve[0], torch.tensor([1.0, 0.6, 0.3, 0.1, 0.0]), atol=1e-6)
    assert m.auc.item() == pytest.approx((0.8 + 0.45 + 0.2 + 0.05) / 4, abs=1e-6)
    l = lerf(model, X, X.clone(), max_fraction=1.0, steps=4)
    assert torch.allclose(l.curve[0], torch.tensor([1.0, 0.9, 0.7, 0.4, 0.0]), atol=1e-6)
    assert l.auc.item() == pytest.approx((0.95 + 0.8 + 0.55 + 0.2) / 4, abs=1e-6)
    assert torch.allclose(m.fractions, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    assert m.targets.tolist() == [0]


def test_reference_value_and_five_percent_budget():
    # 10x10 image, weights 1: 5% = 5 pixels in 5 steps of one pixel each.
    x = torch.arange(100, dtype=torch.float32).reshape(1, 1, 10, 10) + 1
    model = linear_model([1.0] * 100)
    total = float(x.sum())
    c = pixel_flipping(model, x, x, steps=5, reference=0.5)
    expected = [1.0] + [(total - sum(100 - i - 0.5 for i in range(k))) / total for k in range(1, 6)]
    assert torch.allclose(c.curve[0], torch.tensor(expected), atol=1e-6)
    assert torch.allclose(c.fractions, torch.linspace(0, 0.05, 6))


def test_ties_keep_raster_order_and_batch_rows_are_independent():
    model = linear_model([1.0, 10.0, 100.0, 1000.0])
    x = torch.ones(2, 1, 2, 2)
    flat = torch.zeros(2, 2, 2)  # all tied: pixels go in raster order 0, 1, 2, 3
    c = morf(model, x, flat, max_fraction=0.5, steps=2)
    assert torch.allclose(c.curve[0], torch.tensor([1.0, 1110 / 1111, 1100 / 1111]), atol=1e-6)
    assert torch.equal(c.curve[0], c.curve[1])
    single = morf(model, x[:1], flat[:1], max_fraction=0.5, steps=2, batch_size=1)
    assert torch.allclose(single.curve[0], c.curve[0])


def test_bad_input():
    model = linear_model([1.0] * 4)
    with pytest.raises(PyExplainError):
        pixel_flipping(model, X, torch.zeros(1, 3, 3))
    with pytest.raises(PyExplainError):
        pixel_flipping(model, X, X, order="sideways")
    with pytest.raises(PyExplainError):
        pixel_flipping(model, X, X * float("nan"))


def test_morf_lerf_agree_with_quantus_pixel_flipping():
    """Quantus flips features of the flattened map (one channel here, so pixels) to the image's
    minimum ("black" = 0 for these images) over the whole image; our 5% curve is its first part."""
    quantus = pytest.importorskip("quantus")
    import numpy as np

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 10 * 10, 3)).eval()
    x = torch.rand(3, 1, 20, 20)
    x[:, :, 0, 0] = 0.0  # the minimum is 0, so Quantus's "black" baseline equals our reference 0
    attribution = torch.randn(3, 1, 20, 20)  # continuous: no ties, so both orders are unique
    with torch.no_grad():
        logits = model(x)
    t = logits.argmax(1)
    clean = logits.gather(1, t[:, None])
    for sign, order in ((1, "morf"), (-1, "lerf")):
        ours = pixel_flipping(model, x, attribution, t, order=order, steps=10)  # 5% of 400 px: 2 px per step
        metric = quantus.PixelFlipping(features_in_step=2, perturb_baseline="black", normalise=False, abs=False,
                                       disable_warnings=True)
        theirs = np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=(sign * attribution).numpy(),
                                   softmax=False, device="cpu", channel_first=True))
        expected = torch.cat([torch.ones(3, 1), torch.tensor(theirs[:, :10], dtype=torch.float32) / clean], 1)
        assert torch.allclose(ours.curve, expected, atol=1e-5)
        assert np.allclose(ours.auc.numpy(), np.trapezoid(expected.numpy(), dx=0.1, axis=1), atol=1e-5)
