"""Fused kernels (pyexplain._C) vs the pure-PyTorch fallback, in one run.

1. Op microbenchmarks: ``plugin_rule`` and ``masked_relu_backward`` -- forward, backward and double
   backward -- at every trunk activation of VGG16 and EfficientNet-Lite0 (one 224×224 image, the
   shapes recorded from a real forward pass), summed over the model's activation calls, as LPR
   (``W`` per position, the constant ``f − f_ref`` computed once, so ``f_ref=None``) and DMBP (σ mask
   per position) use them; the gate is the call's own (ReLU or ReLU6). Timings: the fastest of
   repeats in which extension and fallback take turns; the speed-up is fallback/extension.
   Peak memory: the largest activation's forward + backward + double backward, as the rise of the
   process's peak RSS (CPU; the peak is reset first) or of ``torch.cuda.max_memory_allocated``.
2. End to end: LPR and DMBP per image (a few iterations each) with the extension on vs off, when
   those methods are registered.

Usage: ``PYTHONPATH=$PWD python benchmarks/bench_kernels.py [--threads 1 2] [--repeats 5]``
(prints markdown; GPU rows when a CUDA device is present).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import os
import platform
import time
from collections import Counter
from typing import Callable

import torch

import pyexplain
from pyexplain import _kernels, ops
from pyexplain.core.activations import identity_rule, intercept_activations
from pyexplain.registry import get_method, list_methods

MODELS = ("vgg16", "efficientnet_lite0")


def activation_calls(name: str) -> Counter:
    """``{(shape, high): count}`` for the trunk activation calls of one 224×224 image."""
    model, _ = pyexplain.load_model(name, random_weights=name != "efficientnet_lite0")
    seen: Counter = Counter()

    def record(call, x):
        if call.spatial:
            seen[(tuple(call.shape), call.high)] += 1
        return identity_rule(call, x)

    with torch.no_grad(), intercept_activations(model, record):
        model(torch.randn(1, 3, 224, 224))
    return seen


def _rand(shape, device, seed, requires_grad=False, low=None, high=None) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    t = torch.randn(shape, generator=gen) if low is None else torch.rand(shape, generator=gen) * (high - low) + low
    return t.to(device).requires_grad_(requires_grad)


def op_case(op: str, shape: tuple, high: float, device: str):
    """(function, inputs, the inputs that require grad) as LPR / DMBP call the op."""
    if op == "plugin_rule":
        g = _rand(shape, device, 1, True)
        shift = _rand(shape, device, 2)
        weight = _rand(shape, device, 4, True)
        return ops.plugin_rule, (g, shift, None, weight), (g, weight)
    g = _rand(shape, device, 1, True)
    f = _rand(shape, device, 2, low=-2.0, high=8.0)
    mask = torch.sigmoid(_rand(shape, device, 3)).requires_grad_()
    return (lambda g, f, m: ops.masked_relu_backward(g, f, m, 0.0, high)), (g, f, mask), (g, mask)


def mode_closures(fn, inputs, wanted) -> dict[str, Callable[[], object]]:
    """The three timed steps; backward and double backward run on graphs built once, beforehand."""
    y = fn(*inputs)
    gy = torch.randn_like(y).requires_grad_()
    first = torch.autograd.grad(y, wanted, gy, create_graph=True)
    tangents = [torch.randn_like(d) for d in first]
    return {
        "forward": lambda: fn(*inputs),
        "backward": lambda: torch.autograd.grad(y, wanted, gy, retain_graph=True),
        "double backward": lambda: torch.autograd.grad(first, (gy, *wanted), tangents, retain_graph=True),
    }


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def fastest_seconds(steps: dict[bool, Callable[[], object]], device: str, repeats: int,
                    clock: Callable[[], float]) -> dict[bool, float]:
    """Fastest of ``repeats`` timings of each step, the steps taking turns (extension, fallback,
    extension, ...), so that a burst of load from other jobs hits both sides alike; the minimum is
    the timing least inflated by that load."""
    for step in steps.values():
        for _ in range(2):  # warm-up: lets the allocator settle on its buffer sizes
            step()
    _sync(device)
    best = {key: math.inf for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            start = clock()
            step()
            _sync(device)
            best[key] = min(best[key], clock() - start)
    return best


def clock_for(device: str, threads: int) -> tuple[str, Callable[[], float]]:
    """One CPU thread: the thread's CPU time (steady on a machine shared with other jobs); else wall time."""
    if device == "cpu" and threads == 1:
        return "thread CPU time", time.thread_time
    return "wall", time.perf_counter


def backend_context(use_extension: bool):
    return contextlib.nullcontext() if use_extension else ops.use_fallback()


def _under_backend(use_extension: bool, step: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with backend_context(use_extension):
            return step()
    return run


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_memory_mib(op: str, shape: tuple, high: float, device: str, use_extension: bool) -> float:
    """Rise of peak memory over one forward + backward + double backward (inputs excluded)."""
    with backend_context(use_extension):
        fn, inputs, wanted = op_case(op, shape, high, device)
        if device == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            with contextlib.suppress(OSError):
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            base = _status_kib("VmRSS") * 1024
            with open("/proc/self/clear_refs", "w") as refs:  # resets the peak RSS (VmHWM)
                refs.write("5")
        y = fn(*inputs)
        gy = torch.randn_like(y).requires_grad_()
        first = torch.autograd.grad(y, wanted, gy, create_graph=True)
        torch.autograd.grad(first, (gy, *wanted), [torch.ones_like(d) for d in first])
        _sync(device)
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else _status_kib("VmHWM") * 1024
    return (peak - base) / 2**20


def microbenchmarks(device: str, threads: int, repeats: int, calls: dict[str, Counter]) -> list[str]:
    clock_name, clock = clock_for(device, threads)
    rows = []
    for model_name, counter in calls.items():
        for op in ("plugin_rule", "masked_relu_backward"):
            totals = {(mode, ext): 0.0 for mode in ("forward", "backward", "double backward") for ext in (True, False)}
            for (shape, high), count in counter.items():
                closures = {}
                for use_extension in (True, False):
                    with backend_context(use_extension):
                        closures[use_extension] = mode_closures(*op_case(op, shape, high, device))
                for mode in ("forward", "backward", "double backward"):
                    # the graphs were built under each backend; the forward step reads the switch at call time
                    steps = {ext: _under_backend(ext, closures[ext][mode]) for ext in (True, False)}
                    for ext, seconds in fastest_seconds(steps, device, repeats, clock).items():
                        totals[(mode, ext)] += count * seconds
            largest = max(counter, key=lambda key: math.prod(key[0]))
            memory = {ext: peak_memory_mib(op, largest[0], largest[1], device, ext) for ext in (True, False)}
            for ext in (True, False):  # what one LPR / DMBP iteration runs of the op
                totals[("forward + backward", ext)] = totals[("forward", ext)] + totals[("backward", ext)]
            for mode in ("forward", "backward", "double backward", "forward + backward"):
                ext_ms, fb_ms = 1e3 * totals[(mode, True)], 1e3 * totals[(mode, False)]
                rows.append(f"| {device} | {threads} ({clock_name}) | {model_name} | {op} | {mode} | {ext_ms:.2f} | {fb_ms:.2f} | "
                            f"{fb_ms / ext_ms:.2f}× | {memory[True]:.0f} / {memory[False]:.0f} |")
    return rows


def end_to_end(threads: int, iterations: int) -> list[str]:
    clock_name, clock = clock_for("cpu", threads)
    registered = {info.name for info in list_methods()}
    rows = []
    for method in ("lpr", "dmbp"):
        if method not in registered:
            rows.append(f"| {method} | - | not measured (method not registered on this branch) | | | |")
            continue
        info = get_method(method)
        options = {key: iterations for key in ("iterations", "iters", "steps") if key in info.defaults}
        for model_name in MODELS:
            model, preprocess = pyexplain.load_model(model_name, random_weights=model_name != "efficientnet_lite0")
            x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
            seconds = {}
            for use_extension in (True, False):
                with backend_context(use_extension):
                    if options:
                        pyexplain.explain(model, x, method, **{k: 1 for k in options})  # warm-up
                    start = clock()
                    pyexplain.explain(model, x, method, **options)
                    seconds[use_extension] = clock() - start
            label = (f"{iterations} iterations" if options else "default options") + f", {clock_name}"
            rows.append(f"| {method} | {model_name} | {label} | {seconds[True]:.2f} | {seconds[False]:.2f} | "
                        f"{seconds[False] / seconds[True]:.2f}× |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--e2e-iterations", type=int, default=2)
    parser.add_argument("--parts", nargs="+", choices=("ops", "e2e"), default=["ops", "e2e"])
    args = parser.parse_args()
    info = _kernels.build_info()
    print(f"torch {torch.__version__}; backend {pyexplain.backend()}; extension: {info or _kernels.LOAD_ERROR}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    if "ops" in args.parts:
        op_microbenchmarks(args)
    if "e2e" in args.parts:
        torch.set_num_threads(args.threads[0])
        print(f"\nEnd to end, one 224×224 image, CPU, {args.threads[0]} thread(s):\n")
        print("| method | model | run | extension s/image | fallback s/image | speed-up |")
        print("|---|---|---|---|---|---|")
        print("\n".join(end_to_end(args.threads[0], args.e2e_iterations)))
    print(f"\nload average {os.getloadavg()[0]:.1f} at end")


def op_microbenchmarks(args: argparse.Namespace) -> None:
    calls = {name: activation_calls(name) for name in MODELS}
    for name, counter in calls.items():
        print(f"{name}: {sum(counter.values())} trunk activation calls, {len(counter)} distinct shapes")
    print("\n| device | threads | model | op | step | extension ms | fallback ms | speed-up | peak MiB ext / fallback |")
    print("|---|---|---|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        print("\n".join(microbenchmarks("cpu", threads, args.repeats, calls)), flush=True)
    if torch.cuda.is_available() and _kernels.cuda_built():
        torch.set_num_threads(args.threads[0])
        print("\n".join(microbenchmarks("cuda", args.threads[0], args.repeats, calls)), flush=True)
    else:
        print("| cuda | - | vgg16, efficientnet_lite0 | both | all | not measured (no GPU available) | | | |")


if __name__ == "__main__":
    main()
