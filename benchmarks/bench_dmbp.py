"""DMBP speed: the gated-forward implementation against the paper's formulation (dmbp_naive.py).

For EfficientNet-Lite0 (real weights), ResNet-50 and VGG16 (random weights) at 224×224, one image:
the time of one forward pass, of one DMBP iteration with the gated forward (``pyexplain``) and with
the naive reference (masked backward passes with bias gradients, ``create_graph=True``, double
backward), their ratio, each iteration's cost in forward passes, and the peak resident memory
above the loaded model (set-up plus two iterations, sampled every 2 ms, one process per figure).

    python benchmarks/bench_dmbp.py [--iterations 3] [--threads 1] [--models efficientnet_lite0,resnet50,vgg16]

Prints a Markdown table. The three variants run in interleaved rounds in one process so they see
the same machine load; the figures are medians of the main thread's CPU time (stable on a shared
machine; with one torch thread every op runs on it) and of wall time.
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


def _setup(model_name: str, threads: int):
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    from pyexplain.models import load_model

    torch.manual_seed(0)
    model, _ = load_model(model_name, None, "cpu", random_weights=model_name != "efficientnet_lite0")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = int(model(x).argmax())
    return model, x, target


def _stepper(variant: str, model, x, target: int, iterations: int):
    """A callable running one iteration of ``variant`` (``forward``, ``gated`` or ``naive``)."""
    import torch

    from benchmarks.dmbp_naive import NaiveDMBP
    from pyexplain.core.targets import Targets
    from pyexplain.methods.dmbp import DMBPObjective, optimize

    if variant == "forward":
        def forward():
            with torch.no_grad():
                model(x)
        return forward
    if variant == "gated":
        objective = DMBPObjective(model, x, Targets(torch.tensor([target])))
        steps = optimize(objective, objective.init_logits(), iterations + 1, 0.01, "all")
        return lambda: next(steps)
    return NaiveDMBP(model, x, target).step


def time_worker(model_name: str, iterations: int, threads: int) -> dict:
    """Interleaved rounds of forward, gated and naive iterations (so all see the same machine load);
    medians of the main thread's CPU time and of wall time."""
    model, x, target = _setup(model_name, threads)
    variants = ("forward", "gated", "naive")
    steps = {v: _stepper(v, model, x, target, iterations) for v in variants}
    cpu = {v: [] for v in variants}
    wall = {v: [] for v in variants}
    for v in variants:
        steps[v]()  # warm-up
    for _ in range(iterations):
        for v in variants:
            c0, w0 = time.thread_time(), time.perf_counter()
            steps[v]()
            cpu[v].append(time.thread_time() - c0)
            wall[v].append(time.perf_counter() - w0)
    import torch

    return {"cpu": {v: statistics.median(t) for v, t in cpu.items()},
            "wall": {v: statistics.median(t) for v, t in wall.items()},
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def memory_worker(model_name: str, variant: str, threads: int) -> dict:
    """Peak resident memory above the loaded model while setting up and running two iterations."""
    model, x, target = _setup(model_name, threads)
    base = _rss()
    with PeakRSS() as memory:
        step = _stepper(variant, model, x, target, 2)
        step()
        step()
    return {"peak_mib": (memory.peak - base) / 2 ** 20}


def run_worker(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--models", default="efficientnet_lite0,resnet50,vgg16")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable ratios on a shared machine)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, name, *rest = args.worker
        result = (time_worker(name, int(rest[0]), int(rest[1])) if kind == "time"
                  else memory_worker(name, rest[0], int(rest[1])))
        print(json.dumps(result))
        return
    rows = []
    for name in args.models.split(","):
        timing = run_worker("time", name, str(args.iterations), str(args.threads))
        memory = {v: run_worker("memory", name, v, str(args.threads))["peak_mib"] for v in ("gated", "naive")}
        rows.append((name, timing, memory))
        print(f"{name}: {json.dumps(timing)} {json.dumps(memory)}", file=sys.stderr)
    first = rows[0][1]
    print(f"torch {first['torch']}, {first['threads']} thread(s), 1 image at 224×224, medians of "
          f"{args.iterations} interleaved rounds after a warm-up; CPU = the main thread's CPU time, wall in brackets\n")
    print("| model | forward (s) | gated iteration (s) | naive iteration (s) | naive / gated | gated it / forward "
          "| naive it / forward | peak mem gated (MiB) | peak mem naive (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, timing, memory in rows:
        c, w = timing["cpu"], timing["wall"]
        print(f"| {name} | {c['forward']:.3f} ({w['forward']:.3f}) | {c['gated']:.3f} ({w['gated']:.3f}) "
              f"| {c['naive']:.3f} ({w['naive']:.3f}) | **{c['naive'] / c['gated']:.2f}×** ({w['naive'] / w['gated']:.2f}×) "
              f"| {c['gated'] / c['forward']:.1f} | {c['naive'] / c['forward']:.1f} "
              f"| {memory['gated']:.0f} | {memory['naive']:.0f} |")


if __name__ == "__main__":
    main()
