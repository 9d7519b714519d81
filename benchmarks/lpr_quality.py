"""LPR quality measurements (MoRF/LeRF AUC, SPEC §6), each printed as a Markdown table.

- ``init``: the initialization of ``W`` (and the map normalization) on scikit-image photos with the
  embedded EfficientNet-Lite0, 50 iterations, top-1 class; Grad×Input for reference.
- ``digits``: LPR vs Grad×Input on the digits CNN's test images at 5%, 10% and 20% pixel budgets.
- ``amortized``: channel rules fitted over a set of photos (``pyexplain.methods._lpr_rules.fit_rules``)
  against per-image LPR on photos inside and outside the set: Spearman rank correlation of the maps
  and MoRF AUC.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/lpr_quality.py init digits amortized
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
from PIL import Image
from scipy.stats import spearmanr

import pyexplain
from pyexplain.metrics.pixel_flipping import lerf, morf
from pyexplain.methods._lpr_rules import fit_rules

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
HELD_OUT = ("stereo_motorcycle", "camera")


def photo(name: str) -> Image.Image:
    from skimage import data

    array = getattr(data, name)()
    array = array[0] if isinstance(array, tuple) else array
    return Image.fromarray(array).convert("RGB")


def photos(preprocess, names) -> torch.Tensor:
    return torch.cat([preprocess(photo(n)) for n in names])


def auc_row(model, x, attribution) -> tuple[float, float]:
    return float(morf(model, x, attribution).auc.mean()), float(lerf(model, x, attribution).auc.mean())


def init_study() -> None:
    model, preprocess = pyexplain.load_model("efficientnet_lite0")
    x = photos(preprocess, PHOTOS)
    print(f"\nW initialization, EfficientNet-Lite0, {len(PHOTOS)} photos ({', '.join(PHOTOS)}), 50 iterations, top-1 class\n")
    print("| setting | MoRF AUC (lower better) | LeRF AUC (higher better) | final loss | s |")
    print("|---|---|---|---|---|")
    m, l = auc_row(model, x, pyexplain.explain(model, x, "gradxinput").attribution)
    print(f"| Grad×Input (reference) | {m:.3f} | {l:.3f} | | |")
    inits = [("init=0.5", dict(init=0.5)), ("init=1", dict(init=1.0)), ("init=2", dict(init=2.0)),
             ("init=0, init_std=0.1 (small random)", dict(init=0.0, init_std=0.1))]
    settings = [(f"{label}, normalize={how}", dict(options, normalize=how))
                for how in ("minmax", "symmetric") for label, options in inits]
    for label, options in settings:
        start = time.perf_counter()
        e = pyexplain.explain(model, x, "lpr", **options)
        seconds = time.perf_counter() - start
        m, l = auc_row(model, x, e.attribution)
        print(f"| {label} | {m:.3f} | {l:.3f} | {float(e.extras['loss_history'][:, -1].mean()):.2f} | {seconds:.0f} |",
              flush=True)


def digits_study(count: int = 128) -> None:
    from pyexplain.data.digits import load_digits_cnn

    model, test = load_digits_cnn()
    x = test.x[:count]
    maps = {
        "Grad×Input": pyexplain.explain(model, x, "gradxinput").attribution,
        "LPR, initial rule (iterations=1)": pyexplain.explain(model, x, "lpr", iterations=1).attribution,
        "LPR (50 iterations)": pyexplain.explain(model, x, "lpr").attribution,
    }
    print(f"\nDigits CNN, first {count} test images: MoRF AUC (lower better) at three pixel budgets\n")
    print("| map | 5% (SPEC §6) | 10% | 20% |")
    print("|---|---|---|---|")
    for label, attribution in maps.items():
        aucs = [float(morf(model, x, attribution, max_fraction=f).auc.mean()) for f in (0.05, 0.1, 0.2)]
        print(f"| {label} | " + " | ".join(f"{a:.3f}" for a in aucs) + " |", flush=True)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(spearmanr(a.sum(0).flatten().numpy(), b.sum(0).flatten().numpy())[0])


def amortized_study(iterations: int = 50) -> None:
    model, preprocess = pyexplain.load_model("efficientnet_lite0")
    fit_set = photos(preprocess, PHOTOS)
    held_out = photos(preprocess, HELD_OUT)
    start = time.perf_counter()
    rules = fit_rules(model, fit_set, model_name="efficientnet_lite0", iterations=iterations)
    fit_seconds = time.perf_counter() - start
    print(f"\nAmortized LPR on EfficientNet-Lite0: channel rules fitted over {len(PHOTOS)} photos "
          f"({', '.join(PHOTOS)}; {iterations} iterations, {fit_seconds:.0f} s), held out: {', '.join(HELD_OUT)}. "
          "Spearman: mean over images of the rank correlation between the amortized map and the other map.\n")
    print("| images | map | MoRF AUC (lower better) | Spearman with amortized | s / image |")
    print("|---|---|---|---|---|")
    runs = [("amortized rules (1 forward + 1 backward)", dict(rules=rules)),
            ("per-image LPR, arch=position (default)", dict()),
            ("per-image LPR, arch=channel", dict(arch="channel")),
            ("initial rule W=1 (iterations=1)", dict(iterations=1))]
    for label, x in (("fit set", fit_set), ("held out", held_out)):
        maps = {}
        for name, options in runs:
            start = time.perf_counter()
            maps[name] = pyexplain.explain(model, x, "lpr", **options).attribution
            seconds = (time.perf_counter() - start) / x.shape[0]
            rho = np.mean([spearman(a, b) for a, b in zip(maps[runs[0][0]], maps[name])])
            auc = float(morf(model, x, maps[name]).auc.mean())
            print(f"| {label} ({x.shape[0]}) | {name} | {auc:.3f} | {rho:.3f} | {seconds:.2f} |", flush=True)
        auc = float(morf(model, x, pyexplain.explain(model, x, "gradxinput").attribution).auc.mean())
        print(f"| {label} ({x.shape[0]}) | Grad×Input | {auc:.3f} | | |", flush=True)


def main() -> None:
    studies = {"init": init_study, "digits": digits_study, "amortized": amortized_study}
    print(f"torch {torch.__version__}; {torch.get_num_threads()} threads")
    for name in sys.argv[1:] or list(studies):
        studies[name]()


if __name__ == "__main__":
    main()
