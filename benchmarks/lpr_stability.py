"""How much a learned map depends on float rounding: LPR (the paper's settings, earlier and current defaults) and DMBP on photos.

For each photo and setting the map is computed three times on EfficientNet-Lite0 (top-1 class):
float32 with 1 intra-op thread, float32 with 2 threads (other summation orders), and float64 (the
reference). Printed: Spearman rank correlation of the pixel maps ``A.sum(1)`` (1 vs 2 threads, and
float32 vs float64), the relative L2 difference float32 vs float64, and the float32 map's MoRF AUC
(SPEC §6: 20 steps up to 5% of the pixels, lower is better). A map that depends on rounding has a
low Spearman; the defaults should give ≥ 0.95 on every photo.

    PYTHONPATH=. python benchmarks/lpr_stability.py                       # LPR defaults, 4 photos
    PYTHONPATH=. python benchmarks/lpr_stability.py --settings paper,masked_lr0.2 --photos chelsea,coffee
    PYTHONPATH=. python benchmarks/lpr_stability.py --settings dmbp
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from scipy.stats import spearmanr

import pyexplain
from pyexplain.io import builtin_image
from pyexplain.metrics.pixel_flipping import morf

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")

#: The settings compared: the paper's (ungated rule, lr 0.2), the masked rule at lr 0.2 (the default
#: before this study), LPR's current defaults (masked rule, lr 0.007), and DMBP's defaults.
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "paper": ("lpr", dict(keep_activation_mask=False, lr=0.2)),
    "masked_lr0.2": ("lpr", dict(lr=0.2)),
    "default": ("lpr", dict()),
    "dmbp": ("dmbp", dict()),
}


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(spearmanr(a.flatten().numpy(), b.flatten().numpy())[0])


def pixel_map(model: torch.nn.Module, x: torch.Tensor, method: str, options: dict[str, Any], threads: int,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(A, A.sum(1) in float64, seconds)`` with ``threads`` intra-op threads in ``dtype``."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    a = pyexplain.explain(model.to(dtype), x.to(dtype), method, **options).attribution
    model.float()
    return a.float(), a.sum(1).double(), time.perf_counter() - start


def study(names: list[str], setting: str, float64: bool) -> list[str]:
    method, options = SETTINGS[setting]
    model, preprocess = pyexplain.load_model()
    x = torch.cat([preprocess(builtin_image(n)) for n in names])
    a1, m1, s1 = pixel_map(model, x, method, options, 1, torch.float32)
    _, m2, s2 = pixel_map(model, x, method, options, 2, torch.float32)
    _, m64, s64 = pixel_map(model, x, method, options, 2, torch.float64) if float64 else (None, None, 0.0)
    torch.set_num_threads(1)
    auc = morf(model, x, a1).auc
    rows = []
    for i, name in enumerate(names):
        versus64 = (f"{spearman(m1[i], m64[i]):.3f} | {float((m1[i] - m64[i]).norm() / m64[i].norm()):.3g}"
                    if float64 else "not run | not run")
        rows.append(f"| {name} | {setting} ({method}{', ' + str(options) if options else ''}) | "
                    f"{spearman(m1[i], m2[i]):.3f} | {versus64} | {float(auc[i]):.3f} |")
    rows.append(f"| (seconds for all {len(names)}: float32 1 thread {s1:.0f}, 2 threads {s2:.0f}, float64 {s64:.0f}) | | | | | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default=",".join(PHOTOS))
    parser.add_argument("--settings", default="default", help=f"comma-separated: {', '.join(SETTINGS)}")
    parser.add_argument("--no-float64", action="store_true", help="skip the float64 reference (slow on CPU)")
    args = parser.parse_args()
    names = args.photos.split(",")
    print(f"EfficientNet-Lite0, top-1 class; torch {torch.__version__}\n")
    print("| photo | setting | Spearman 1 vs 2 threads ↑ | Spearman float32 vs float64 ↑ | rel. L2 float32 vs float64 ↓ | MoRF AUC ↓ |")
    print("|---|---|---|---|---|---|")
    for setting in args.settings.split(","):
        for row in study(names, setting, not args.no_float64):
            print(row, flush=True)


if __name__ == "__main__":
    main()
