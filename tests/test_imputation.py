"""Noisy linear imputation (ROAD) and remove_top's linear fill against hand-computed truth (ROAR with either
fill: tests/test_metrics.py)."""
import pytest
import torch

from pyexplain.errors import PyExplainError
from pyexplain.metrics import linear_imputation, remove_top

DIRECT, DIAGONAL = 1 / 6, 1 / 12


def neighbour_mean(image, y, x):
    """Weighted mean of the in-image 8-neighbours of (y, x) in ``image [C, H, W]``, by a plain loop."""
    total, weight = torch.zeros(image.shape[0], dtype=torch.float64), 0.0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ny, nx = y + dy, x + dx
            if (dy, dx) != (0, 0) and 0 <= ny < image.shape[1] and 0 <= nx < image.shape[2]:
                w = DIRECT if dy == 0 or dx == 0 else DIAGONAL
                total += w * image[:, ny, nx].double()
                weight += w
    return total / weight


def test_one_removed_pixel_is_the_weighted_mean_of_its_neighbours():
    x = torch.arange(12, dtype=torch.float64).reshape(1, 1, 3, 4) ** 2  # not linear: the weights matter
    removed = torch.zeros(1, 3, 4, dtype=torch.bool)
    removed[0, 1, 1] = True
    out = linear_imputation(x, removed, noise=0.0)
    # neighbours of (1,1): direct 1, 4, 6, 9 → 1, 16, 36, 81; diagonal 0, 2, 8, 10 → 0, 4, 64, 100
    expected = (1 + 16 + 36 + 81) / 6 + (0 + 4 + 64 + 100) / 12
    assert out[0, 0, 1, 1].item() == pytest.approx(expected, abs=1e-12)
    corner = torch.zeros(1, 3, 4, dtype=torch.bool)
    corner[0, 0, 0] = True  # in-image neighbours only: 1 and 16 (direct 4 → x=4), 25 (diagonal)
    out = linear_imputation(x, corner, noise=0.0)
    assert out[0, 0, 0, 0].item() == pytest.approx((1 / 6 * 1 + 1 / 6 * 16 + 1 / 12 * 25) / (5 / 12), abs=1e-12)


def test_a_linear_ramp_is_reproduced_inside_a_removed_block():
    rows, cols = torch.meshgrid(torch.arange(9.0, dtype=torch.float64), torch.arange(10.0, dtype=torch.float64), indexing="ij")
    ramp = torch.stack([0.3 * rows - 0.7 * cols + 2.0, -1.1 * rows + 0.2 * cols]).unsqueeze(0)
    removed = torch.zeros(1, 9, 10, dtype=torch.bool)
    removed[0, 2:7, 3:8] = True  # a 5×5 block: most of its unknowns have only unknown neighbours
    out = linear_imputation(ramp, removed, noise=0.0)
    assert torch.allclose(out, ramp, atol=1e-10)


def test_every_imputed_pixel_is_the_mean_of_its_final_neighbours_and_known_pixels_never_change():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 7, 6, generator=g)
    removed = torch.rand(3, 7, 6, generator=g) < 0.6  # border pixels and coupled regions included
    out = linear_imputation(x, removed, noise=0.0)
    for i, y, c in removed.nonzero().tolist():
        assert torch.allclose(out[i, :, y, c].double(), neighbour_mean(out[i], y, c), atol=1e-5)
    noisy = linear_imputation(x, removed, noise=0.5, seed=3)
    assert torch.equal(noisy[~removed[:, None].expand_as(x)], x[~removed[:, None].expand_as(x)])
    assert noisy.dtype == x.dtype


def test_seeded_noise_is_deterministic_and_has_the_asked_spread():
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    removed = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(2)) < 0.5
    a, b = linear_imputation(x, removed, 0.1, seed=5), linear_imputation(x, removed, 0.1, seed=5)
    assert torch.equal(a, b)
    assert not torch.equal(a, linear_imputation(x, removed, 0.1, seed=6))
    eps = (a - linear_imputation(x, removed, 0.0))[removed[:, None]]
    assert eps.std().item() == pytest.approx(0.1, rel=0.15) and abs(eps.mean().item()) < 0.03


def test_remove_top_linear_fill_and_a_fully_removed_image():
    x = torch.arange(9.0).reshape(1, 1, 3, 3)  # a ramp: the top pixel (8, a corner) is off the plane's mean
    out = remove_top(x, x, 1 / 9, "linear", noise=0.0)
    assert out[0, 0, 2, 2].item() == pytest.approx((DIRECT * 5 + DIRECT * 7 + DIAGONAL * 4) / (5 / 12), abs=1e-6)
    assert torch.equal(out.flatten()[:8], x.flatten()[:8])
    everything = remove_top(x, x, 1.0, "linear", noise=0.0)
    assert torch.equal(everything, torch.zeros_like(x))
    with pytest.raises(PyExplainError):
        remove_top(x, x, 0.5, "median")
    with pytest.raises(PyExplainError):
        linear_imputation(x, torch.zeros(1, 2, 3, dtype=torch.bool))
