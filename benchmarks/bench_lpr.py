"""LPR speed: the optimized ``method="lpr"`` against the naive paper implementation (``lpr_naive.py``).

Per model at 224×224: the time of one no-grad forward pass of one image; the naive LPR on one image;
the optimized LPR on one image and on a batch of ``--batch`` images. Each LPR run does
``--iterations`` iterations (the ratio is what matters). Printed per configuration: seconds per image,
iteration/forward ratio (seconds per image and iteration over the forward time), speed-up over
naive, and peak memory.

Every measurement runs in its own process: it loads the model, prepares the images, notes its
resident set size, runs the configuration once with one iteration (warm-up: allocator, kernel
selection), then times it. Peak memory is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the
process's peak RSS) minus the RSS before the warm-up: what the run adds on top of the loaded model.
Configurations alternate for ``--rounds`` rounds and the fastest round is kept (the machine may be
shared). EfficientNet-Lite0 has its real weights; VGG16 and ResNet-50 random ones.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/bench_lpr.py --iterations 3 --batch 4 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(name: str, mode: str, iterations: int, batch: int) -> dict:
    """One measurement in this process: ``mode`` is forward, naive or optimized."""
    import pyexplain
    from lpr_naive import lpr_naive
    from pyexplain.io import builtin_image

    torch.manual_seed(0)
    model, preprocess = pyexplain.load_model(name, random_weights=name != "efficientnet_lite0")
    x = torch.cat([preprocess(builtin_image(PHOTOS[i % len(PHOTOS)])) for i in range(batch)])
    with torch.no_grad():
        target = int(model(x[:1]).argmax())
    if mode == "forward":
        def run(k: int):
            with torch.no_grad():
                for _ in range(5):
                    model(x)
    elif mode == "naive":
        def run(k: int):
            for i in range(batch):
                lpr_naive(model, x[i:i + 1], target, iterations=k)
    else:
        def run(k: int):
            pyexplain.explain(model, x, "lpr", iterations=k, normalize="minmax")  # as the naive
    base = _rss_mb()
    run(1)
    start = time.perf_counter()
    run(iterations)
    seconds = time.perf_counter() - start
    if mode == "forward":
        seconds /= 5
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds_per_image": seconds / batch, "peak_mb": peak - base}


def measure(name: str, mode: str, iterations: int, batch: int) -> dict:
    command = [sys.executable, __file__, "--worker", name, mode, str(iterations), str(batch)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_model(name: str, iterations: int, batch: int, rounds: int) -> list[str]:
    configs = [("naive, 1 image", "naive", 1), ("optimized, 1 image", "optimized", 1),
               (f"optimized, batch of {batch}", "optimized", batch)]
    forward = min(measure(name, "forward", 1, 1)["seconds_per_image"] for _ in range(rounds))
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for label, mode, n in configs:
            result = measure(name, mode, iterations, n)
            if label not in best or result["seconds_per_image"] < best[label]["seconds_per_image"]:
                best[label] = result
    naive = best["naive, 1 image"]["seconds_per_image"]
    rows = [f"| {name} | forward pass, 1 image | {forward:.3f} | 1 | | |"]
    for label, _, _ in configs:
        per_image = best[label]["seconds_per_image"]
        rows.append(f"| {name} | {label} | {per_image:.2f} | {per_image / iterations / forward:.1f} | "
                    f"{naive / per_image:.2f}× | {best[label]['peak_mb']:.0f} |")
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        name, mode, iterations, batch = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(worker(name, mode, iterations, batch)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet_lite0,resnet50,vgg16")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"CPU, {os.cpu_count()} cores; torch {torch.__version__}; {torch.get_num_threads()} threads; "
          f"{args.iterations} LPR iterations per run at 224×224, fastest of {args.rounds} rounds\n")
    print("| model | run | s / image | iteration / forward | speed-up vs naive | peak MB above the loaded model |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for row in bench_model(name, args.iterations, args.batch, args.rounds):
            print(row, flush=True)


if __name__ == "__main__":
    main()
