"""Amortized LPR (SPEC §3, beyond the paper): rules learned over a set of images, saved to a file,
and used as a fixed rule (1 forward + 1 backward per image).

Two rule families: ``"channel"`` (one ``W_c`` per channel and call, the ``arch="channel"`` rule
shared by all images) and ``"predictor"`` (``W`` predicted at every position from the activation,
:mod:`pyexplain.core.rule_predictor`). Three objectives: ``"lpr"``, the paper's sign-aware masking loss
(SPEC §3 step 5); ``"deletion"``, a soft MoRF curve (:func:`~pyexplain.methods._lpr.deletion_losses`);
``"deletion_insertion"``, that curve plus :data:`INSERTION_WEIGHT` times a soft, negated RISE
insertion curve (:func:`~pyexplain.methods._lpr.insertion_losses`).

A rules file is a plain dict readable by ``torch.load(weights_only=True)``: format tag and version,
the model name, the rule settings (variant, reference, keep_activation_mask, pass_saturated, head,
family, objective), one record per ruled activation call (kind, module, per-row shape), one weight
vector ``b`` ``[C]`` per call (``weights``) and, for the predictor family, one dict of predictor
tensors per call (``predictors``). Version 1 files (channel rules, LPR objective) and version 2 files
(without ``pass_saturated``: False) are still read.
"""
from __future__ import annotations

import itertools
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..api import eval_mode
from ..core.rule_predictor import PREDICTOR_KEYS, check_predictor, predicted_weight
from ..core.targets import Targets, target_scores
from ..errors import PyExplainError
from ..io import atomic_write
from ._lpr import (LossConfig, RuleGraph, RuleSite, check_choice, deletion_losses, insertion_losses, reference_activations,
                   row_losses)

FORMAT = "pyexplain-lpr-rules"
VERSION = 3
FAMILIES = ("channel", "predictor")
OBJECTIVES = ("lpr", "deletion", "deletion_insertion")
#: The insertion term's weight in ``objective="deletion_insertion"``: at 1 it costs the deletion curve
#: (synthetic_resnet: MoRF 0.107 against 0.088 without it), at 0.3 it lifts insertion and keeps MoRF
#: (benchmarks/RESULTS.md, amortized LPR round 5).
INSERTION_WEIGHT = 0.3
_SETTINGS = ("variant", "reference", "keep_activation_mask", "pass_saturated", "head")


class _RuleParameters:
    """The fitted tensors: ``b`` ``[C]`` per call, and for the predictor family ``a``, ``U``, ``D``
    (learned) and ``s`` (fixed) per call. :meth:`leaves` is the optimizer's parameter order."""

    def __init__(self, biases: list[Tensor], predictors: list[dict[str, Tensor]] | None) -> None:
        self.biases, self.predictors = biases, predictors

    @classmethod
    def initial(cls, sites: list[RuleSite], init: float, statistics: list[tuple[Tensor, Tensor]] | None, rank: int,
                seed: int) -> "_RuleParameters":
        """``b = init``; with ``statistics`` (the predictor family's ``s`` and the covariance of ``u`` per
        site, :func:`_activation_statistics`) predictors that start as the channel rule (``a = U = 0``),
        with ``D``'s rows the top ``rank`` principal directions of ``u`` (rows beyond ``C`` seeded
        ``N(0, 1/C)``)."""
        like = sites[0].shift
        biases = [torch.full((s.call.shape[1],), float(init), dtype=like.dtype, device=like.device, requires_grad=True)
                  for s in sites]
        if statistics is None:
            return cls(biases, None)
        generator = torch.Generator().manual_seed(seed)
        predictors = []
        for site, (scale, moments) in zip(sites, statistics, strict=True):
            channels = site.call.shape[1]
            down = torch.randn(rank, channels, generator=generator, dtype=like.dtype) / math.sqrt(channels)
            directions = torch.linalg.eigh(moments).eigenvectors.flip(1)[:, :rank].t()
            down[:directions.shape[0]] = directions.to(down)
            predictors.append({
                "self": like.new_zeros(channels).requires_grad_(True),
                "up": like.new_zeros(channels, rank).requires_grad_(True),
                "down": down.to(like.device).requires_grad_(True),
                "scale": scale.to(like),
            })
        return cls(biases, predictors)

    @classmethod
    def stored(cls, rules: dict[str, Any], like: Tensor) -> "_RuleParameters":
        """The tensors of a rules dict, as leaves on ``like``'s device and dtype."""
        biases = [w.to(like).clone().requires_grad_(True) for w in rules["weights"]]
        predictors = rules.get("predictors")
        if predictors is None:
            return cls(biases, None)
        return cls(biases, [{k: p[k].to(like).clone().requires_grad_(k != "scale") for k in PREDICTOR_KEYS}
                            for p in predictors])

    def leaves(self) -> list[Tensor]:
        learned = [p[k] for p in self.predictors or [] for k in ("self", "up", "down")]
        return self.biases + learned

    def weights(self, sites: list[RuleSite]) -> list[Tensor]:
        """Each site's ``W`` for its current activations."""
        predictors = self.predictors or [None] * len(self.biases)
        return [predicted_weight(site.shift, b, p) for site, b, p in zip(sites, self.biases, predictors, strict=True)]

    def as_dict(self) -> dict[str, Any]:
        """``weights`` and (predictor family) ``predictors``, detached copies on the CPU."""
        out: dict[str, Any] = {"weights": [b.detach().cpu().clone() for b in self.biases]}
        if self.predictors is not None:
            out["predictors"] = [{k: p[k].detach().cpu().clone() for k in PREDICTOR_KEYS} for p in self.predictors]
        return out


def fit_rules(model: nn.Module, images: Tensor, *, model_name: str = "", iterations: int = 50, lr: float = 0.2,
              config: LossConfig = LossConfig(), variant: str = "feature", reference: bool = False,
              keep_activation_mask: bool = True, pass_saturated: bool = False, head: bool = False, init: float = 20.0,
              family: str = "channel", rank: int = 4, objective: str = "lpr", seed: int = 0, batch_size: int = 8,
              progress: bool = False, resume: dict[str, Any] | None = None, validation: Tensor | None = None,
              validate_every: int = 10) -> dict[str, Any]:
    """Learn rules for every activation call shared by all ``images`` (each explained for its top-1
    class): Adam on the mean per-image ``objective``. With more than ``batch_size`` images the clean
    forward passes are recomputed per chunk and iteration (bounded memory); otherwise kept.

    Defaults (measured in ``benchmarks/RESULTS.md``, amortized LPR): the masked rule without reference,
    ``φ'(f)·tanh(W·f)``, starting at ``W = 20``, where it is the plain gradient but for the weakest
    activations (``pass_saturated``: ``φ'`` without a clamped activation's upper clamp, ``1[f > low]``
    for ReLU6, where it starts as the gradient with saturated units passing); the fit then learns
    which channels (``family="channel"``) or which activation patterns (``family="predictor"``, rank ``rank``, ``D`` starting at the principal directions of
    the fitting images' activations; ``seed`` draws the rows beyond their channels) to damp or flip.
    ``objective="lpr"`` is the paper's loss; ``"deletion"`` the soft MoRF curve; ``"deletion_insertion"``
    that curve minus ``INSERTION_WEIGHT`` × the soft insertion curve (which the deletion curve alone lets
    fall).

    ``resume``: a rules dict written by an earlier fit; its tensors, Adam state and rule settings are
    taken up (the settings passed here are ignored) and ``iterations`` more steps run, so a fit of
    ``a + b`` steps equals one of ``a`` resumed for ``b``. ``validation``: held-out images whose MoRF
    AUC (SPEC §6, top-1 class) with the current rules is measured every ``validate_every`` steps and
    after the last (``val_morf``: ``[[step, auc], ...]``, shown on the progress bar)."""
    if resume is not None:
        resume = check_rules(resume, "the rules to resume")
        variant, reference = resume["variant"], bool(resume["reference"])
        keep_activation_mask, head = bool(resume["keep_activation_mask"]), bool(resume["head"])
        pass_saturated = bool(resume["pass_saturated"])
        family, objective = resume["family"], resume["objective"]
    check_choice("family", family, FAMILIES)
    check_choice("objective", objective, OBJECTIVES)
    if family == "predictor" and not (isinstance(rank, int) and rank >= 1):
        raise PyExplainError(f"the predictor's rank must be a positive integer, got {rank!r}")
    images = images.detach()
    chunks = [images[i:i + batch_size] for i in range(0, images.shape[0], batch_size)]
    settings = {"variant": variant, "reference": bool(reference), "keep_activation_mask": bool(keep_activation_mask),
                "pass_saturated": bool(pass_saturated), "head": bool(head), "family": family, "objective": objective}
    with eval_mode(model):
        f_ref = reference_activations(model, images, head) if reference else None

        def build(chunk: Tensor) -> tuple[RuleGraph, Targets]:
            targets = Targets(None)
            graph = RuleGraph.build(model, chunk, targets, variant=variant, f_ref=f_ref,
                                    keep_activation_mask=keep_activation_mask, head=head,
                                    pass_saturated=pass_saturated)
            return graph, targets

        kept = build(chunks[0])
        calls = [site.call for site in kept[0].sites]
        if resume is not None:
            _check_match(resume, kept[0].sites)
            parameters = _RuleParameters.stored(resume, images)
        else:
            statistics = _activation_statistics(itertools.chain([kept], map(build, chunks[1:]))) \
                if family == "predictor" else None
            parameters = _RuleParameters.initial(kept[0].sites, init, statistics, rank, seed)
        if len(chunks) > 1:
            kept = None  # rebuilt chunk by chunk
        leaves = parameters.leaves()
        optimizer = torch.optim.Adam(leaves, lr=lr)
        history: list[float] = []
        val_morf: list[list[float]] = []
        done = 0
        if resume is not None:
            done, history, val_morf = _take_up(resume, leaves, optimizer)

        def current() -> dict[str, Any]:
            return {"format": FORMAT, "version": VERSION, **settings, "calls": [{"kind": c.kind} for c in calls],
                    **parameters.as_dict()}

        def validate(step: int) -> None:
            from ..metrics.pixel_flipping import morf

            a = fixed_rule_attribution(model, validation, Targets(None), current())
            val_morf.append([float(step), float(morf(model, validation, a).auc.mean())])

        bar = tqdm(range(done, done + iterations), desc="fit-rules", unit="it", disable=not progress,
                   file=sys.stderr, leave=False)
        for step in bar:
            total = 0.0
            grads = [torch.zeros_like(w) for w in leaves]
            for chunk in chunks:
                graph, targets = kept or build(chunk)
                if len(graph.sites) != len(calls):
                    raise PyExplainError("the model's activation calls differ between images; cannot share rules")
                with torch.enable_grad():
                    graph.bind(parameters.weights(graph.sites))
                    a = graph.attribution(create_graph=True)
                    clean = target_scores(graph.logits, targets.indices, targets.score)
                    if objective == "lpr":
                        loss = row_losses(model, graph.x, a, targets.indices, clean, targets.score, config)[0]
                    else:
                        loss = deletion_losses(model, graph.x, a, targets.indices, clean, targets.score)
                        if objective == "deletion_insertion":
                            loss = loss + INSERTION_WEIGHT * insertion_losses(model, graph.x, a, targets.indices)
                    loss = loss.sum() / images.shape[0]
                    for g, part in zip(grads, torch.autograd.grad(loss, leaves, allow_unused=True)):
                        if part is not None:
                            g += part
                total += float(loss.detach())
            for w, g in zip(leaves, grads):
                w.grad = g
            optimizer.step()
            history.append(total)
            if validation is not None and ((step + 1) % validate_every == 0 or step + 1 == done + iterations):
                validate(step + 1)
            bar.set_postfix(loss=f"{total:.4g}", **({"val_morf": f"{val_morf[-1][1]:.3f}"} if val_morf else {}))
        bar.close()
    state = optimizer.state_dict()["state"]
    return {
        "format": FORMAT, "version": VERSION, "model": model_name,
        "input_shape": list(images.shape[1:]), "images": int(images.shape[0]), "iterations": done + int(iterations),
        **settings, "loss_history": torch.tensor(history), "val_morf": torch.tensor(val_morf).reshape(-1, 2),
        "adam": {"step": done + iterations, "exp_avg": [state[i]["exp_avg"].cpu().clone() for i in range(len(leaves))],
                 "exp_avg_sq": [state[i]["exp_avg_sq"].cpu().clone() for i in range(len(leaves))]},
        "calls": [{"index": c.index, "kind": c.kind, "module": c.module_name, "shape": list(c.shape[1:])}
                  for c in calls],
        **parameters.as_dict(),
    }


def _activation_statistics(graphs: Iterable[tuple[RuleGraph, Targets]]) -> list[tuple[Tensor, Tensor]]:
    """Per site over all images and positions, in float64: ``s``, the mean ``|f − f_ref|`` per channel
    (the predictor's scale), and the covariance ``[C, C]`` of ``u = (f − f_ref) / s``."""
    totals: list[list[Tensor]] | None = None
    for graph, _ in graphs:
        sums = []
        for site in graph.sites:
            rows = site.shift.detach().transpose(0, 1).flatten(1).double()  # [C, positions]
            sums.append([rows.abs().sum(1), rows.sum(1), rows @ rows.t(), torch.tensor(float(rows.shape[1]))])
        if totals is not None and len(totals) != len(sums):
            raise PyExplainError("the model's activation calls differ between images; cannot share rules")
        totals = sums if totals is None else [[t + u for t, u in zip(ts, us)] for ts, us in zip(totals, sums)]
    statistics = []
    for absolute, first, second, count in totals:
        scale = (absolute / count).clamp_min(1e-6)
        mean = first / count
        covariance = (second / count - torch.outer(mean, mean)) / torch.outer(scale, scale)
        statistics.append((scale, covariance))
    return statistics


def save_rules(rules: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a rules dict atomically (never a half-written file)."""
    return atomic_write(path, lambda tmp: torch.save(rules, tmp))


def load_rules(path: str | os.PathLike) -> dict[str, Any]:
    """Read a rules file with ``torch.load(weights_only=True)`` and check its structure."""
    path = Path(path)
    if not path.is_file():
        raise PyExplainError(f"rules file {str(path)!r} does not exist")
    try:
        rules = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        detail = (str(exc).splitlines() or [""])[0][:200]
        raise PyExplainError(f"cannot read rules file {str(path)!r} (not a rules file written by pyexplain "
                             f"fit-rules: {type(exc).__name__} {detail})") from None
    return check_rules(rules, str(path))


def check_rules(rules: Any, source: str = "rules") -> dict[str, Any]:
    """``rules`` checked (format, version, shapes, finite values), as a dict with every setting: a
    version 1 file gets ``family="channel"``, ``objective="lpr"``; a version 1 or 2 file
    ``pass_saturated=False``."""
    if not isinstance(rules, dict) or rules.get("format") != FORMAT:
        raise PyExplainError(f"{source} is not a pyexplain LPR rules file (made by `pyexplain fit-rules`)")
    if rules.get("version") not in (1, 2, VERSION):
        raise PyExplainError(f"{source} has rules format version {rules.get('version')!r}; this pyexplain reads 1 to {VERSION}")
    if rules["version"] == 1:
        rules = {**rules, "family": "channel", "objective": "lpr"}
    if rules["version"] in (1, 2):
        rules = {**rules, "pass_saturated": False}
    calls, weights, predictors = rules.get("calls"), rules.get("weights"), rules.get("predictors")
    if (not isinstance(calls, list) or not isinstance(weights, list) or len(calls) != len(weights)
            or not all(isinstance(w, Tensor) and w.ndim == 1 and torch.isfinite(w).all() for w in weights)
            or any(key not in rules for key in _SETTINGS)
            or rules.get("family") not in FAMILIES or rules.get("objective") not in OBJECTIVES
            or (rules["family"] == "channel") != (predictors is None)
            or (predictors is not None and not _predictors_match(predictors, weights))):
        raise PyExplainError(f"{source} is a damaged LPR rules file (calls, weights, predictors or settings missing or malformed)")
    return rules


def _predictors_match(predictors: Any, weights: list[Tensor]) -> bool:
    """Whether ``predictors`` holds one well-formed predictor per weight vector, all of one rank (the
    first one's)."""
    if not (isinstance(predictors, list) and len(predictors) == len(weights) and predictors
            and isinstance(predictors[0], dict) and isinstance(predictors[0].get("up"), Tensor)
            and predictors[0]["up"].ndim == 2):
        return False
    rank = predictors[0]["up"].shape[1]
    return all(check_predictor(p, w.shape[0], rank) for p, w in zip(predictors, weights))


def _take_up(rules: dict[str, Any], leaves: list[Tensor], optimizer: torch.optim.Adam) -> tuple[int, list[float], list[list[float]]]:
    """Load a resumed fit's Adam state into ``optimizer`` (over ``leaves``, already holding the fitted
    tensors); returns the steps done and the loss and validation histories so far."""
    adam = rules.get("adam")
    if not (isinstance(adam, dict) and isinstance(adam.get("step"), int)
            and all(isinstance(adam.get(k), list) and len(adam[k]) == len(leaves) for k in ("exp_avg", "exp_avg_sq"))
            and all(isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == w.shape == b.shape
                    for a, b, w in zip(adam["exp_avg"], adam["exp_avg_sq"], leaves))):
        raise PyExplainError("the rules to resume carry no optimizer state (written by an older pyexplain); fit anew")
    step = torch.tensor(float(adam["step"]))
    optimizer.load_state_dict({"state": {i: {"step": step.clone(), "exp_avg": a.to(w), "exp_avg_sq": b.to(w)}
                                         for i, (a, b, w) in enumerate(zip(adam["exp_avg"], adam["exp_avg_sq"], leaves))},
                               "param_groups": optimizer.state_dict()["param_groups"]})
    history = rules.get("loss_history")
    val = rules.get("val_morf")
    return (adam["step"], [float(v) for v in history] if isinstance(history, Tensor) else [],
            val.tolist() if isinstance(val, Tensor) else [])


def _check_match(rules: dict[str, Any], sites: list[RuleSite]) -> None:
    fitted = f" (fitted on {rules['model']!r})" if rules.get("model") else ""
    if len(sites) != len(rules["calls"]):
        raise PyExplainError(f"LPR rules do not match the model: {len(rules['calls'])} ruled activation calls in the "
                             f"rules{fitted}, {len(sites)} here")
    for site, record, weight in zip(sites, rules["calls"], rules["weights"]):
        channels = site.call.shape[1]
        if record.get("kind") != site.call.kind or weight.shape[0] != channels:
            raise PyExplainError(
                f"LPR rules do not match the model at activation call {site.call.index} ({site.call.module_name or 'root'}): "
                f"{record.get('kind')} with {weight.shape[0]} channels in the rules{fitted}, "
                f"{site.call.kind} with {channels} here")


def fixed_rule_attribution(model: nn.Module, x: Tensor, targets: Targets, rules: str | os.PathLike | dict) -> Tensor:
    """``A = ∂_rule F_t/∂I ⊙ I`` with the stored rules (``W`` per channel, or predicted per position from
    the activation): 1 forward + 1 backward (plus one single-image reference forward per batch when the
    rules use the reference)."""
    rules = check_rules(rules) if isinstance(rules, dict) else load_rules(rules)
    head = bool(rules["head"])
    f_ref = reference_activations(model, x, head) if rules["reference"] else None
    graph = RuleGraph.build(model, x, targets, variant=rules["variant"], f_ref=f_ref,
                            keep_activation_mask=bool(rules["keep_activation_mask"]), head=head,
                            pass_saturated=bool(rules["pass_saturated"]))
    _check_match(rules, graph.sites)
    predictors = rules.get("predictors") or [None] * len(graph.sites)
    graph.bind([predicted_weight(site.shift, w, p) for site, w, p in zip(graph.sites, rules["weights"], predictors)])
    return graph.attribution(create_graph=False).detach()


def rule_summary(rules: dict[str, Any]) -> str:
    """One line describing a rules dict."""
    history, val = rules.get("loss_history"), rules.get("val_morf")
    final = f", final loss {float(history[-1]):.4g}" if isinstance(history, Tensor) and history.numel() else ""
    if isinstance(val, Tensor) and val.numel():
        final += f", held-out MoRF AUC {float(val[-1, 1]):.4g}"
    kind = "channel" if rules.get("family", "channel") == "channel" else f"rank-{rules['predictors'][0]['up'].shape[1]} predictor"
    return (f"{len(rules['weights'])} {kind} rules for {rules.get('model') or 'a model'} over {rules.get('images')} "
            f"images, {rules.get('iterations')} iterations{final}")

