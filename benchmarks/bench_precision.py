"""Reduced precision and channels-last on the maps: bfloat16 autocast and channels-last memory format
against float32 (contiguous), per method, on scikit-image photos with EfficientNet-Lite0 (real
weights), as ``explain-dataset --precision bfloat16`` / ``--channels-last`` run them. Prints a
markdown table (for benchmarks/RESULTS.md).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/bench_precision.py [--methods gradxinput,lpr,dmbp]
        [--photos 2] [--lpr-iterations 50] [--dmbp-iterations 50] [--modes float32,bfloat16,channels-last]

Agreement with float32: Spearman rank correlation of the signed maps ``[H, W]`` and
``max|Δ| / max|float32 map|``. Time: CPU time of the main thread (one torch thread) per image, wall
time in brackets; peak memory: resident-set growth during the call (``benchmarks/common.py``).
TF32 exists on NVIDIA GPUs only and is not measured here.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import measure  # noqa: E402
from pyexplain.api import explain  # noqa: E402
from pyexplain.dataset.execution import precision  # noqa: E402
from pyexplain.io import builtin_image  # noqa: E402
from pyexplain.models import load_model  # noqa: E402

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
MODES = ("float32", "bfloat16", "channels-last")


def run_mode(net: torch.nn.Module, x: torch.Tensor, method: str, options: dict, mode: str) -> tuple[np.ndarray, float, float, float]:
    """``(map, cpu_seconds, wall_seconds, peak_mib)`` of one explanation in ``mode``."""
    layout = torch.channels_last if mode == "channels-last" else torch.contiguous_format
    net = net.to(memory_format=layout)
    x = x.contiguous(memory_format=layout)
    convs = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=layout) for w in convs), "model not in the requested memory format"
    out = {}

    def call() -> None:
        with precision("bfloat16" if mode == "bfloat16" else "float32", "cpu"):
            out["map"] = explain(net, x, method, **options).map.float()[0].numpy()

    start = time.perf_counter()
    m = measure(call, repeats=1, warmup=0, clock=time.thread_time)
    return out["map"], m.seconds, time.perf_counter() - start, m.peak_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="gradxinput,lpr,dmbp")
    parser.add_argument("--photos", type=int, default=2)
    parser.add_argument("--lpr-iterations", type=int, default=50)
    parser.add_argument("--dmbp-iterations", type=int, default=50)
    parser.add_argument("--modes", default=",".join(MODES), help="float32 always runs (the reference)")
    args = parser.parse_args()
    modes = ["float32", *[m for m in args.modes.split(",") if m != "float32"]]
    if set(modes) - set(MODES):
        parser.error(f"modes: {', '.join(MODES)}")
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    print(f"Machine: {platform.machine()} {os.cpu_count()}-core CPU, no GPU; torch {torch.__version__}; "
          f"{torch.get_num_threads()} torch thread; efficientnet_lite0 (real weights) at 224x224; photos "
          f"{', '.join(PHOTOS[:args.photos])}; load average at start {load_start[0]:.2f} {load_start[1]:.2f}\n")
    net, preprocess = load_model("efficientnet_lite0", None, "cpu")
    inputs = [preprocess(builtin_image(name)) for name in PHOTOS[:args.photos]]
    for mode in MODES:  # one-time kernel set-up outside the timings
        run_mode(net, inputs[0], "gradxinput", {}, mode)
    iterations = {"lpr": args.lpr_iterations, "dmbp": args.dmbp_iterations}
    print("| method | iterations | mode | Spearman ρ vs float32 (mean / min) | max abs diff / max abs map (max) "
          "| CPU s per image (wall) | × float32 CPU time | peak RSS growth MiB (max) |")
    print("|---|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        options = {"iterations": iterations[method]} if method in iterations else {}
        results = {mode: [run_mode(net, x, method, options, mode) for x in inputs] for mode in modes}
        base = results["float32"]
        base_cpu = np.mean([r[1] for r in base])
        for mode in modes:
            rho = [spearmanr(b[0].ravel(), r[0].ravel())[0] if mode != "float32" else 1.0 for b, r in zip(base, results[mode])]
            diff = [float(np.abs(r[0] - b[0]).max() / np.abs(b[0]).max()) for b, r in zip(base, results[mode])]
            cpu = np.mean([r[1] for r in results[mode]])
            wall = np.mean([r[2] for r in results[mode]])
            print(f"| {method} | {options.get('iterations', '-')} | {mode} | {np.mean(rho):.4f} / {np.min(rho):.4f} | "
                  f"{max(diff):.2e} | {cpu:.2f} ({wall:.2f}) | {cpu / base_cpu:.2f} | {max(r[3] for r in results[mode]):.0f} |",
                  flush=True)
    load_end = os.getloadavg()
    print(f"\nload average at end {load_end[0]:.2f} {load_end[1]:.2f}")


if __name__ == "__main__":
    main()
