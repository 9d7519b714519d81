"""Timing and peak-memory measurement shared by the benchmark scripts.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` above the level before the call; on CPU,
the peak resident set size above the level before the call, sampled every millisecond from
``/proc/self/statm`` by a background thread (so it includes allocator caching and temporaries);
free memory the C allocator still holds is released (``malloc_trim``) before the call.
"""
from __future__ import annotations

import ctypes
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _release_free_memory() -> None:
    """Hand memory that glibc's allocator keeps after frees back to the OS (``malloc_trim``), so
    that the resident-set size before a call is what is live, and a call's growth is its own."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


@dataclass
class Measurement:
    seconds: float  # median over repeats
    peak_mb: float  # peak memory above the level before the call


def measure(fn: Callable[[], object], repeats: int = 3, warmup: int = 1, device: str = "cpu",
            clock: Callable[[], float] = time.perf_counter) -> Measurement:
    """Median time of ``fn()`` over ``repeats`` runs, and its peak memory on the first timed run.

    ``clock`` is wall time by default; ``time.thread_time`` (the calling thread's CPU time, with
    one torch thread) is steadier on a machine shared with other jobs."""
    for _ in range(warmup):
        fn()
    times, peak = [], 0.0
    for i in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        stop, samples = threading.Event(), []
        sampler = None
        if i == 0 and not device.startswith("cuda"):
            _release_free_memory()
            base = _rss_bytes()
            samples.append(base)

            def sample() -> None:
                while not stop.is_set():
                    samples.append(_rss_bytes())
                    time.sleep(0.001)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
        start = clock()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(clock() - start)
        if sampler is not None:
            stop.set()
            sampler.join()
            peak = (max(samples) - base) / 2**20
        elif device.startswith("cuda") and i == 0:
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return Measurement(statistics.median(times), peak)


def machine() -> str:
    """One line naming the machine the figures come from."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"CPU only, {os.cpu_count()} cores ({platform.processor() or platform.machine()})"
    return f"{device}; torch {torch.__version__}; {torch.get_num_threads()} threads"
