"""Evaluation runs: several methods' maps on one image set, scored by the metrics of
:mod:`pyexplain.metrics`. Shared by ``pyexplain evaluate``, ``pyexplain compare`` and
``benchmarks/report.py``.

Image sets: ``builtin`` is the model's own test data — the digits test split for ``digits_cnn``,
single-shape synthetic test images (with evidence regions) for ``synthetic_vgg``/``synthetic_resnet``,
scikit-image's photos for ImageNet models; ``builtin:two_class`` gives two-class synthetic images
(explained for their first class; cIM scores the second). A directory gives its image files.
Targets are the true class where it is known (builtin small-model data), the top-1 class otherwise.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .api import explain, model_device
from .errors import PyExplainError
from .io import IMAGE_SUFFIXES, open_image
from .metrics import (
    complementary_insertion, deletion, insertion, model_randomization, pixel_flipping, pointing_game, relevance_mass, roar,
)
from .metrics.pixel_flipping import DEFAULT_MAX_FRACTION, DEFAULT_STEPS
from .metrics.roar import DEFAULT_FRACTIONS, check_fill
from .models import SMALL_MODELS, Preprocess

#: Metric name → (what it needs, higher is better). ``roar`` is per method, not per image: it is run
#: by :func:`evaluate_roar`, not by :func:`evaluate`.
METRICS: dict[str, tuple[str, bool]] = {
    "morf": ("", False), "lerf": ("", True), "insertion": ("", True), "deletion": ("", False),
    "pointing": ("regions", True), "mass": ("regions", True), "cim": ("others", True), "sanity": ("", False),
    "roar": ("retraining", False),
}
CURVE_METRICS = ("morf", "lerf", "insertion", "deletion", "cim")
#: scikit-image photos used as the builtin set of ImageNet models (ImageNet-like subjects, all different).
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle")


@dataclass
class EvalSet:
    """Images ``x [N, C, H, W]`` (normalized), their ``names``, ``targets [N]`` (``None``: top-1),
    evidence ``regions [N, H, W]`` of the target class and ``others [N, M]`` (other true classes)."""

    x: Tensor
    names: list[str]
    targets: Tensor | None = None
    regions: Tensor | None = None
    others: Tensor | None = None


def display_images(x: Tensor, preprocess: Preprocess) -> Tensor:
    """Normalized images back to RGB ``[N, 3, H, W]`` in ``[0, 1]`` for figures."""
    mean = torch.tensor(preprocess.mean, dtype=x.dtype).reshape(1, -1, 1, 1)
    std = torch.tensor(preprocess.std, dtype=x.dtype).reshape(1, -1, 1, 1)
    rgb = (x.cpu() * std + mean).clamp(0, 1)
    return rgb.expand(-1, 3, -1, -1) if rgb.shape[1] == 1 else rgb


def load_eval_set(model_name: str, preprocess: Preprocess, images: str = "builtin", limit: int | None = None,
                  seed: int = 0) -> EvalSet:
    """The image set ``images`` (``builtin``, ``builtin:two_class`` or a directory) for ``model_name``."""
    if images in ("builtin", "builtin:two_class"):
        data = _builtin_set(model_name, preprocess, images == "builtin:two_class", limit or 32, seed)
    else:
        data = _directory_set(Path(images), preprocess)
    if limit is not None and limit < len(data.names):
        cut = lambda t: None if t is None else t[:limit]  # noqa: E731
        data = EvalSet(data.x[:limit], data.names[:limit], cut(data.targets), cut(data.regions), cut(data.others))
    return data


def _builtin_set(model_name: str, preprocess: Preprocess, two_class: bool, limit: int, seed: int) -> EvalSet:
    if model_name.startswith("synthetic_"):
        from .data.synthetic import make_synthetic
        from .data.synthetic_models import TEST_SEED_OFFSET

        s = make_synthetic(limit, seed + TEST_SEED_OFFSET + (1 if two_class else 0), two_class=two_class)
        names = [f"{'two_class' if two_class else 'synthetic'}_{i}" for i in range(limit)]
        return EvalSet(s.x, names, s.labels[:, 0], s.regions[:, 0], s.labels[:, 1:] if two_class else None)
    if two_class:
        raise PyExplainError("builtin:two_class images exist for the synthetic models only (synthetic_vgg, synthetic_resnet)")
    if model_name == "digits_cnn":
        from .data.digits import digits_splits

        test = digits_splits(seed)[1]
        return EvalSet(test.x[:limit], [f"digit_{i}" for i in range(min(limit, len(test)))], test.y[:limit])
    if model_name in SMALL_MODELS:
        raise PyExplainError(f"no builtin images for {model_name!r}")
    from .io import builtin_image

    return EvalSet(torch.cat([preprocess(builtin_image(name)) for name in PHOTOS]), list(PHOTOS))


def _directory_set(folder: Path, preprocess: Preprocess) -> EvalSet:
    if not folder.is_dir():
        raise PyExplainError(f"--images must be 'builtin', 'builtin:two_class' or a directory; {str(folder)!r} is neither")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PyExplainError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return file_set(files, preprocess)


def file_set(sources: Sequence[str | Path], preprocess: Preprocess) -> EvalSet:
    """Image files or ``builtin:NAME`` photos, named by their stems; targets: the top-1 classes."""
    names = [str(s).split(":", 1)[1] if str(s).startswith("builtin:") else Path(s).stem for s in sources]
    return EvalSet(torch.cat([preprocess(open_image(s)) for s in sources]), names)


@dataclass
class Evaluation:
    """Per-image values ``values[method][metric] [N]``, mean curves ``curves[method][metric] =
    (fractions, curve [N, S])``, maps ``maps[method] [N, H, W]``, seconds per method and the methods
    that failed with their one-line reason."""

    data: EvalSet
    targets: Tensor
    metrics: list[str]
    maps: dict[str, Tensor] = field(default_factory=dict)
    values: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    curves: dict[str, dict[str, tuple[Tensor, Tensor]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean of each metric per method (NaN-free means; pointing game = hit rate)."""
        return {m: {k: float(v.float().nanmean()) for k, v in per.items()} for m, per in self.values.items()}

    def rows(self) -> list[dict[str, Any]]:
        """One record per (method, image, metric)."""
        return [{"method": m, "image": self.data.names[i], "target": int(self.targets[i]), "metric": k, "value": float(v[i])}
                for m, per in self.values.items() for k, v in per.items() for i in range(len(v))]


def check_metrics(metrics: Sequence[str], data: EvalSet) -> None:
    for metric in metrics:
        if metric not in METRICS:
            raise PyExplainError(f"unknown metric {metric!r}; available: {', '.join(METRICS)}")
        need = METRICS[metric][0]
        if need in ("regions", "others") and getattr(data, need) is None:
            what = "ground-truth regions (synthetic models, --images builtin)" if need == "regions" else \
                "several true classes per image (--images builtin:two_class with a synthetic model)"
            raise PyExplainError(f"metric {metric!r} needs {what}")


#: Images scored per step of :func:`evaluate` (its progress bar advances per step).
_PROGRESS_IMAGES = 4


def _score(model: nn.Module, data: EvalSet, x: Tensor, a: Tensor, targets: Tensor, rows: slice, method: str,
           metrics: Sequence[str], method_options: dict[str, Any], flip: dict[str, Any], rise: dict[str, Any],
           batch_size: int) -> tuple[dict[str, Tensor], dict[str, tuple[Tensor, Tensor]]]:
    """Every metric's values ``[n]`` and curves ``(fractions, [n, S])`` for the images ``rows`` of ``data``."""
    values: dict[str, Tensor] = {}
    curves: dict[str, tuple[Tensor, Tensor]] = {}
    for metric in metrics:
        if metric in ("morf", "lerf"):
            c = pixel_flipping(model, x, a, targets, order=metric, **flip)
        elif metric == "insertion":
            c = insertion(model, x, a, targets, **rise)
        elif metric == "deletion":
            c = deletion(model, x, a, targets, **rise)
        elif metric == "cim":
            c = complementary_insertion(model, x, a, targets, data.others[rows].to(x.device), **rise)
        elif metric == "pointing":
            values[metric] = pointing_game(a, data.regions[rows]).float().cpu()
            continue
        elif metric == "mass":
            values[metric] = relevance_mass(a, data.regions[rows]).cpu()
            continue
        else:  # sanity: last layer re-initialized
            rho = model_randomization(model, x, method, targets, batch_size=batch_size, options=method_options)
            values[metric] = next(iter(rho.values()))
            continue
        values[metric], curves[metric] = c.auc, (c.fractions, c.curve)
    return values, curves


def evaluate(
    model: nn.Module, data: EvalSet, methods: Sequence[str], metrics: Sequence[str], *,
    options: dict[str, dict[str, Any]] | None = None, batch_size: int = 64, flip_steps: int = DEFAULT_STEPS,
    flip_fraction: float = DEFAULT_MAX_FRACTION, insertion_pixels_per_step: int | None = None, progress: bool = True,
) -> Evaluation:
    """Explain ``data`` with each method and score every map with every metric.

    ``options``: per-method options; a method that rejects the model or input (``PyExplainError``) is
    recorded in ``errors`` and skipped. ``insertion_pixels_per_step`` coarsens insertion/deletion/cIM
    (default: the RISE protocol's 224 px per step at 224×224).
    """
    check_metrics(metrics, data)
    if "roar" in metrics:
        raise PyExplainError("metric 'roar' scores methods, not images: run evaluate_roar")
    x = data.x.to(model_device(model))
    if data.targets is not None:
        targets = data.targets.to(x.device)
    else:
        with torch.no_grad():
            targets = model(x).argmax(1)
    result = Evaluation(data, targets.cpu(), list(metrics))
    flip = dict(steps=flip_steps, max_fraction=flip_fraction, batch_size=batch_size)
    rise = dict(pixels_per_step=insertion_pixels_per_step, batch_size=batch_size)
    bar = tqdm(total=len(methods) * len(x), desc="evaluate", unit="img", file=sys.stderr, disable=not progress)
    for method in methods:
        bar.set_postfix_str(method)
        method_options = (options or {}).get(method, {})
        start = time.perf_counter()
        try:
            e = explain(model, x, method, target=targets.tolist(), batch_size=batch_size, **method_options)
        except PyExplainError as exc:
            result.errors[method] = " ".join(str(exc).split())
            bar.update(len(x))
            continue
        result.seconds[method] = time.perf_counter() - start
        result.maps[method] = e.map.cpu()
        chunks = []
        for first in range(0, len(x), _PROGRESS_IMAGES):  # a few images at a time, for the progress bar
            rows = slice(first, first + _PROGRESS_IMAGES)
            chunks.append(_score(model, data, x[rows], e.attribution[rows], targets[rows], rows, method, metrics,
                                 method_options, flip, rise, batch_size))
            bar.update(len(x[rows]))
        result.values[method] = {k: torch.cat([values[k] for values, _ in chunks]) for k in chunks[0][0]}
        result.curves[method] = {k: (chunks[0][1][k][0], torch.cat([curves[k][1] for _, curves in chunks]))
                                 for k in chunks[0][1]}
    bar.close()
    return result


def evaluate_roar(
    model: nn.Module, model_name: str, methods: Sequence[str], *, options: dict[str, dict[str, Any]] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS, fill: str = "linear", epochs: int | None = None, seed: int = 0,
    batch_size: int = 64, progress: bool = True,
) -> tuple[dict[str, dict[float, float]], dict[str, str]]:
    """ROAR (:func:`pyexplain.metrics.roar`) for a small model: ``model``'s maps of the true class on
    all of ``model_name``'s training and test images, a fresh model retrained per fraction with the
    model's own recipe (``epochs`` to shorten it). Returns ``({method: {fraction: test accuracy}},
    {method: reason it could not run})``; the row ``random`` ranks pixels at random (seeded)."""
    from .data.small_models import roar_task

    check_fill(fill)  # before the maps of the whole data set are computed
    train, test, fit = roar_task(model_name, seed, epochs)
    generator = torch.Generator().manual_seed(seed)
    size = train.x.shape[-2:]
    maps = {"random": (torch.rand(len(train), *size, generator=generator), torch.rand(len(test), *size, generator=generator))}
    errors = {}
    for method in methods:
        try:
            maps[method] = tuple(explain(model, s.x, method, target=s.y.tolist(), batch_size=batch_size,
                                         **(options or {}).get(method, {})).map.cpu() for s in (train, test))
        except PyExplainError as exc:
            errors[method] = " ".join(str(exc).split())
    bar = tqdm(maps.items(), desc="roar", unit="map", file=sys.stderr, disable=not progress)
    return {name: roar(train, test, a, b, fit, fractions, fill=fill, seed=seed) for name, (a, b) in bar}, errors
