"""Small networks and model builders shared by the DMBP and FullGrad tests."""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import torch
import torchvision
from torch import nn

from model_support import randomize_batchnorm

ROOT = Path(__file__).resolve().parents[1]


def load_naive():
    """``benchmarks/dmbp_naive.py``: the paper's masked-backward + bias-gradient formulation."""
    spec = importlib.util.spec_from_file_location("dmbp_naive", ROOT / "benchmarks" / "dmbp_naive.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class SmallNet(nn.Module):
    """Conv (bias) → BN → ReLU → overlapping max-pool → depthwise conv → BN → ReLU6 (saturating) →
    1×1 conv + residual add → LeakyReLU → avg-pool → adaptive max-pool → Linear → ReLU → Linear."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu6 = nn.ReLU6()
        self.project = nn.Conv2d(8, 8, 1)
        self.leaky = nn.LeakyReLU(0.1)
        self.avg = nn.AvgPool2d(2)
        self.adaptive = nn.AdaptiveMaxPool2d(2)
        self.fc1 = nn.Linear(32, 16)
        self.fc2 = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.relu(self.bn1(self.conv1(x))))
        r = self.relu6(self.bn2(self.depthwise(h)))
        h = self.leaky(self.project(r) + h)
        h = self.adaptive(self.avg(h)).flatten(1)
        return self.fc2(self.relu(self.fc1(h)))


def small_net(seed: int = 0, dtype: torch.dtype = torch.float64) -> SmallNet:
    """A :class:`SmallNet` with non-trivial BN statistics; its ReLU6 saturates on ``small_input``."""
    torch.manual_seed(seed)
    net = SmallNet()
    randomize_batchnorm((net.bn1, net.bn2), mean=(-1, 1), var=(0.5, 2), weight=(0.5, 2), bias=(-0.5, 0.5))
    with torch.no_grad():
        net.bn2.weight.mul_(6)  # pushes part of the ReLU6 inputs above 6
    return net.to(dtype).eval()


def small_input(n: int = 1, seed: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(n, 3, 12, 12, generator=generator, dtype=dtype)


def torchvision_model(name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A random-weight torchvision model in eval mode, initialized cheaply (meta device, then
    N(0, 0.02) weights; BN with random statistics) — speed of construction matters in tests."""
    torch.manual_seed(0)
    with torch.device("meta"):
        model = getattr(torchvision.models, name)()
    model = model.to_empty(device="cpu").to(dtype)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, (2 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.uniform_(-0.1, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def float64_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).double().eval()
