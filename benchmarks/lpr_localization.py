"""LPR settings against the gradient baselines on the synthetic shapes (known evidence regions).

On the single-shape test images of ``synthetic_vgg`` / ``synthetic_resnet`` (the report's images:
``make_synthetic(n, TEST_SEED_OFFSET)``, true class), for each map: MoRF AUC (SPEC §6, 20 steps up
to 5%, lower is better), pointing game and relevance mass (higher is better), seconds per image
(one thread). The LPR rows are the frontier of the settings tried: MoRF against localization.

    PYTHONPATH=. python benchmarks/lpr_localization.py --n 16
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import torch

import pyexplain
from pyexplain.data.synthetic import make_synthetic
from pyexplain.data.synthetic_models import TEST_SEED_OFFSET
from pyexplain.metrics.localization import pointing_game, relevance_mass
from pyexplain.metrics.pixel_flipping import morf

#: ``(label, method, options)``: the baselines, then LPR with the paper's settings, the masked rule at the
#: paper's lr, the current defaults (masked rule, lr 0.007) and variants.
MAPS: list[tuple[str, str, dict[str, Any]]] = [
    ("Grad×Input", "gradxinput", {}),
    ("IG (16 steps)", "integrated_gradients", dict(steps=16)),
    ("SmoothGrad² (16 samples)", "smoothgrad_sq", dict(samples=16)),
    ("LPR, paper (ungated rule, lr 0.2)", "lpr", dict(keep_activation_mask=False, lr=0.2)),
    ("LPR, masked rule, lr 0.2", "lpr", dict(lr=0.2)),
    ("LPR, default (masked rule, lr 0.007)", "lpr", {}),
    ("LPR, masked rule, lr 0.05", "lpr", dict(lr=0.05)),
    ("LPR, masked rule, smooth mask σ=1", "lpr", dict(mask="smooth", smooth_sigma=1.0)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--models", default="synthetic_vgg,synthetic_resnet")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = make_synthetic(args.n, TEST_SEED_OFFSET)
    targets, regions = data.y.tolist(), data.regions[:, 0]
    print(f"{args.n} synthetic test images (32×32, true class); torch {torch.__version__}, 1 thread\n")
    for name in args.models.split(","):
        model, _ = pyexplain.load_model(name)
        print(f"\n{name}\n\n| map | MoRF AUC ↓ | pointing ↑ | relevance mass ↑ | s / image |\n|---|---|---|---|---|")
        for label, method, options in MAPS:
            start = time.thread_time()
            a = pyexplain.explain(model, data.x, method, targets, **options).attribution
            seconds = (time.thread_time() - start) / args.n
            print(f"| {label} | {float(morf(model, data.x, a, data.y).auc.mean()):.3f} | "
                  f"{float(pointing_game(a, regions).float().mean()):.2f} | {float(relevance_mass(a, regions).mean()):.3f} | "
                  f"{seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
