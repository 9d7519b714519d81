"""A small, seeded training loop for the project's small models (and ROAR's retraining)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..api import eval_mode, model_device


@dataclass
class Split:
    """Images ``x [N, C, H, W]`` (the model's normalized input) and labels ``y [N]``."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return self.x.shape[0]


def seeded_init(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``make()`` under ``torch.manual_seed(seed)``, leaving the global RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one CPU thread for the duration: the small models' convolutions gain little from
    threads (and lose much on a busy machine), and one thread makes CPU training bit-reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_classifier(
    model: nn.Module, train: Split, *, epochs: int, lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
    weight_decay: float = 0.0,
) -> nn.Module:
    """Adam on cross-entropy with a one-cycle learning-rate schedule, minibatches shuffled by a seeded
    generator, one CPU thread; returns ``model`` in eval mode."""
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * -(-len(train) // batch_size))
    model.train()
    with torch.enable_grad(), single_thread():
        for _ in range(epochs):
            for index in torch.randperm(len(train), generator=generator).split(batch_size):
                loss = F.cross_entropy(model(train.x[index].to(device)), train.y[index].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return model.eval()


def accuracy(model: nn.Module, split: Split, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``split``."""
    device = model_device(model)
    correct = 0
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(split), batch_size):
            logits = model(split.x[start:start + batch_size].to(device))
            correct += int((logits.argmax(1).cpu() == split.y[start:start + batch_size]).sum())
    return correct / len(split)
