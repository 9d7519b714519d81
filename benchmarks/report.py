"""Regenerates ``benchmarks/REPORT.md``: the papers' metric claims measured on what exists offline.

    PYTHONPATH=$PWD python benchmarks/report.py                     # every section → benchmarks/REPORT.md
    PYTHONPATH=$PWD python benchmarks/report.py --section sanity    # one section, printed to stdout
    PYTHONPATH=$PWD python benchmarks/report.py --full              # the papers' protocols (slow on a CPU)
    PYTHONPATH=$PWD python benchmarks/report.py --methods a,b       # a subset of the registered methods

The methods are every registered one (``pyexplain.list_methods()``), so a rerun after new methods
land adds them. The quick settings (default) shorten the protocols where a CPU needs it, and each
section prints the settings it used. The small models are trained on first use and cached.
"""
from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

import pyexplain  # noqa: E402
from pyexplain.data.digits import load_digits_cnn  # noqa: E402
from pyexplain.data.small_models import roar_task  # noqa: E402
from pyexplain.data.training import Split, accuracy  # noqa: E402
from pyexplain.evaluation import METRICS, Evaluation, evaluate, load_eval_set  # noqa: E402
from pyexplain.io import atomic_write  # noqa: E402
from pyexplain.metrics import model_randomization, remove_top, roar  # noqa: E402
from pyexplain.metrics.roar import top_mask  # noqa: E402

#: Option overrides of the quick settings (applied only where the method has the option), so that a
#: whole quick run stays near 40 min on 2 shared CPU cores: fewer samples/steps for the sampling
#: methods; the optimizations shortened with their step budget kept (DMBP: RMSprop moves each mask
#: logit by about ``lr`` per iteration, so 50 × 0.04 covers the 200 × 0.01 of the defaults);
#: LPR keeps its defaults (50 iterations). ``--full`` uses every method's defaults.
QUICK_OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": 16}, "blur_ig": {"steps": 16},
    "smoothgrad": {"samples": 16}, "smoothgrad_sq": {"samples": 16}, "rise": {"masks": 250},
    "dmbp": {"iterations": 50, "lr": 0.04},
    "extremal_perturbation": {"iterations": 60}, "meaningful_perturbation": {"iterations": 60},
}
#: Methods ROAR retrains for in the quick settings: the LPR paper's Table 1 set (plus the random ranking).
ROAR_QUICK = ("lpr", "smoothgrad_sq", "smoothgrad", "gradxinput", "guided_backprop")

#: Largest AUC difference counted as "similar" / "on par" in the digits claims.
SIMILAR = 0.05

SETTINGS = {
    "quick": dict(photos_flip_steps=5, photos_insertion_step=3136, digits_n=50, digits_insertion_step=16,
                  synthetic_n=50, synthetic_insertion_step=8, cim_n=40, sanity_n=16, cascade_n=8,
                  roar_fractions=(0.1, 0.3, 0.5, 0.7, 0.9), roar_epochs=4, quick_options=True),
    "full": dict(photos_flip_steps=20, photos_insertion_step=None, digits_n=359, digits_insertion_step=None,
                 synthetic_n=600, synthetic_insertion_step=None, cim_n=200, sanity_n=64, cascade_n=32,
                 roar_fractions=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), roar_epochs=8, quick_options=False),
}


def registered(prefix: str, methods: list[str]) -> list[str]:
    """Registered methods named ``prefix`` or ``prefix_*`` (e.g. lpr, lpr_channel)."""
    return [m for m in methods if m == prefix or m.startswith(prefix + "_")]


def method_options(methods: list[str], quick: bool) -> dict[str, dict[str, Any]]:
    if not quick:
        return {}
    defaults = {info.name: info.defaults for info in pyexplain.list_methods()}
    return {m: {k: v for k, v in QUICK_OPTIONS.get(m, {}).items() if k in defaults[m]} for m in methods if m in QUICK_OPTIONS}


def fmt(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) if isinstance(c, float) else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def metric_table(result: Evaluation) -> str:
    summary = result.summary()
    header = ["method"] + [f"{k} {'↑' if METRICS[k][1] else '↓'}" for k in result.metrics] + ["explain s/img"]
    n = len(result.data.names)
    rows = [[m] + [summary[m][k] for k in result.metrics] + [result.seconds[m] / n] for m in summary]
    rows += [[m, f"not run: {reason}"] + [""] * len(result.metrics) for m, reason in result.errors.items()]
    return table(header, rows)


def best(result: Evaluation, metric: str) -> tuple[str, float]:
    summary = result.summary()
    pick = max if METRICS[metric][1] else min
    name = pick(summary, key=lambda m: summary[m][metric])
    return name, summary[name][metric]


def ranking_claim(result: Evaluation, metric: str, family: str, claim: str, methods: list[str]) -> str:
    """A verdict line: does method family ``family`` score best on ``metric``?"""
    ours = [m for m in registered(family, methods) if m in result.summary()]
    top, value = best(result, metric)
    if not ours:
        return f"- {claim}: **cannot be checked yet** — no `{family}` method is registered here (best now: `{top}`, {value:.3f})."
    verdict = "holds" if top in ours else "does not hold"
    scores = ", ".join(f"`{m}` {result.summary()[m][metric]:.3f}" for m in ours)
    return f"- {claim}: **{verdict}** here — {scores}; best: `{top}` {value:.3f}."


class Report:
    def __init__(self, mode: str, methods: list[str]) -> None:
        self.mode, self.s, self.methods = mode, SETTINGS[mode], methods
        self.options = method_options(methods, self.s["quick_options"])
        self.flag = "" if mode == "quick" else " --full"

    def _run(self, model_name: str, images: str, n: int | None, metrics: list[str], flip_steps: int,
             insertion_step: int | None) -> Evaluation:
        model, preprocess = pyexplain.load_model(model_name)
        data = load_eval_set(model_name, preprocess, images, n)
        return evaluate(model, data, self.methods, metrics, options=self.options, batch_size=128,
                        flip_steps=flip_steps, insertion_pixels_per_step=insertion_step)

    def _settings(self, flip_steps: int, insertion_step: int | None, size: int) -> str:
        step = insertion_step or max(1, round(size * size / 224))
        opts = "; ".join(f"{m} {o}" for m, o in self.options.items() if o) or "method defaults"
        return (f"MoRF/LeRF: {flip_steps} steps up to 5% of the pixels, reference 0, logit ratio. "
                f"Insertion/deletion: {step} px per step at {size}×{size}"
                f"{' (the RISE protocol)' if insertion_step is None else ' (coarser than the RISE protocol)'}, "
                f"blur kernel 11 σ 5, softmax probability. Options: {opts}.")

    def photos(self) -> str:
        s = self.s
        r = self._run("efficientnet_lite0", "builtin", None, ["morf", "lerf", "insertion", "deletion", "sanity"],
                      s["photos_flip_steps"], s["photos_insertion_step"])
        m = self.methods
        claims = [
            ranking_claim(r, "morf", "lpr", "LPR paper, Fig. 5 (ImageNet): LPR has the lowest MoRF AUC", m),
            ranking_claim(r, "lerf", "lpr", "LPR paper, Fig. 5 (ImageNet): LPR has the highest LeRF (its negative attributions raise the score when removed)", m),
            ranking_claim(r, "insertion", "dmbp", "DMBP paper, Table 2 (ImageNet): DMBP has the best insertion (IM) score", m),
        ]
        gbp = r.summary().get("guided_backprop", {}).get("sanity")
        if gbp is not None:
            claims.append(f"- DMBP paper, Table 3 (ImageNet): Guided Backprop's map barely changes when the last layer is "
                          f"re-initialized (≈ 0.99): **{'holds' if gbp > 0.8 else 'does not hold'}** here ({gbp:.3f}).")
        lerf_up = [k for k, v in r.summary().items() if v["lerf"] > 1]
        claims.append(f"- LeRF AUC above 1 (removing the least relevant pixels *raises* the target logit): "
                      f"{', '.join(f'`{k}`' for k in lerf_up) or 'no method'}.")
        return (f"## Embedded model: EfficientNet-Lite0 on scikit-image's photos\n\n"
                f"`python benchmarks/report.py --section photos{self.flag}` — {len(r.data.names)} photos "
                f"({', '.join(r.data.names)}), top-1 class. {self._settings(s['photos_flip_steps'], s['photos_insertion_step'], 224)} "
                f"Sanity: Spearman between the map and the map with the classifier layer re-initialized.\n\n"
                f"{metric_table(r)}\n\n" + "\n".join(claims) + "\n")

    def digits(self) -> str:
        s = self.s
        r = self._run("digits_cnn", "builtin", s["digits_n"], ["morf", "lerf", "insertion", "deletion"], 20,
                      s["digits_insertion_step"])
        summary = r.summary()
        spread = {k: max(v[k] for v in summary.values()) - min(v[k] for v in summary.values()) for k in ("morf", "lerf")}
        claims = [f"- LPR paper, Fig. 5 (MNIST): all methods perform similarly on MoRF (counted as similar: every method's "
                  f"MoRF AUC within {SIMILAR} of every other's): **{'holds' if spread['morf'] <= SIMILAR else 'does not hold'}** here "
                  f"— spread {spread['morf']:.3f} (LeRF spread {spread['lerf']:.3f})."]
        lpr = [m for m in registered("lpr", self.methods) if m in summary]
        if lpr:
            top, value = best(r, "morf")
            ours = summary[lpr[0]]["morf"]
            rank = sorted(v["morf"] for v in summary.values()).index(ours) + 1
            claims.append(f"- LPR paper, Fig. 5 (MNIST): LPR at least on par with the best on MoRF (counted as on par: within "
                          f"{SIMILAR} of the lowest AUC): **{'holds' if ours - value <= SIMILAR else 'does not hold'}** here — "
                          f"`{lpr[0]}` {ours:.3f}, rank {rank} of {len(summary)}; best `{top}` {value:.3f}.")
        else:
            claims.append(ranking_claim(r, "morf", "lpr", "LPR paper, Fig. 5 (MNIST): LPR at least on par on MoRF", self.methods))
        return (f"## Digits CNN (the LPR paper's MNIST setting)\n\n"
                f"`python benchmarks/report.py --section digits{self.flag}` — {len(r.data.names)} test digits "
                f"(28×28, true class). {self._settings(20, s['digits_insertion_step'], 28)}\n\n"
                f"{metric_table(r)}\n\n" + "\n".join(claims) + "\n")

    def synthetic(self) -> str:
        s = self.s
        parts = [f"## Synthetic shapes: VGG-style and ResNet-style CNNs, with ground-truth evidence regions\n\n"
                 f"`python benchmarks/report.py --section synthetic{self.flag}` — {s['synthetic_n']} single-shape test images "
                 f"(32×32, true class). {self._settings(20, s['synthetic_insertion_step'], 32)} Pointing game: "
                 f"hit if the map's maximum lies within 15·32/224 ≈ 2.1 px of the shape; relevance mass: share of the "
                 f"positive attribution on the shape (the shape covers ~10% of the image).\n"]
        for name in ("synthetic_vgg", "synthetic_resnet"):
            r = self._run(name, "builtin", s["synthetic_n"], ["morf", "lerf", "insertion", "deletion", "pointing", "mass"],
                          20, s["synthetic_insertion_step"])
            top_p, value_p = best(r, "pointing")
            top_m, value_m = best(r, "mass")
            parts.append(f"### {name}\n\n{metric_table(r)}\n\n"
                         f"- Best pointing game: `{top_p}` ({value_p:.3f}); best relevance mass: `{top_m}` ({value_m:.3f}).\n"
                         + ranking_claim(r, "insertion", "dmbp", "DMBP: best insertion", self.methods) + "\n"
                         + ranking_claim(r, "morf", "lpr", "LPR: lowest MoRF", self.methods) + "\n")
        return "\n".join(parts)

    def cim(self) -> str:
        s = self.s
        parts = [f"## cIM on two-class synthetic images\n\n"
                 f"`python benchmarks/report.py --section cim{self.flag}` — {s['cim_n']} images with two shapes of different "
                 f"classes, explained for the first; cIM inserts the lowest-attribution pixels first and scores the second "
                 f"class (insertion step {s['synthetic_insertion_step'] or 5} px). Pointing game and mass are measured on the "
                 f"*explained* class's shape, so they also test class sensitivity (a map that lights up both shapes "
                 f"points at the wrong one half of the time).\n"]
        for name in ("synthetic_vgg", "synthetic_resnet"):
            r = self._run(name, "builtin:two_class", s["cim_n"], ["cim", "insertion", "pointing", "mass"], 20,
                          s["synthetic_insertion_step"])
            parts.append(f"### {name}\n\n{metric_table(r)}\n\n"
                         + ranking_claim(r, "cim", "dmbp", "DMBP paper, Tables 1–2 (VOC): DMBP has the best cIM", self.methods) + "\n")
        return "\n".join(parts)

    def sanity(self) -> str:
        s = self.s
        rows, cascade_text = [], ""
        per_model: dict[str, dict[str, float]] = {}
        for name in ("digits_cnn", "synthetic_vgg", "synthetic_resnet"):
            model, preprocess = pyexplain.load_model(name)
            data = load_eval_set(name, preprocess, "builtin", s["sanity_n"])
            per_model[name] = {}
            for method in self.methods:
                try:
                    rho = model_randomization(model, data.x, method, data.targets, seed=0, options=self.options.get(method))
                except pyexplain.PyExplainError:
                    continue
                per_model[name][method] = float(next(iter(rho.values())).nanmean())
        rows = [[m] + [per_model[n].get(m, float("nan")) for n in per_model] for m in self.methods]
        model, preprocess = pyexplain.load_model("synthetic_vgg")
        data = load_eval_set("synthetic_vgg", preprocess, "builtin", s["cascade_n"])
        cascade_rows, layers = [], []
        for method in self.methods:
            try:
                rho = model_randomization(model, data.x, method, data.targets, cascading=True, options=self.options.get(method))
            except pyexplain.PyExplainError:
                continue
            layers = list(rho)
            cascade_rows.append([method] + [float(v.nanmean()) for v in rho.values()])
        cascade_text = table(["method"] + [f"↓{layer}" for layer in layers], cascade_rows)
        claims = []
        for method, published in (("guided_backprop", 0.99), ("guided_gradcam", None)):
            values = [per_model[n].get(method) for n in per_model if method in per_model[n]]
            if values:
                high = all(v > 0.8 for v in values)
                claims.append(f"- DMBP paper, Table 3: `{method}` stays highly correlated (> 0.8 counted as high) after "
                              f"re-initializing the last layer{f' (published ≈ {published})' if published else ''}: "
                              f"**{'holds' if high else 'does not hold'}** here "
                              f"({', '.join(f'{v:.2f}' for v in values)}).")
        dmbp = [m for m in registered("dmbp", self.methods)]
        if dmbp:
            values = [per_model[n].get(dmbp[0], float("nan")) for n in per_model]
            low = all(abs(v) < 0.2 for v in values)
            claims.append(f"- DMBP paper, Table 3: `{dmbp[0]}` ≈ 0.0: **{'holds' if low else 'does not hold'}** here "
                          f"({', '.join(f'{v:.2f}' for v in values)}).")
        else:
            claims.append("- DMBP paper, Table 3: DMBP ≈ 0.0: **cannot be checked yet** — no `dmbp` method is registered here.")
        return (f"## Sanity: model randomization\n\n`python benchmarks/report.py --section sanity{self.flag}` — "
                f"Spearman rank correlation (signed maps, pixels) between each method's map on the trained model and on a "
                f"copy whose last layer is re-drawn from N(0, 2/fan_in) (bias 0), mean over {s['sanity_n']} test images "
                f"per model, same target class. Low = the map depends on the learned weights. The EfficientNet-Lite0 "
                f"column is in the photos table (`sanity`).\n\n"
                f"{table(['method'] + list(per_model), rows)}\n\n"
                f"Cascading randomization on synthetic_vgg ({s['cascade_n']} images): column `↓L` re-initializes layer L and "
                f"every layer above it.\n\n{cascade_text}\n\n" + "\n".join(claims) + "\n")

    def roar(self) -> str:
        s = self.s
        methods = [m for m in self.methods if not self.s["quick_options"] or m in ROAR_QUICK]
        train, test, fit = roar_task("digits_cnn", 0, s["roar_epochs"])
        model, _ = load_digits_cnn(0)
        generator = torch.Generator().manual_seed(0)
        maps = {"random": (torch.rand(len(train), 28, 28, generator=generator), torch.rand(len(test), 28, 28, generator=generator))}
        seconds = {}
        for method in methods:
            start = time.perf_counter()
            try:
                explain = lambda split: pyexplain.explain(model, split.x, method, target=split.y.tolist(),  # noqa: E731
                                                          batch_size=256, **self.options.get(method, {})).map
                maps[method] = (explain(train), explain(test))
            except pyexplain.PyExplainError:
                continue
            seconds[method] = time.perf_counter() - start
        baseline = roar(train, test, maps["random"][0], maps["random"][1], fit, fractions=[0.0])[0.0]
        fractions = s["roar_fractions"]
        results = {fill: {name: roar(train, test, a, b, fit, fractions=fractions, fill=fill) for name, (a, b) in maps.items()}
                   for fill in ("mean", "linear")}
        # Leak check: a model trained on the removal pattern alone (1 = removed), at the largest fraction.
        marker = torch.tensor([float("inf")])
        pattern = lambda split, m: (remove_top(split.x, m, fractions[-1], marker) == marker).float()  # noqa: E731
        mask_only = {name: accuracy(fit(Split(pattern(train, a), train.y)), Split(pattern(test, b), test.y))
                     for name, (a, b) in maps.items()}
        # Leak check through the linear fill: the map's kept pixels filled with *another*, randomly drawn digit
        # (its class unrelated to the label), the rest imputed; above-chance accuracy comes from the pattern.
        shuffle = lambda split: Split(split.x[torch.randperm(len(split), generator=generator)], split.y)  # noqa: E731
        other_train, other_test = shuffle(train), shuffle(test)
        through_fill = {name: accuracy(fit(Split(remove_top(other_train.x, a, fractions[-1], "linear", seed=0), train.y)),
                                       Split(remove_top(other_test.x, b, fractions[-1], "linear", seed=1), test.y))
                        for name, (a, b) in maps.items()}
        # What survives the largest removal: the share of the test digits' ink (pixel > 0.5) that is kept.
        ink = test.x[:, 0] > 0.5
        ink_kept = {name: float((~top_mask(test.x, b, fractions[-1]) & ink).sum() / ink.sum()) for name, (_, b) in maps.items()}
        mean = {fill: {name: sum(v.values()) / len(v) for name, v in per.items()} for fill, per in results.items()}
        header = ["method"] + [f"{int(f * 100)}%" for f in fractions] + ["mean"]
        last = int(fractions[-1] * 100)
        extra = {"mean": ([f"pattern only ({last}%)"], lambda name: [mask_only[name]]),
                 "linear": ([f"pattern through the fill ({last}%)", f"ink kept ({last}%)"],
                            lambda name: [through_fill[name], ink_kept[name]])}
        tables = {fill: table(header + extra[fill][0], [[name] + [per[name][f] for f in fractions] + [mean[fill][name]]
                                                        + extra[fill][1](name) for name in per])
                  for fill, per in results.items()}
        claims = {fill: self._roar_claims(mean[fill], baseline, fill) for fill in results}
        flat = [n for n in mean["linear"] if n != "random" and mean["linear"][n] >= mean["linear"]["random"]]
        leaks = [n for n in through_fill if n != "random" and through_fill[n] > 0.5]
        claims["linear"].append(
            f"- Linear fill, leak check: the fill {'still lets the removal pattern through for ' + ', '.join(f'`{n}`' for n in leaks) if leaks else 'lets no map' + chr(39) + 's removal pattern through'} "
            f"— with the kept pixels taken from another, random digit (class unrelated to the label) and the rest imputed, the "
            f"same training reaches {', '.join(f'{v:.3f} (`{n}`)' for n, v in through_fill.items())} (chance 0.1). "
            + ("The imputed smooth regions around the kept pixels still draw the pattern, so on these digits the linear-fill "
               "accuracies of those maps mix what the map removed with what its pattern gives away: they do not rank the maps "
               "cleanly either, and the verdicts above stand on that footing. " if leaks else "")
            + (f"Maps that degrade accuracy no faster than random: {', '.join(f'`{n}`' for n in flat)}; ink (pixel > 0.5) they keep "
               f"at {last}%: {', '.join(f'{ink_kept[n]:.0%} (`{n}`)' for n in flat)} (random {ink_kept['random']:.0%})." if flat else ""))
        explain_cost = ", ".join(f"`{m}` {t:.0f} s" for m, t in seconds.items())
        opts = "; ".join(f"{m} {self.options[m]}" for m in methods if self.options.get(m)) or "method defaults"
        return (f"## ROAR on the digits CNN\n\n`python benchmarks/report.py --section roar{self.flag}` — maps of the true class "
                f"for all 1,438 training and 359 test digits (options: {opts}; time for all 1,797 maps: {explain_cost}); the top "
                f"k% pixels removed; the two-conv CNN retrained from scratch ({s['roar_epochs']} epochs, seed 0) for each k; test "
                f"accuracy (lower is better). Without removal the same training reaches {baseline:.3f}. Two removals:\n\n"
                f"- **mean fill** (Hooker et al.): the pixels set to the training set's mean. *Pattern only*: the accuracy of the "
                f"same training on the binary removal pattern alone (1 = removed, the image discarded), a measure of how much the "
                f"mask itself reveals the class.\n"
                f"- **linear fill** (ROAD's noisy linear imputation, `fill=\"linear\"`): each removed pixel the weighted mean of its "
                f"8 neighbours (direct 1/6, diagonal 1/12; removed neighbours solved jointly, one sparse system per image) plus "
                f"N(0, 0.01²) noise (seed 0 train, 1 test): the removed region continues its surround instead of showing a "
                f"constant. *Pattern through the fill*: the same training on images whose kept pixels come from another, randomly "
                f"drawn digit (its class unrelated to the label) and whose removed pixels are imputed: accuracy above chance "
                f"(0.1) can only come from the removal pattern showing through the fill. *Ink kept*: share of the test digits' "
                f"pixels above 0.5 that the largest removal keeps.\n\n"
                f"### Mean fill\n\n{tables['mean']}\n\n" + "\n".join(claims["mean"]) + "\n\n"
                f"### Linear fill (ROAD imputation)\n\n{tables['linear']}\n\n" + "\n".join(claims["linear"]) + "\n")

    @staticmethod
    def _roar_claims(mean: dict[str, float], baseline: float, fill: str) -> list[str]:
        """Verdicts on the mean accuracy over the fractions (lower = the map found what the task needs)."""
        claims = []
        label = "Mean fill" if fill == "mean" else "Linear fill"
        if "smoothgrad_sq" in mean:
            claims.append(f"- {label} — Hooker et al. (ROAR): SmoothGrad² degrades accuracy faster than a random ranking: "
                          f"**{'holds' if mean['smoothgrad_sq'] < mean['random'] else 'does not hold'}** here "
                          f"(mean accuracy {mean['smoothgrad_sq']:.3f} vs random {mean['random']:.3f}).")
        lpr = registered("lpr", list(mean))
        if lpr:
            others = [o for o in ("smoothgrad_sq", "random") if o in mean]
            below = all(mean[lpr[0]] < mean[o] for o in others)
            ranked = sorted(mean, key=mean.get)
            claims.append(f"- {label} — LPR paper, Table 1: LPR below SmoothGrad² and random: **{'holds' if below else 'does not hold'}** "
                          f"here (`{lpr[0]}` {mean[lpr[0]]:.3f}; {', '.join(f'`{o}` {mean[o]:.3f}' for o in others)}; "
                          f"order, lowest first: {', '.join(f'`{n}`' for n in ranked)}).")
        else:
            claims.append(f"- {label} — LPR paper, Table 1: LPR below SmoothGrad² and random: **cannot be checked** — no `lpr` method is registered here.")
        return claims


#: The LPR section's studies: each script's command line (run from the repository root) and its arguments.
LPR_STUDIES = (
    ("lpr_stability.py", ["--settings", "paper,masked_lr0.2,default,dmbp"]),
    ("lpr_localization.py", ["--n", "64"]),
    ("lpr_amortized.py", ["--fit", "1024", "--n", "256", "--iterations", "30", "--configs", "0,1,4,5,6"]),
    ("lpr_amortized.py", ["--photos", "--views", "7", "--iterations", "20", "--batch-size", "8", "--configs", "0,1,6"]),
)


def lpr_section(report: Report) -> str:
    """LPR's stability, localization and amortized-rule studies: each benchmark script's output as it prints it."""
    import subprocess

    here = Path(__file__).resolve().parent
    parts = ["## LPR: stability, localization, generalization\n\n"
             "Per-image LPR with the paper's settings (ungated rule, lr 0.2), the masked rule at lr 0.2, and the "
             "defaults (masked rule, lr 0.007); DMBP's defaults; amortized rules (channel and predictor families; LPR, "
             "deletion and deletion + insertion objectives) on held-out images; "
             "against Grad×Input, IG and SmoothGrad². Why the defaults changed: `benchmarks/RESULTS.md` (LPR).\n"]
    for script, arguments in LPR_STUDIES:
        output = subprocess.run([sys.executable, str(here / script), *arguments], check=True, capture_output=True,
                                text=True, cwd=here.parent).stdout
        parts.append(f"`PYTHONPATH=$PWD python benchmarks/{script} {' '.join(arguments)}`\n\n{output.strip()}\n")
    return "\n".join(parts)


SECTIONS: dict[str, Callable[[Report], str]] = {
    "photos": Report.photos, "digits": Report.digits, "synthetic": Report.synthetic, "cim": Report.cim,
    "sanity": Report.sanity, "roar": Report.roar, "lpr": lpr_section,
}
#: The order a whole run takes them in: cheapest first (the report keeps the order above).
RUN_ORDER = ("digits", "sanity", "synthetic", "cim", "roar", "photos", "lpr")


def old_sections(path: Path) -> dict[str, str]:
    """The sections of an existing report, markers included (none if it does not exist)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    found = {}
    for name in SECTIONS:
        begin, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->\n"
        if begin in text and end in text:
            found[name] = text[text.index(begin):text.index(end) + len(end)]
    return found


def replace_section(path: Path, name: str, text: str) -> None:
    """Swap the ``name`` section of an existing report for ``text`` (markers included)."""
    old = path.read_text(encoding="utf-8")
    begin, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->\n"
    if begin not in old:
        raise SystemExit(f"{path} has no section {name!r}; regenerate the whole report")
    new = old[:old.index(begin)] + text + old[old.index(end) + len(end):]
    atomic_write(path, lambda tmp: tmp.write_text(new, encoding="utf-8"))


def header(report: Report, methods: list[str], pending: list[str]) -> str:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    opts = "; ".join(f"`{m}` {o}" for m, o in report.options.items() if o) or "none (method defaults)"
    stale = (f" **Run in progress: sections {', '.join(pending)} are still those of the previous run.**" if pending else "")
    return (f"# Reproducing the papers' metric claims\n\nGenerated by `PYTHONPATH=$PWD python benchmarks/report.py"
            f"{report.flag}` ({report.mode} settings) on: {machine()}. Peak RSS {peak:.0f} MiB. Methods: every registered "
            f"one ({', '.join(f'`{m}`' for m in methods)}); rerunning after new methods land adds them and re-judges "
            f"the claims. Option overrides of the {report.mode} settings (`QUICK_OPTIONS` in `benchmarks/report.py`): {opts}. "
            f"Each table's own command regenerates it alone.{stale}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=sorted(SECTIONS), help="Run one section and print it.")
    parser.add_argument("--full", action="store_true", help="The papers' protocols and more images (slow on a CPU).")
    parser.add_argument("--methods", help="Comma-separated subset of the registered methods.")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "REPORT.md")
    parser.add_argument("--write", action="store_true", help="With --section: also replace that section in --out.")
    args = parser.parse_args()
    available = [info.name for info in pyexplain.list_methods()]
    methods = available if not args.methods else [m for m in args.methods.split(",") if m in available]
    report = Report("full" if args.full else "quick", methods)
    names = [args.section] if args.section else list(RUN_ORDER)
    previous = {} if args.section else old_sections(args.out)
    done: dict[str, str] = {}
    for name in names:
        start = time.perf_counter()
        text = SECTIONS[name](report)
        print(f"[{name}: {time.perf_counter() - start:.0f} s]", file=sys.stderr)
        done[name] = f"<!-- section:{name} -->\n{text}\n_Section time: {time.perf_counter() - start:.0f} s._\n<!-- /section:{name} -->\n"
        if not args.section:  # a whole run rewrites the report after every section, so a stopped run keeps its work
            pending = [n for n in SECTIONS if n not in done and n in previous]
            body = [done.get(n, previous.get(n)) for n in SECTIONS if n in done or n in previous]
            document = header(report, methods, pending) + "\n" + "\n".join(body)
            atomic_write(args.out, lambda tmp: tmp.write_text(document, encoding="utf-8"))
    if args.section:
        print(done[args.section])
        if args.write:
            replace_section(args.out, args.section, done[args.section])
        return
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
