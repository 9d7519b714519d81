"""Amortized LPR on the synthetic shapes: channel rules fitted on training images, judged on test images.

``fit_rules`` (SPEC §3 end) learns one channel rule per activation call over the first ``--fit``
images of the model's training split (top-1 class), with its defaults (masked rule, no reference,
``W`` from 20) and with the paper's rule (reference, ungated, ``W`` from 1); the frozen rules then
explain those images and ``--n`` held-out test images (the report's: ``make_synthetic(n,
TEST_SEED_OFFSET)``, true class). Printed per image set: MoRF AUC (SPEC §6, 20 steps up to 5%, lower is better), insertion AUC
(8 px per step, higher is better) and seconds per image (one thread), against Grad×Input, IG and
SmoothGrad².

    PYTHONPATH=. python benchmarks/lpr_amortized.py --fit 32 --n 16 --iterations 30   # the defaults
"""
from __future__ import annotations

import argparse
import time

import torch

import pyexplain
from pyexplain.data.synthetic import make_synthetic
from pyexplain.data.synthetic_models import TEST_SEED_OFFSET, TRAIN_SEED_OFFSET
from pyexplain.methods._lpr_rules import fit_rules
from pyexplain.metrics.insertion import insertion
from pyexplain.metrics.pixel_flipping import morf

BASELINES = [("Grad×Input", "gradxinput", {}), ("IG (16 steps)", "integrated_gradients", dict(steps=16)),
             ("SmoothGrad² (16 samples)", "smoothgrad_sq", dict(samples=16))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", type=int, default=32)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--models", default="synthetic_vgg,synthetic_resnet")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train = make_synthetic(args.fit, TRAIN_SEED_OFFSET)
    test = make_synthetic(args.n, TEST_SEED_OFFSET)
    print(f"torch {torch.__version__}, 1 thread; rules fitted over {args.fit} training images, "
          f"{args.iterations} iterations\n")
    for name in args.models.split(","):
        model, _ = pyexplain.load_model(name)
        start = time.thread_time()
        rules = fit_rules(model, train.x, model_name=name, iterations=args.iterations, batch_size=args.fit)
        fit_seconds = time.thread_time() - start
        paper = fit_rules(model, train.x, model_name=name, iterations=args.iterations, batch_size=args.fit,
                          reference=True, keep_activation_mask=False, init=1.0)
        print(f"\n{name} (fit: {fit_seconds:.0f} s)\n\n| images | map | MoRF AUC ↓ | insertion AUC ↑ | s / image |\n"
              "|---|---|---|---|---|")
        for label, data, targets in (("fit", train, None), ("held out", test, test.y)):
            rows = [("amortized LPR rules (defaults)", "lpr", dict(rules=rules)),
                    ("amortized LPR rules (paper's rule: reference, ungated, W from 1)", "lpr", dict(rules=paper)),
                    ("per-image LPR (default)", "lpr", {})] + BASELINES
            for row, method, options in rows:
                if label == "fit" and method != "lpr":
                    continue
                t = None if targets is None else targets.tolist()
                start = time.thread_time()
                a = pyexplain.explain(model, data.x, method, t, **options).attribution
                seconds = (time.thread_time() - start) / data.x.shape[0]
                print(f"| {label} ({data.x.shape[0]}) | {row} | {float(morf(model, data.x, a, targets).auc.mean()):.3f} | "
                      f"{float(insertion(model, data.x, a, targets, pixels_per_step=8).auc.mean()):.3f} | {seconds:.3f} |",
                      flush=True)


if __name__ == "__main__":
    main()
