"""How batches run on the device: precision, batch size from a memory probe, out-of-memory back-off."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import torch

from ..errors import PyExplainError

T = TypeVar("T")

#: Share of the free CUDA memory that an automatically chosen batch may fill.
SAFETY = 0.8
#: Most images per automatically chosen batch.
MAX_AUTO_BATCH = 256
#: Images in the probe batch.
PROBE_ROWS = 2
#: Iterations of an iterative method in the probe. On the CPU, LPR's and DMBP's peak memory at 4
#: iterations is within 5% of that at 32, but 25% below it (LPR) at 2 (benchmarks/bench_probe_iterations.py).
PROBE_ITERATIONS = 4
#: Batch size when none is given and none is measured (the CPU, or nothing to explain).
DEFAULT_BATCH = {"cpu": 8, "cuda": 32}


@contextlib.contextmanager
def precision(mode: str, device_type: str) -> Iterator[None]:
    """``float32`` (exact), ``tf32`` (CUDA matmuls/convolutions with TensorFloat-32; no effect on
    the CPU, where the runner refuses it) or ``bfloat16`` (autocast: convolutions and matmuls in bfloat16, maps returned in float32)."""
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


def measures_memory(device: str) -> bool:
    """Whether the batch size is chosen from a memory probe on ``device`` (CUDA only)."""
    return torch.device(device).type == "cuda"


def fitting_batch_size(probe_peak: int, probe_rows: int, free: int, limit: int, safety: float = SAFETY) -> int:
    """The largest ``b ≤ limit`` with ``b · probe_peak / probe_rows ≤ safety · free``, at least 1.

    ``probe_peak`` is the probe batch's peak memory above what was allocated before it (bytes),
    ``free`` the device's free memory. The probe's whole peak is counted per image, fixed
    overheads included, so the estimate errs towards smaller batches."""
    if probe_rows < 1 or limit < 1:
        raise ValueError("probe_rows and limit must be at least 1")
    if probe_peak <= 0:
        return limit
    return max(1, min(limit, math.floor(safety * free * probe_rows / probe_peak)))


@dataclass(frozen=True)
class BatchChoice:
    size: int
    how: str  #: one line saying where ``size`` came from


def probe_peak_bytes(probe: Callable[[], object], device: torch.device) -> int:
    """Peak CUDA memory allocated while ``probe()`` runs, above the allocation before it."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    probe()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def measured_batch_size(probe: Callable[[], object], probe_rows: int, limit: int, device: torch.device) -> BatchChoice:
    """Run ``probe`` (one explanation of ``probe_rows`` images), then size batches to fit
    :data:`SAFETY` × the free memory (:func:`fitting_batch_size`). A probe that runs out of memory
    gives 1 image per batch (and :class:`BackoffBatcher` reports a single image that does not fit)."""
    try:
        peak: int | None = probe_peak_bytes(probe, device)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        peak = None
    torch.cuda.empty_cache()  # outside the except block, so the failed probe's tensors are freed first
    if peak is None:
        return BatchChoice(1, f"the {probe_rows}-image probe ran out of memory: 1 image per batch")
    free, _ = torch.cuda.mem_get_info(device)
    size = fitting_batch_size(peak, probe_rows, free, limit)
    return BatchChoice(size, f"{probe_rows}-image probe peaked at {peak / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free, "
                             f"{SAFETY:.0%} of it used: {size} images per batch (limit {limit})")


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
