"""How batches run on the device: precision, memory format, and out-of-memory back-off."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, TypeVar

import torch

from ..errors import PyExplainError

T = TypeVar("T")


@contextlib.contextmanager
def precision(mode: str, device_type: str) -> Iterator[None]:
    """``float32`` (exact), ``tf32`` (CUDA matmuls/convolutions with TensorFloat-32; no effect on
    CPU) or ``bfloat16`` (autocast: convolutions and matmuls in bfloat16, maps returned in float32)."""
    if mode == "float32":
        yield
    elif mode == "tf32":
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    elif mode == "bfloat16":
        with torch.autocast(device_type, dtype=torch.bfloat16):
            yield
    else:
        raise PyExplainError(f"unknown precision {mode!r}")


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError)


class BackoffBatcher:
    """Runs row ranges in chunks of at most ``size`` rows; on an out-of-memory error the failed
    chunk is retried with half as many rows, and the smaller size is kept for later calls."""

    def __init__(self, size: int, on_backoff: Callable[[int], None] | None = None) -> None:
        if size < 1:
            raise PyExplainError(f"batch size must be at least 1, got {size}")
        self.size = size
        self.on_backoff = on_backoff

    def run(self, n: int, compute: Callable[[int, int], T]) -> list[T]:
        """``[compute(start, stop), ...]`` covering rows ``0..n`` in order."""
        parts: list[T] = []
        start = 0
        while start < n:
            stop = min(n, start + self.size)
            try:
                parts.append(compute(start, stop))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                failed = stop - start
            else:
                start = stop
                continue
            if failed == 1:  # outside the except block, so the failed attempt's tensors are freed
                raise PyExplainError("out of memory with a single image; use a smaller model or input size, or the CPU")
            self.size = failed // 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if self.on_backoff:
                self.on_backoff(self.size)
        return parts
