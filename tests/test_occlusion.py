"""Occlusion against Captum's Occlusion, and a hand-computed linear case."""
from __future__ import annotations

import pytest
import torch
import torchvision
from captum.attr import Occlusion
from torch import nn

import pyexplain
from pyexplain.errors import PyExplainError

from baseline_oracles import randomize_batchnorm


@pytest.mark.parametrize("window,stride", [(12, 8), ((8, 6), (4, 5))])
def test_matches_captum_on_resnet18(window, stride):
    # 32 x 40 px is not a multiple of the strides: the last windows overhang and are cut at the border.
    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(2, 3, 32, 40, generator=torch.Generator().manual_seed(1))
    e = pyexplain.explain(model, x, "occlusion", target=[2, 9], window=window, stride=stride, fill=0.25,
                          internal_batch_size=30)
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    theirs = Occlusion(model).attribute(x, target=[2, 9], sliding_window_shapes=(3, wh, ww), strides=(3, sh, sw),
                                        baselines=0.25, perturbations_per_eval=16)
    # Captum puts the pixel's value in every channel; pyexplain spreads it so that the map is the value.
    torch.testing.assert_close(e.map, theirs[:, 0], rtol=1e-4, atol=1e-6 * theirs.abs().max().item())
    torch.testing.assert_close(e.attribution * 3, theirs, rtol=1e-4, atol=1e-6 * theirs.abs().max().item())


def test_hand_computed_linear_model():
    # F(x) = Σ w ⊙ x, one window per pixel row block: a(p) = mean over windows W ∋ p of Σ_W w ⊙ (x − fill).
    g = torch.Generator().manual_seed(2)
    w = torch.randn(1, 1, 4, 6, generator=g, dtype=torch.float64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(24, 1, bias=False)).double()
    with torch.no_grad():
        model[1].weight.copy_(w.reshape(1, -1))
    x = torch.randn(1, 1, 4, 6, generator=g, dtype=torch.float64)
    e = pyexplain.explain(model, x, "occlusion", target=0, window=(4, 3), stride=(1, 3), fill=0.5)
    contribution = (w * (x - 0.5))[0, 0]
    left, right = contribution[:, :3].sum(), contribution[:, 3:].sum()
    expected = torch.cat([left.expand(4, 3), right.expand(4, 3)], 1)
    torch.testing.assert_close(e.map[0], expected)


def test_bad_window():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(PyExplainError, match="larger than the image"):
        pyexplain.explain(model, torch.randn(1, 3, 8, 8), "occlusion", window=9)
    with pytest.raises(PyExplainError, match="stride"):
        pyexplain.explain(model, torch.randn(1, 3, 8, 8), "occlusion", window=4, stride=0)
