"""Amortized LPR: rules fitted on training images, judged on images they never saw.

``fit_rules`` (SPEC §3 end) learns rules shared by the fitting images (top-1 class), for each
configuration of :data:`CONFIGS` (rule family × objective, the paper's rule), and the frozen rules
explain held-out images, against the fixed rules of the same cost (Grad×Input, DeepLIFT, ε-LRP), IG and
SmoothGrad².

- Synthetic shapes (default): fitted over the first ``--fit`` images of the model's training split,
  judged on ``--n`` test images (the report's ``make_synthetic(n, TEST_SEED_OFFSET)``, true class).
- ``--photos``: EfficientNet-Lite0 fitted over the photos :data:`FIT_PHOTOS` with ``--views``
  augmented views of each (random resized crop of scale 0.5–1, horizontal flip, colour jitter 0.2),
  judged on the other photos :data:`HELD_OUT_PHOTOS` with 3 augmented views each (top-1 class of
  the model).

Printed per image set: MoRF AUC (SPEC §6, 20 steps up to 5 %, lower is better) on the first ``--n``
fitting images (top-1 class) and on the held-out images, insertion AUC on the held-out images (8 px
per step on the synthetic shapes, the default step on photos; higher is better) and thread CPU
seconds per held-out image (one thread).

    PYTHONPATH=. python benchmarks/lpr_amortized.py --fit 1024 --n 256 --iterations 30 --configs 0,1,4,5,6
    PYTHONPATH=. python benchmarks/lpr_amortized.py --photos --views 7 --iterations 20 --batch-size 8 --configs 0,1,6,7
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

import pyexplain
from pyexplain.metrics.insertion import insertion
from pyexplain.metrics.pixel_flipping import morf

#: (label, method, options): Grad×Input, DeepLIFT and ε-LRP cost what the amortized rules cost (one forward,
#: one backward; DeepLIFT also one reference forward); IG, SmoothGrad² and per-image LPR cost more.
BASELINES = [("Grad×Input", "gradxinput", {}), ("DeepLIFT (rescale)", "deeplift", {}), ("ε-LRP", "lrp_epsilon", {}),
             ("IG (16 steps)", "integrated_gradients", dict(steps=16)),
             ("SmoothGrad² (16 samples)", "smoothgrad_sq", dict(samples=16)), ("per-image LPR (defaults)", "lpr", {})]
#: (label, fit_rules options) per amortized configuration (``iterations`` here overrides ``--iterations``).
CONFIGS = [
    ("channel rules, LPR loss (fit-rules defaults)", {}),
    ("channel rules, deletion objective", dict(objective="deletion")),
    ("rank-4 predictor, deletion objective", dict(family="predictor", objective="deletion")),
    ("rank-4 predictor, LPR loss", dict(family="predictor")),
    ("channel rules, paper's rule (reference, ungated, W from 1)", dict(reference=True, keep_activation_mask=False, init=1.0)),
    ("rank-16 predictor, deletion objective, lr 0.05, 60 iterations",
     dict(family="predictor", objective="deletion", rank=16, lr=0.05, iterations=60)),
    ("rank-16 predictor, deletion + insertion objective, lr 0.05, 60 iterations",
     dict(family="predictor", objective="deletion_insertion", rank=16, lr=0.05, iterations=60)),
    ("channel rules, saturated inputs pass (ReLU6 gate 1[f > 0]), deletion + insertion objective",
     dict(objective="deletion_insertion", pass_saturated=True)),
]
#: The photos whose views fit the rules, and the other photos, held out.
FIT_PHOTOS, HELD_OUT_PHOTOS = ("chelsea", "coffee", "camera", "clock"), ("astronaut", "rocket", "motorcycle")


def synthetic_sets(name: str, fit: int, n: int):
    from pyexplain.data.synthetic import make_synthetic
    from pyexplain.data.synthetic_models import TEST_SEED_OFFSET, TRAIN_SEED_OFFSET

    model, _ = pyexplain.load_model(name)
    test = make_synthetic(n, TEST_SEED_OFFSET)
    return model, make_synthetic(fit, TRAIN_SEED_OFFSET).x, test.x, test.y, 8


def photo_sets(views: int):
    import torchvision.transforms.v2 as T

    from pyexplain.io import builtin_image

    model, preprocess = pyexplain.load_model("efficientnet_lite0")
    augment = T.Compose([T.RandomResizedCrop(400, scale=(0.5, 1.0)), T.RandomHorizontalFlip(), T.ColorJitter(0.2, 0.2, 0.2)])
    torch.manual_seed(0)

    def with_views(names: list[str], k: int) -> torch.Tensor:
        return torch.cat([preprocess(image) for name in names
                          for image in [builtin_image(name)] + [augment(builtin_image(name)) for _ in range(k)]])

    fit, held_out = with_views(list(FIT_PHOTOS), views), with_views(list(HELD_OUT_PHOTOS), 3)
    with torch.no_grad():
        classes = model(held_out).argmax(1)
    return model, fit, held_out, classes, None


def main() -> None:
    from pyexplain.methods._lpr_rules import fit_rules

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", type=int, default=512)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--models", default="synthetic_vgg,synthetic_resnet")
    parser.add_argument("--photos", action="store_true")
    parser.add_argument("--views", type=int, default=7)
    parser.add_argument("--configs", default="", help="comma-separated indices into CONFIGS (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    chosen = [CONFIGS[int(i)] for i in args.configs.split(",")] if args.configs else CONFIGS
    print(f"torch {torch.__version__}, 1 thread, {args.iterations} iterations, batch {args.batch_size}\n")
    for name in ["efficientnet_lite0 (photos)"] if args.photos else args.models.split(","):
        model, fit, x, classes, step = photo_sets(args.views) if args.photos else synthetic_sets(name, args.fit, args.n)
        seen = fit[: args.n]
        with torch.no_grad():
            seen_classes = model(seen).argmax(1)
        print(f"\n{name}: rules fitted over {fit.shape[0]} images, judged on {x.shape[0]} held-out images "
              f"and on {seen.shape[0]} of the fitting images (top-1 class)\n\n"
              "| map | fit (s) | MoRF AUC on fitting images ↓ | MoRF AUC ↓ | insertion AUC ↑ | s / image |\n"
              "|---|---|---|---|---|---|")

        def row(label: str, explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], fit_seconds: str = "") -> None:
            on_seen = explain(seen, seen_classes)
            start = time.thread_time()
            attribution = explain(x, classes)
            seconds = time.thread_time() - start
            print(f"| {label} | {fit_seconds} | {float(morf(model, seen, on_seen, seen_classes).auc.mean()):.3f} | "
                  f"{float(morf(model, x, attribution, classes).auc.mean()):.3f} | "
                  f"{float(insertion(model, x, attribution, classes, pixels_per_step=step).auc.mean()):.3f} | "
                  f"{seconds / x.shape[0]:.3f} |", flush=True)

        for label, method, options in BASELINES:
            row(label, lambda images, targets: pyexplain.explain(model, images, method, targets.tolist(),
                                                                 **options).attribution)
        for label, options in chosen:
            start = time.thread_time()
            rules = fit_rules(model, fit, model_name=name, batch_size=args.batch_size,
                              **{"iterations": args.iterations, **options})
            fit_seconds = f"{time.thread_time() - start:.0f}"
            row(f"amortized: {label}", lambda images, targets: pyexplain.explain(
                model, images, "lpr", targets.tolist(), rules=rules).attribution, fit_seconds)

if __name__ == "__main__":
    main()
