"""The digits CNN: a two-convolution ReLU/max-pool network on scikit-learn's bundled handwritten
digits (1,797 8×8 images, no download), the LPR paper's MNIST setting in miniature.

Images are upsampled bilinearly to 28×28 (MNIST's size) and scaled to ``[0, 1]`` (ink = 1), so the
reference input 0 is blank paper. The split (80% train / 20% test, stratified by nothing but a
seeded permutation) and the training (Adam, one-cycle schedule, 8 epochs) are deterministic from
``seed``; seed 0's weights ship with the package, other seeds' are trained on first use and cached
(:mod:`pyexplain.data.cache`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ..preprocess import Preprocess, as_pil
from .cache import trained_state, weights_name
from .training import Split, accuracy, seeded_init, train_classifier

SIZE = 28
LABELS = tuple(str(d) for d in range(10))
VERSION = 1
EPOCHS = 8


class DigitsCNN(nn.Module):
    """conv5×5(1→8)–ReLU–maxpool2 → conv5×5(8→16)–ReLU–maxpool2 → fc(784→64)–ReLU → fc(64→10)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class GrayPreprocess(Preprocess):
    """PIL image → ``[1, 1, size, size]`` grayscale in ``[0, 1]`` (ink bright, as in the dataset)."""

    def view(self, image: Image.Image | np.ndarray) -> Image.Image:
        return as_pil(image).convert("L").resize((self.size, self.size), Image.Resampling.BILINEAR)

    def __call__(self, image: Image.Image | np.ndarray) -> Tensor:
        from torchvision.transforms import functional as TF

        x = TF.to_tensor(self.view(image))
        return TF.normalize(x, list(self.mean), list(self.std)).unsqueeze(0)


PREPROCESS = GrayPreprocess(SIZE, (0.0,), (1.0,), LABELS)


def digits_splits(seed: int = 0, test_fraction: float = 0.2) -> tuple[Split, Split]:
    """``(train, test)``: the 1,797 digits at 28×28 in ``[0, 1]``, split by a permutation seeded by ``seed``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return Split(x[train], y[train]), Split(x[test], y[test])


def train_digits_cnn(train: Split, seed: int = 0, epochs: int = EPOCHS) -> DigitsCNN:
    """A freshly initialized :class:`DigitsCNN` trained on ``train`` (deterministic from ``seed``)."""
    model = seeded_init(DigitsCNN, seed)
    return train_classifier(model, train, epochs=epochs, lr=1e-2, batch_size=64, seed=seed)


def load_digits_cnn(seed: int = 0, device: str | torch.device = "cpu", retrain: bool = False) -> tuple[DigitsCNN, Split]:
    """The trained digits CNN (eval mode, on ``device``) and its test split: the shipped weights for seed
    0, else trained and cached on first use (``retrain``: trained anew)."""
    train, test = digits_splits(seed)
    state = trained_state(weights_name("digits_cnn", VERSION, seed), lambda: train_digits_cnn(train, seed).state_dict(), retrain)
    model = DigitsCNN()
    model.load_state_dict(state)
    return model.to(device).eval(), test


def digits_accuracy(seed: int = 0) -> float:
    """Test accuracy of the digits CNN for ``seed``."""
    model, test = load_digits_cnn(seed)
    return accuracy(model, test)
