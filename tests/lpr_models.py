"""Small classifiers for the LPR tests, also loadable as ``lpr_models:FACTORY`` (user models)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model_support import randomize_batchnorm


class TinyResidualNet(nn.Module):
    """Convolution, BN, one in-place ReLU module reused three times (trunk, residual, head), a grouped
    convolution, max-pooling, a stride-2 convolution with ReLU6 and a two-layer head."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, groups=3, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.act6 = nn.ReLU6()
        self.fc1 = nn.Linear(32, 16)
        self.fc2 = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)) + y)
        y = self.act6(self.conv3(self.pool(y)))
        y = torch.flatten(F.adaptive_avg_pool2d(y, 2), 1)
        return self.fc2(self.relu(self.fc1(y)))


def tiny(seed: int = 0) -> TinyResidualNet:
    """A seeded :class:`TinyResidualNet` in eval mode with non-trivial BN statistics."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TinyResidualNet()
        randomize_batchnorm((model.bn1, model.bn2), mean=(-0.2, 0.2), var=(0.5, 1.5), weight=(0.5, 1.5), bias=(-0.2, 0.2))
    return model.eval()


def other_tiny() -> nn.Module:
    """A different small ReLU network (other channel counts), for rules-mismatch checks."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                             nn.Linear(16, 5)).eval()
