"""ε-LRP's BatchNorm fold: what a call pays for it (1 thread, thread CPU time).

Interleaves, per round: ``trace`` (``canonize.fold_batchnorm``: trace, fold and weight scaling, what
a call paid before the trace was kept), ``refresh`` (the weight scaling alone, what a call pays now
besides the structure key), ``lrp`` (``lrp_epsilon`` as shipped: kept trace, weights refreshed) and
``reuse`` (LRP on a fold made before timing, ``fold_batchnorm=False``: the floor). Reports the fastest
of the rounds, and ratios to one forward pass.

    PYTHONPATH=$PWD python benchmarks/bench_lrp_fold.py [--rounds 5] [--models efficientnet_lite0,resnet50]
"""
from __future__ import annotations

import argparse
import time

import torch

import pyexplain
from pyexplain.core import canonize


def _thread_seconds(fn) -> float:
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--models", default="efficientnet_lite0,vgg16,resnet50")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.size, args.size)
    print("| model | forward (s) | trace+fold (s) | refresh (s) | lrp_epsilon (s) | on a prepared fold (s) "
          "| lrp × forward | prepared × forward |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model, _ = pyexplain.load_model(name, random_weights=name != "efficientnet_lite0")
        prepared = canonize.fold_batchnorm(model)
        kept = canonize.BatchNormFold(model)
        candidates = {
            "forward": lambda: model(x),
            "trace": lambda: canonize.fold_batchnorm(model),
            "refresh": kept.refresh,
            "lrp": lambda: pyexplain.explain(model, x, "lrp_epsilon", target=0),
            "reuse": lambda: pyexplain.explain(prepared, x, "lrp_epsilon", target=0, fold_batchnorm=False),
        }
        best = {k: float("inf") for k in candidates}
        with torch.no_grad():
            model(x)
        candidates["lrp"]()
        for round_ in range(args.rounds):
            order = list(candidates.items())
            for key, fn in order if round_ % 2 == 0 else reversed(order):
                with torch.no_grad() if key == "forward" else torch.enable_grad():
                    best[key] = min(best[key], _thread_seconds(fn))
        fwd = best["forward"]
        print(f"| {name} | {fwd:.3f} | {best['trace']:.3f} | {best['refresh']:.3f} | {best['lrp']:.3f} | "
              f"{best['reuse']:.3f} | {best['lrp'] / fwd:.2f} | {best['reuse'] / fwd:.2f} |", flush=True)


if __name__ == "__main__":
    main()
