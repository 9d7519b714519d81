"""Amortized LPR (SPEC §3, beyond the paper): ``arch="channel"`` rules learned over a set of images,
saved to a file, and used as a fixed rule (1 forward + 1 backward per image).

A rules file is a plain dict readable by ``torch.load(weights_only=True)``: format tag and version,
the model name, the rule settings (variant, reference, keep_activation_mask, head), one record per
ruled activation call (kind, module, per-row shape) and one weight vector ``[C]`` per call.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..api import eval_mode
from ..core.targets import Targets, target_scores
from ..errors import PyExplainError
from ..io import atomic_write
from ._lpr import LossConfig, RuleGraph, RuleSite, reference_activations, row_losses

FORMAT = "pyexplain-lpr-rules"
VERSION = 1
_SETTINGS = ("variant", "reference", "keep_activation_mask", "head")


def _channel_view(weight: Tensor, site: RuleSite) -> Tensor:
    """A stored ``[C]`` vector shaped to broadcast over ``site``'s activation ``[N, C, ...]``."""
    return weight.reshape(site.shape("channel", 1)).to(site.shift.device, site.shift.dtype)


def fit_rules(model: nn.Module, images: Tensor, *, model_name: str = "", iterations: int = 50, lr: float = 0.2,
              config: LossConfig = LossConfig(), variant: str = "feature", reference: bool = False,
              keep_activation_mask: bool = True, head: bool = False, init: float = 20.0, batch_size: int = 8,
              progress: bool = False, resume: dict[str, Any] | None = None, validation: Tensor | None = None,
              validate_every: int = 10) -> dict[str, Any]:
    """Learn one channel rule per activation call shared by all ``images`` (each explained for its
    top-1 class): Adam on the mean per-image LPR loss. With more than ``batch_size`` images the clean
    forward passes are recomputed per chunk and iteration (bounded memory); otherwise kept.

    Defaults (measured in ``benchmarks/RESULTS.md``, amortized LPR): the masked rule without reference,
    ``φ'(f)·tanh(W_c·f)``, starting at ``W = 20``, where it is the plain gradient but for the weakest
    activations; the fit then learns which channels to damp or flip. On held-out synthetic images this
    beats Grad×Input's MoRF and insertion; the paper's setting (reference, ungated, ``W = 1``) does not.

    ``resume``: a rules dict written by an earlier fit; its weights, Adam state and rule settings are
    taken up (the settings passed here are ignored) and ``iterations`` more steps run, so a fit of
    ``a + b`` steps equals one of ``a`` resumed for ``b``. ``validation``: held-out images whose MoRF
    AUC (SPEC §6, top-1 class) with the current rules is measured every ``validate_every`` steps and
    after the last (``val_morf``: ``[[step, auc], ...]``, shown on the progress bar)."""
    if resume is not None:
        resume = check_rules(resume, "the rules to resume")
        variant, reference = resume["variant"], bool(resume["reference"])
        keep_activation_mask, head = bool(resume["keep_activation_mask"]), bool(resume["head"])
    images = images.detach()
    chunks = [images[i:i + batch_size] for i in range(0, images.shape[0], batch_size)]
    with eval_mode(model):
        f_ref = reference_activations(model, images, head) if reference else None

        def build(chunk: Tensor) -> tuple[RuleGraph, Targets]:
            targets = Targets(None)
            graph = RuleGraph.build(model, chunk, targets, variant=variant, f_ref=f_ref,
                                    keep_activation_mask=keep_activation_mask, head=head)
            return graph, targets

        kept = build(chunks[0])
        calls = [site.call for site in kept[0].sites]
        if resume is not None:
            _check_match(resume, kept[0].sites)
        if len(chunks) > 1:
            kept = None  # rebuilt chunk by chunk
        weights = [torch.full((call.shape[1],), float(init), dtype=images.dtype, device=images.device,
                              requires_grad=True) for call in calls]
        optimizer = torch.optim.Adam(weights, lr=lr)
        history: list[float] = []
        val_morf: list[list[float]] = []
        done = 0
        if resume is not None:
            done, history, val_morf = _take_up(resume, weights, optimizer)

        def validate(step: int) -> None:
            from ..metrics.pixel_flipping import morf

            stored = [w.detach().clone() for w in weights]
            rules = {"format": FORMAT, "version": VERSION, "variant": variant, "reference": reference,
                     "keep_activation_mask": keep_activation_mask, "head": head, "weights": stored,
                     "calls": [{"kind": c.kind} for c in calls]}
            a = fixed_rule_attribution(model, validation, Targets(None), rules)
            val_morf.append([float(step), float(morf(model, validation, a).auc.mean())])

        bar = tqdm(range(done, done + iterations), desc="fit-rules", unit="it", disable=not progress,
                   file=sys.stderr, leave=False)
        for step in bar:
            total = 0.0
            grads = [torch.zeros_like(w) for w in weights]
            for chunk in chunks:
                graph, targets = kept or build(chunk)
                if len(graph.sites) != len(weights):
                    raise PyExplainError("the model's activation calls differ between images; cannot share rules")
                graph.bind([w.reshape(s.shape("channel", 1)) for w, s in zip(weights, graph.sites)])
                with torch.enable_grad():
                    a = graph.attribution(create_graph=True)
                    clean = target_scores(graph.logits, targets.indices, targets.score)
                    loss, _, _ = row_losses(model, graph.x, a, targets.indices, clean, targets.score, config)
                    loss = loss.sum() / images.shape[0]
                    for g, part in zip(grads, torch.autograd.grad(loss, weights)):
                        g += part
                total += float(loss.detach())
            for w, g in zip(weights, grads):
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
        "variant": variant, "reference": bool(reference), "keep_activation_mask": bool(keep_activation_mask),
        "head": bool(head), "loss_history": torch.tensor(history), "val_morf": torch.tensor(val_morf).reshape(-1, 2),
        "adam": {"step": done + iterations, "exp_avg": [state[i]["exp_avg"].cpu().clone() for i in range(len(weights))],
                 "exp_avg_sq": [state[i]["exp_avg_sq"].cpu().clone() for i in range(len(weights))]},
        "calls": [{"index": c.index, "kind": c.kind, "module": c.module_name, "shape": list(c.shape[1:])}
                  for c in calls],
        "weights": [w.detach().cpu().clone() for w in weights],
    }


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
    if not isinstance(rules, dict) or rules.get("format") != FORMAT:
        raise PyExplainError(f"{source} is not a pyexplain LPR rules file (made by `pyexplain fit-rules`)")
    if rules.get("version") != VERSION:
        raise PyExplainError(f"{source} has rules format version {rules.get('version')!r}; this pyexplain reads {VERSION}")
    calls, weights = rules.get("calls"), rules.get("weights")
    if (not isinstance(calls, list) or not isinstance(weights, list) or len(calls) != len(weights)
            or not all(isinstance(w, Tensor) and w.ndim == 1 and torch.isfinite(w).all() for w in weights)
            or any(key not in rules for key in _SETTINGS)):
        raise PyExplainError(f"{source} is a damaged LPR rules file (calls, weights or settings missing or malformed)")
    return rules


def _take_up(rules: dict[str, Any], weights: list[Tensor], optimizer: torch.optim.Adam) -> tuple[int, list[float], list[list[float]]]:
    """Load a resumed fit's weights and Adam state into ``weights``/``optimizer``; returns the steps done
    and the loss and validation histories so far."""
    adam = rules.get("adam")
    if not (isinstance(adam, dict) and isinstance(adam.get("step"), int)
            and all(isinstance(adam.get(k), list) and len(adam[k]) == len(weights) for k in ("exp_avg", "exp_avg_sq"))
            and all(a.shape == w.shape == b.shape for a, b, w in zip(adam["exp_avg"], adam["exp_avg_sq"], weights))):
        raise PyExplainError("the rules to resume carry no optimizer state (written by an older pyexplain); fit anew")
    with torch.no_grad():
        for w, stored in zip(weights, rules["weights"]):
            w.copy_(stored)
    step = torch.tensor(float(adam["step"]))
    optimizer.load_state_dict({"state": {i: {"step": step.clone(), "exp_avg": a.to(w), "exp_avg_sq": b.to(w)}
                                         for i, (a, b, w) in enumerate(zip(adam["exp_avg"], adam["exp_avg_sq"], weights))},
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
    """``A = ∂_rule F_t/∂I ⊙ I`` with the stored channel rules: 1 forward + 1 backward (plus one
    single-image reference forward per batch when the rules use the reference)."""
    rules = check_rules(rules) if isinstance(rules, dict) else load_rules(rules)
    head = bool(rules["head"])
    f_ref = reference_activations(model, x, head) if rules["reference"] else None
    graph = RuleGraph.build(model, x, targets, variant=rules["variant"], f_ref=f_ref,
                            keep_activation_mask=bool(rules["keep_activation_mask"]), head=head)
    _check_match(rules, graph.sites)
    graph.bind([_channel_view(w, s) for w, s in zip(rules["weights"], graph.sites)])
    return graph.attribution(create_graph=False).detach()


def rule_summary(rules: dict[str, Any]) -> str:
    """One line describing a rules dict."""
    history, val = rules.get("loss_history"), rules.get("val_morf")
    final = f", final loss {float(history[-1]):.4g}" if isinstance(history, Tensor) and history.numel() else ""
    if isinstance(val, Tensor) and val.numel():
        final += f", held-out MoRF AUC {float(val[-1, 1]):.4g}"
    return (f"{len(rules['weights'])} channel rules for {rules.get('model') or 'a model'} over {rules.get('images')} "
            f"images, {rules.get('iterations')} iterations{final}")

