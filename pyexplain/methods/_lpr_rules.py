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
              progress: bool = False) -> dict[str, Any]:
    """Learn one channel rule per activation call shared by all ``images`` (each explained for its
    top-1 class): Adam on the mean per-image LPR loss. With more than ``batch_size`` images the clean
    forward passes are recomputed per chunk and iteration (bounded memory); otherwise kept.

    Defaults (measured in ``benchmarks/RESULTS.md``, amortized LPR): the masked rule without reference,
    ``φ'(f)·tanh(W_c·f)``, starting at ``W = 20``, where it is the plain gradient but for the weakest
    activations; the fit then learns which channels to damp or flip. On held-out synthetic images this
    beats Grad×Input's MoRF and insertion; the paper's setting (reference, ungated, ``W = 1``) does not."""
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
        if len(chunks) > 1:
            kept = None  # rebuilt chunk by chunk
        weights = [torch.full((call.shape[1],), float(init), dtype=images.dtype, device=images.device,
                              requires_grad=True) for call in calls]
        optimizer = torch.optim.Adam(weights, lr=lr)
        history: list[float] = []
        bar = tqdm(range(iterations), desc="fit-rules", unit="it", disable=not progress, file=sys.stderr, leave=False)
        for _ in bar:
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
            bar.set_postfix(loss=f"{total:.4g}")
        bar.close()
    return {
        "format": FORMAT, "version": VERSION, "model": model_name,
        "input_shape": list(images.shape[1:]), "images": int(images.shape[0]), "iterations": int(iterations),
        "variant": variant, "reference": bool(reference), "keep_activation_mask": bool(keep_activation_mask),
        "head": bool(head), "loss_history": torch.tensor(history),
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
    history = rules.get("loss_history")
    final = f", final loss {float(history[-1]):.4g}" if isinstance(history, Tensor) and history.numel() else ""
    return (f"{len(rules['weights'])} channel rules for {rules.get('model') or 'a model'} over {rules.get('images')} "
            f"images, {rules.get('iterations')} iterations{final}")

