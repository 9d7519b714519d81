"""VGG-style and ResNet-style CNNs for the synthetic shapes (32×32 RGB, 6 classes), trained by
:func:`train_synthetic_model` deterministically from a seed and cached per user.

- ``SyntheticVGG``: (conv3–BN–ReLU) ×2, max-pool, (conv3–BN–ReLU) ×2, max-pool, conv3–BN–ReLU,
  max-pool (8, 16, 32 channels), fc–ReLU–fc, as VGG16-BN.
- ``SyntheticResNet``: conv3–BN–ReLU stem and three basic residual blocks (8, 16, 32 channels,
  strides 1, 2, 2) whose single ``relu`` module is called twice per block, as torchvision's ResNet;
  global average pooling and one linear layer.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .cache import trained_state, weights_name
from .synthetic import CLASSES, SyntheticSet, make_synthetic
from .training import Split, seeded_init, train_classifier

VERSION = 1
TRAIN_SIZE, TRAIN_TWO_CLASS, TEST_SIZE = 2400, 600, 600
TRAIN_SEED_OFFSET, TWO_CLASS_SEED_OFFSET, TEST_SEED_OFFSET = 1000, 1500, 2000


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


class SyntheticVGG(nn.Module):
    def __init__(self, classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(3, 8), *_conv_bn_relu(8, 8), nn.MaxPool2d(2),
            *_conv_bn_relu(8, 16), *_conv_bn_relu(16, 16), nn.MaxPool2d(2),
            *_conv_bn_relu(16, 32), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class SyntheticResNet(nn.Module):
    def __init__(self, classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.layers = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 16, 2), BasicBlock(16, 32, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], int]] = {  # name → (factory, epochs)
    "synthetic_vgg": (SyntheticVGG, 10),
    "synthetic_resnet": (SyntheticResNet, 10),
}


def synthetic_train_set(seed: int = 0) -> Split:
    """Training set of model ``seed``: 2,400 single-shape images and 600 two-class images, each of the
    latter once per class it holds (so the softmax learns to share its mass between two present
    classes, which cIM scores)."""
    single = make_synthetic(TRAIN_SIZE, seed + TRAIN_SEED_OFFSET)
    two = make_synthetic(TRAIN_TWO_CLASS, seed + TWO_CLASS_SEED_OFFSET, two_class=True)
    return Split(torch.cat([single.x, two.x, two.x]), torch.cat([single.y, two.labels[:, 0], two.labels[:, 1]]))


def synthetic_test_set(seed: int = 0, n: int = TEST_SIZE) -> SyntheticSet:
    """Test set of model ``seed``: ``n`` single-shape images (generator seed disjoint from training)."""
    return make_synthetic(n, seed + TEST_SEED_OFFSET)


def train_synthetic_model(name: str, train: Split, seed: int = 0, epochs: int | None = None) -> nn.Module:
    """A freshly initialized ``name`` model trained on ``train`` (Adam, one-cycle, deterministic from ``seed``)."""
    factory, default_epochs = ARCHITECTURES[name]
    model = seeded_init(factory, seed)
    return train_classifier(model, train, epochs=epochs or default_epochs, lr=3e-3, batch_size=64, seed=seed)


def load_synthetic_model(name: str, seed: int = 0, device: str | torch.device = "cpu", retrain: bool = False) -> tuple[nn.Module, SyntheticSet]:
    """The trained ``synthetic_vgg`` / ``synthetic_resnet`` (eval mode) and its single-shape test set:
    the shipped weights for seed 0, else trained and cached on first use (``retrain``: trained anew)."""
    state = trained_state(weights_name(name, VERSION, seed),
                         lambda: train_synthetic_model(name, synthetic_train_set(seed), seed).state_dict(), retrain)
    model = ARCHITECTURES[name][0]()
    model.load_state_dict(state)
    return model.to(device).eval(), synthetic_test_set(seed)
