"""DMBP speed: the gated-forward implementation against the paper's formulation (dmbp_naive.py).

For EfficientNet-Lite0 (real weights), ResNet-50 and VGG16 (random weights) at 224×224, one image:
the time of one forward pass, of one DMBP iteration with the gated forward (``pyexplain``) and with
the naive reference (masked backward passes with bias gradients, ``create_graph=True``, double
backward), their ratio, each iteration's cost in forward passes, and the peak resident memory
above the loaded model during the iterations. Each measurement runs in its own process.

    python benchmarks/bench_dmbp.py [--iterations 3] [--threads 1] [--models efficientnet_lite0,resnet50,vgg16]

Prints a Markdown table. Timings are wall-clock medians over ``--iterations`` after one warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Samples the process's resident memory every 2 ms; ``peak`` is the maximum seen."""

    def __enter__(self):
        self.peak, self._stop = _rss(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def worker(model_name: str, variant: str, iterations: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    from benchmarks.dmbp_naive import NaiveDMBP
    from pyexplain.core.targets import Targets
    from pyexplain.methods.dmbp import DMBPObjective, optimize
    from pyexplain.models import load_model

    torch.manual_seed(0)
    model, _ = load_model(model_name, None, "cpu", random_weights=model_name != "efficientnet_lite0")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    times = []
    if variant == "forward":
        with torch.no_grad():
            model(x)
            base = _rss()
            with PeakRSS() as memory:
                for _ in range(iterations):
                    start = time.perf_counter()
                    model(x)
                    times.append(time.perf_counter() - start)
    else:
        with torch.no_grad():
            target = int(model(x).argmax())
        base = _rss()
        with PeakRSS() as memory:
            if variant == "gated":
                objective = DMBPObjective(model, x, Targets(torch.tensor([target])))
                steps = optimize(objective, objective.init_logits(), iterations + 1, 0.01, "all")
                step = lambda: next(steps)  # noqa: E731
            else:
                step = NaiveDMBP(model, x, target).step
            step()  # warm-up
            for _ in range(iterations):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_mib": (memory.peak - base) / 2 ** 20,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def measure(model_name: str, variant: str, iterations: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", model_name, variant, str(iterations), str(threads)],
                         capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--models", default="efficientnet_lite0,resnet50,vgg16")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable ratios on a shared machine)")
    parser.add_argument("--worker", nargs=4, metavar=("MODEL", "VARIANT", "ITERATIONS", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], int(args.worker[2]), int(args.worker[3]))))
        return
    rows = []
    for name in args.models.split(","):
        forward = measure(name, "forward", max(args.iterations, 5), args.threads)
        gated = measure(name, "gated", args.iterations, args.threads)
        naive = measure(name, "naive", args.iterations, args.threads)
        rows.append((name, forward, gated, naive))
        print(f"{name}: forward {forward['seconds']:.3f}s, gated {gated['seconds']:.3f}s/it, "
              f"naive {naive['seconds']:.3f}s/it", file=sys.stderr)
    print(f"torch {rows[0][1]['torch']}, {rows[0][1]['threads']} threads, 1 image at 224×224, "
          f"median of {args.iterations} iterations after a warm-up\n")
    print("| model | forward (s) | gated iteration (s) | naive iteration (s) | naive / gated | gated it / forward "
          "| naive it / forward | est. 200 it gated (s) | peak mem gated (MiB) | peak mem naive (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, forward, gated, naive in rows:
        f, g, n = forward["seconds"], gated["seconds"], naive["seconds"]
        print(f"| {name} | {f:.3f} | {g:.3f} | {n:.3f} | **{n / g:.2f}×** | {g / f:.1f} | {n / f:.1f} | "
              f"{200 * g:.0f} | {gated['peak_mib']:.0f} | {naive['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
