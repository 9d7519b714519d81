"""Seconds per image of a no-grad forward pass against the number of images per pass (the
``internal_batch_size`` of the sampling methods: occlusion, RISE, Blur IG).

    python benchmarks/bench_rows_per_pass.py [--models efficientnet_lite0,resnet18] [--rows 1,4,8,16,48]

One torch thread, the main thread's CPU time (steady on a shared machine), best of two runs over
48 random 224×224 images. EfficientNet-Lite0 has its real weights, torchvision models random ones.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

import pyexplain  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet_lite0,resnet18")
    parser.add_argument("--rows", default="1,4,8,16,48")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [int(r) for r in args.rows.split(",")]
    print(f"# machine: {machine()}; CPU time per image, 48 images at 224x224")
    print("| model | " + " | ".join(f"{r} per pass" for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for name in args.models.split(","):
        model, _ = pyexplain.load_model(name, random_weights=name != "efficientnet_lite0")
        x = torch.randn(48, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        cells = []
        for r in rows:
            best = float("inf")
            for _ in range(2):
                start = time.thread_time()
                with torch.no_grad():
                    for i in range(0, len(x), r):
                        model(x[i:i + r])
                best = min(best, time.thread_time() - start)
            cells.append(f"{best / len(x):.4f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
