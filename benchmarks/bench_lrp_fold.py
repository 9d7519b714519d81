"""ε-LRP with and without reusing the BatchNorm-folded model (1 thread, thread CPU time).

Interleaves, per round: ``fold`` (``canonize.fold_batchnorm`` alone), ``lrp`` (``lrp_epsilon`` as
shipped: it folds on every call), ``lrp_reuse`` (LRP on a fold made before timing: the best a
cache can do) and ``lrp_deepcopy_fold`` (a fold of a deep copy per call: the cost of the earlier,
copying fold that needed a cache). Reports the fastest of the rounds and ratios to ``lrp_reuse``.

    PYTHONPATH=$PWD python benchmarks/bench_lrp_fold.py [--rounds 3] [--size 224]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from torchvision.models import get_model

import pyexplain
from pyexplain.core import canonize


def _thread_seconds(fn) -> float:
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.size, args.size)
    print("model,fold_s,lrp_s,lrp_reuse_s,lrp_deepcopy_fold_s,lrp/reuse,deepcopy_fold/reuse")
    for name in ("vgg16", "resnet50"):
        model = get_model(name, weights=None).eval()
        prepared = canonize.fold_batchnorm(model)

        def shipped():
            pyexplain.explain(model, x, "lrp_epsilon", target=0)

        def deepcopy_fold():
            pyexplain.explain(canonize.fold_batchnorm(copy.deepcopy(model)), x, "lrp_epsilon", target=0,
                              fold_batchnorm=False)

        def reuse():
            pyexplain.explain(prepared, x, "lrp_epsilon", target=0, fold_batchnorm=False)

        candidates = {"fold": lambda: canonize.fold_batchnorm(model), "lrp": shipped, "reuse": reuse,
                      "deepcopy": deepcopy_fold}
        best = {k: float("inf") for k in candidates}
        reuse()
        for _ in range(args.rounds):
            for key, fn in candidates.items():
                best[key] = min(best[key], _thread_seconds(fn))
        print(f"{name},{best['fold']:.3f},{best['lrp']:.3f},{best['reuse']:.3f},{best['deepcopy']:.3f},"
              f"{best['lrp'] / best['reuse']:.3f},{best['deepcopy'] / best['reuse']:.3f}", flush=True)


if __name__ == "__main__":
    main()
