"""Small models and metrics: training time and test accuracy of each small model (trained anew with
its recipe, as `pyexplain train MODEL --retrain` does), and the cost of each metric as a multiple of
one forward pass over the same images.

    PYTHONPATH=$PWD python benchmarks/bench_metrics.py [--skip-training] [--images 32]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, measure  # noqa: E402

import pyexplain  # noqa: E402
from pyexplain.data.training import accuracy  # noqa: E402
from pyexplain.evaluation import load_eval_set  # noqa: E402
from pyexplain.metrics import (  # noqa: E402
    deletion, insertion, lerf, model_randomization, morf, pointing_game, relevance_mass,
)
from pyexplain.models import SMALL_MODELS  # noqa: E402


def training_table() -> list[str]:
    """Each small model trained anew with its own recipe (seed 0; nothing is cached), and its test accuracy."""
    from pyexplain.data.small_models import trained_small_model

    rows = ["| model | training s | test accuracy | peak RSS MiB |", "|---|---|---|---|"]
    for name in SMALL_MODELS:
        holder = {}

        def train() -> None:
            holder["model"], holder["test"], _ = trained_small_model(name, retrain=True)

        m = measure(train, repeats=1, warmup=0)
        rows.append(f"| {name} | {m.seconds:.1f} | {accuracy(holder['model'], holder['test']):.4f} | {m.peak_mb:.0f} |")
    return rows


def metric_table(n: int) -> list[str]:
    model, preprocess = pyexplain.load_model("synthetic_vgg")
    data = load_eval_set("synthetic_vgg", preprocess, "builtin", n)
    x, t, regions = data.x, data.targets, data.regions
    a = pyexplain.explain(model, x, "gradxinput", target=t.tolist()).attribution
    with torch.no_grad():
        forward = measure(lambda: model(x), repeats=5).seconds
    calls = {
        "MoRF (20 steps)": lambda: morf(model, x, a, t),
        "LeRF (20 steps)": lambda: lerf(model, x, a, t),
        "insertion (RISE protocol, 5 px/step, 206 points)": lambda: insertion(model, x, a, t),
        "deletion (RISE protocol)": lambda: deletion(model, x, a, t),
        "pointing game": lambda: pointing_game(a, regions),
        "relevance mass": lambda: relevance_mass(a, regions),
        "sanity, last layer (gradxinput, 2 explanations)": lambda: model_randomization(model, x, "gradxinput", t),
    }
    rows = [f"| metric ({n} images, synthetic_vgg 32×32) | seconds | × one forward pass of the {n} images | peak RSS MiB |",
            "|---|---|---|---|"]
    for name, call in calls.items():
        m = measure(call, repeats=3)
        rows.append(f"| {name} | {m.seconds:.3f} | {m.seconds / forward:.1f} | {m.peak_mb:.0f} |")
    rows.append(f"| (one forward pass) | {forward:.4f} | 1.0 | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}")
    if not args.skip_training:
        print("\n".join(training_table()))
        print()
    print("\n".join(metric_table(args.images)))
    print(f"\nload average at end {os.getloadavg()[0]:.1f}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
