"""Tiny classifiers for the explain-dataset tests, loaded as ``dataset_models:FACTORY`` (user models)."""
from __future__ import annotations

import os
import time

import torch
from torch import nn


def tiny_cnn() -> nn.Module:
    """Two convs, ReLU, max-pool, linear head over 10 classes; weights seeded (identical in every process)."""
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        return nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10),
        )


class _Slow(nn.Module):
    def __init__(self, inner: nn.Module, seconds: float) -> None:
        super().__init__()
        self.inner, self.seconds = inner, seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.inner(x)


def slow_tiny_cnn() -> nn.Module:
    """:func:`tiny_cnn` taking 0.15 s per forward, so a run can be killed mid-way."""
    return _Slow(tiny_cnn(), 0.15)


class _OutOfMemoryAbove(nn.Module):
    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"fake: {x.shape[0]} rows exceed {self.limit}")
        return self.inner(x)


def oom_above_3() -> nn.Module:
    """:func:`tiny_cnn` raising ``torch.OutOfMemoryError`` on batches of more than 3 rows (a device that fits 3)."""
    return _OutOfMemoryAbove(tiny_cnn(), 3)


class _Gated(nn.Module):
    """Waits before every forward but the first while the file named by ``$GATE_FILE`` exists."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        gate = os.environ.get("GATE_FILE")
        deadline = time.monotonic() + 120
        while self.calls > 1 and gate and os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.inner(x)


def gated_tiny_cnn() -> nn.Module:
    """:func:`tiny_cnn` that holds a run after its first batch while ``$GATE_FILE`` exists."""
    return _Gated(tiny_cnn())


class _Broken(nn.Module):
    """:func:`tiny_cnn` whose logits are spoiled: all NaN, or class 0 at +inf (the others finite)."""

    def __init__(self, inner: nn.Module, how: str) -> None:
        super().__init__()
        self.inner, self.how = inner, how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        if self.how == "nan":
            return logits * float("nan")
        return torch.cat([torch.full_like(logits[:, :1], float("inf")), logits[:, 1:]], 1)


def nan_cnn() -> nn.Module:
    """A model whose every output is NaN (its maps are NaN too)."""
    return _Broken(tiny_cnn(), "nan")


def inf_logit_cnn() -> nn.Module:
    """A model whose class 0 logit is +inf: top-1 with a non-finite score and probabilities, finite (zero) gradients."""
    return _Broken(tiny_cnn(), "inf")
