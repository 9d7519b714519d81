"""RISE equals its definition, its masks have the stated form, and it is seeded and batch-independent."""
from __future__ import annotations

import math

import pytest
import torch
from skimage.transform import resize
from torch import nn

import pyexplain
from pyexplain.errors import PyExplainError
from pyexplain.methods.rise import draw_masks, render_masks


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 5)).eval()


def _masks(count, size, cells, keep, seed):
    grid, dy, dx = draw_masks(count, size, cells, keep, torch.Generator().manual_seed(seed))
    return render_masks(grid, dy, dx, size, torch.float32), grid, dy, dx


def test_equals_probability_weighted_mean_of_masks():
    model = _tiny_model()
    x = torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    count, cells, keep = 37, 3, 0.4
    e = pyexplain.explain(model, x, "rise", target=[1, 3], masks=count, cells=cells, keep=keep, seed=5,
                          internal_batch_size=10)
    masks, *_ = _masks(count, (12, 10), cells, keep, seed=5)
    expected = torch.zeros(2, 12, 10)
    for m in masks:  # one mask at a time, straight from the definition
        with torch.no_grad():
            p = model(x * m).softmax(1)[[0, 1], [1, 3]]
        expected += p[:, None, None] * m[0]
    expected /= count * keep
    torch.testing.assert_close(e.map, expected, rtol=1e-5, atol=1e-7)
    logit_weighted = pyexplain.explain(model, x, "rise", target=[1, 3], masks=count, cells=cells, keep=keep, seed=5,
                                       probability=False)
    assert not torch.allclose(logit_weighted.map, e.map)


def test_masks_are_shifted_upsampled_bernoulli_grids():
    size, cells, keep = (20, 16), 4, 0.3
    masks, grid, dy, dx = _masks(200, size, cells, keep, seed=0)
    assert masks.shape == (200, 1, 20, 16) and masks.min() >= 0 and masks.max() <= 1 + 1e-6
    assert abs(grid.float().mean().item() - keep) < 0.03
    cell_h, cell_w = math.ceil(20 / cells), math.ceil(16 / cells)
    assert int(dy.max()) < cell_h and int(dx.max()) < cell_w
    up = ((cells + 1) * cell_h, (cells + 1) * cell_w)
    for i in (0, 17, 199):  # an independent render: the paper's skimage bilinear resize, then the crop
        big = resize(grid[i, 0].double().numpy(), up, order=1, mode="edge", anti_aliasing=False)
        crop = torch.from_numpy(big[int(dy[i]):int(dy[i]) + 20, int(dx[i]):int(dx[i]) + 16])
        torch.testing.assert_close(masks[i, 0].double(), crop, rtol=1e-6, atol=1e-6)


def test_seeded_and_batch_independent():
    model = _tiny_model()
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    options = dict(masks=25, cells=3, internal_batch_size=8)
    together = pyexplain.explain(model, x, "rise", seed=3, **options).attribution
    again = pyexplain.explain(model, x, "rise", seed=3, **options).attribution
    single = torch.cat([pyexplain.explain(model, x[i:i + 1], "rise", seed=3, **options).attribution for i in range(3)])
    other = pyexplain.explain(model, x, "rise", seed=4, **options).attribution
    assert torch.equal(together, again)
    torch.testing.assert_close(together, single, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(together, other)


def test_bad_options():
    model = _tiny_model()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(PyExplainError, match="keep"):
        pyexplain.explain(model, x, "rise", keep=1.5)
    with pytest.raises(PyExplainError, match="masks"):
        pyexplain.explain(model, x, "rise", masks=0)
