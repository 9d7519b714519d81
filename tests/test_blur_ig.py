"""Blur IG: a hand-computed case (exact for a quadratic model) and completeness on a ReLU CNN."""
from __future__ import annotations

import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

import pyexplain
from pyexplain.errors import PyExplainError

from baseline_oracles import SmallVGG


class Quadratic(nn.Module):
    """``F_k(x) = Σ w_k ⊙ x²``: its Blur IG attribution is ``w_t ⊙ (x² − blur(x)²)`` exactly."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.weights = weights  # [K, C, H, W]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("kchw,nchw->nk", self.weights, x * x)


def test_hand_computed_quadratic():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 9, 11, generator=g, dtype=torch.float64)
    weights = torch.randn(3, 2, 9, 11, generator=g, dtype=torch.float64)
    max_sigma = 2.5
    e = pyexplain.explain(Quadratic(weights), x, "blur_ig", target=[0, 2], max_sigma=max_sigma, steps=7)
    # The path ends at scipy's Gaussian blur with zero padding ("constant", truncate 4).
    blurred = torch.from_numpy(gaussian_filter(x.numpy(), sigma=(0, 0, max_sigma, max_sigma), mode="constant"))
    expected = weights[[0, 2]] * (x * x - blurred * blurred)
    torch.testing.assert_close(e.attribution, expected, rtol=1e-10, atol=1e-12)


def test_completeness_on_relu_cnn():
    torch.manual_seed(0)
    model = SmallVGG().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    max_sigma = 8.0
    e = pyexplain.explain(model, x, "blur_ig", target=[1, 4], max_sigma=max_sigma, steps=200)
    blurred = torch.from_numpy(gaussian_filter(x.numpy(), sigma=(0, 0, max_sigma, max_sigma), mode="constant"))
    with torch.no_grad():
        delta = (model(x) - model(blurred))[[0, 1], [1, 4]]
    torch.testing.assert_close(e.attribution.flatten(1).sum(1), delta, rtol=2e-2, atol=1e-3 * delta.abs().max().item())


def test_batch_equals_single_images():
    torch.manual_seed(0)
    model = SmallVGG().eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    together = pyexplain.explain(model, x, "blur_ig", steps=10, max_sigma=4.0, internal_batch_size=4).attribution
    single = torch.cat([pyexplain.explain(model, x[i:i + 1], "blur_ig", steps=10, max_sigma=4.0).attribution
                        for i in range(3)])
    torch.testing.assert_close(together, single, rtol=1e-5, atol=1e-7)


def test_bad_options():
    model = SmallVGG().eval()
    with pytest.raises(PyExplainError, match="steps"):
        pyexplain.explain(model, torch.randn(1, 3, 16, 16), "blur_ig", steps=0)
    with pytest.raises(PyExplainError, match="max_sigma"):
        pyexplain.explain(model, torch.randn(1, 3, 16, 16), "blur_ig", max_sigma=-1.0)
