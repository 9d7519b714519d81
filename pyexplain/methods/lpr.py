"""LPR: learnable propagation rules (SPEC §3), per image or with amortized rules from a file."""
from __future__ import annotations

import math
import os
import sys
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..core.targets import Targets, target_scores
from ..errors import PyExplainError
from ..registry import MethodResult, register_method
from ._lpr import (ARCHS, MASKS, NORMALIZATIONS, VARIANTS, LossConfig, RuleGraph, check_choice, initial_weights,
                   reference_activations, row_losses)
from ._lpr_rules import fixed_rule_attribution


def _check_options(iterations: int, lr: float, gamma: float, arch: str, variant: str, mask: str, normalize: str,
                   smooth_sigma: float, patience: int) -> None:
    check_choice("arch", arch, ARCHS)
    check_choice("variant", variant, VARIANTS)
    check_choice("mask", mask, MASKS)
    check_choice("normalize", normalize, NORMALIZATIONS)
    if int(iterations) != iterations or iterations < 1:
        raise PyExplainError(f"lpr option iterations must be a positive integer, got {iterations!r}")
    for name, value in (("lr", lr), ("gamma", gamma), ("smooth_sigma", smooth_sigma)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise PyExplainError(f"lpr option {name} must be a positive number, got {value!r}")
    if patience < 0:
        raise PyExplainError(f"lpr option patience must be >= 0 (0: no early stop), got {patience}")


def optimize_rules(model: nn.Module, graph: RuleGraph, weights: list[Tensor], target: Tensor, score, config: LossConfig,
                   *, iterations: int, lr: float, patience: int = 0, tol: float = 1e-4, progress: bool = False,
                   keep_masks: bool = False) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """Adam on per-row weights bound to ``graph``; each row is independent (losses are summed).

    Returns ``(A, loss_history [N, iterations run], (Mp, Mn) or None)``: each row's attribution of its
    last evaluated iteration. A row stops early when its loss has not fallen by ``tol·|best|`` for
    ``patience`` iterations (0: never); its later history entries are NaN.
    """
    graph.bind(weights)
    clean = target_scores(graph.logits, target, score)
    n = graph.x.shape[0]
    optimizer = torch.optim.Adam(weights, lr=lr)
    history = torch.full((n, iterations), math.nan, dtype=graph.logits.dtype)
    active = torch.ones(n, dtype=torch.bool)
    best = torch.full((n,), math.inf, dtype=history.dtype)
    stale = torch.zeros(n, dtype=torch.long)
    attribution = torch.zeros_like(graph.x)
    kept = (torch.ones_like(graph.x[:, :1]), torch.ones_like(graph.x[:, :1])) if keep_masks else None
    run = 0
    bar = tqdm(range(iterations), desc="lpr", unit="it", disable=not progress, file=sys.stderr, leave=False)
    for step in bar:
        last = step == iterations - 1
        a = graph.attribution(create_graph=not last)
        with torch.set_grad_enabled(not last):
            loss, mp, mn = row_losses(model, graph.x, a, target, clean, score, config)
            grads = None if last else torch.autograd.grad(loss.sum(), weights)
        rows = active.to(a.device)
        attribution[rows] = a.detach()[rows]
        if kept is not None:
            kept[0][rows], kept[1][rows] = mp.detach()[rows], mn.detach()[rows]
        value = loss.detach().to(history.device, history.dtype)
        history[active, step] = value[active]
        run = step + 1
        bar.set_postfix(loss=f"{float(value[active].mean()):.4g}")
        if patience:
            improved = ~torch.isfinite(best) | (value < best - tol * best.abs())
            stale = torch.where(improved, torch.zeros_like(stale), stale + 1)
            best = torch.minimum(best, value)
            active &= stale < patience
            if not active.any():
                break
        if grads is not None:
            for w, g in zip(weights, grads):
                w.grad = g
            optimizer.step()
    bar.close()
    for w in weights:
        w.grad = None
    return attribution, history[:, :run], kept


@register_method(
    "lpr",
    description="learned propagation rules: a per-image rule φ'(f)·tanh(W⊙(f−f_ref)) at every activation, "
                "optimized so that masking the map's positive/negative pixels moves the score most",
    paper="Yang, Qiu, Song, Tao, Wang: Learning Propagation Rules for Attribution Map Generation (ECCV 2020)",
    cost="1 reference forward + 1 forward + iterations × (second-order backward + forward/backward of 2 masked "
         "copies); with rules=FILE: 1 forward + 1 backward",
    iterative=True,
)
def lpr(
    model: nn.Module, x: Tensor, targets: Targets, *,
    iterations: int = 50, lr: float = 0.007, gamma: float = 10.0, alpha: float = 0.75, beta: float = 0.25,
    lam: float = 0.1, arch: str = "position", variant: str = "feature", reference: bool = True,
    mask: str = "sigmoid", smooth_sigma: float = 4.0, normalize: str = "symmetric", keep_activation_mask: bool = True,
    pass_saturated: bool = False, head: bool = False, init: float = 1.0, init_std: float = 0.0, seed: int = 0, patience: int = 0,
    tol: float = 1e-4, return_masks: bool = False, rules: str | os.PathLike | dict[str, Any] | None = None,
    progress: bool = False,
) -> MethodResult | Tensor:
    """Learn ``W`` per image and call: rule ``g_in = g_out ⊙ tanh(W ⊙ (f − f_ref))`` (``variant="gradient"``:
    ``tanh(W ⊙ g_out)``; ``keep_activation_mask`` (default; measured in ``benchmarks/RESULTS.md``, LPR) also
    multiplies by ``φ'(f)``; with ``pass_saturated`` a clamped activation's (ReLU6, hardtanh) factor is
    ``1[f > low]``, so its saturated inputs pass as IG and DeepLIFT let them), ``A = ∂_rule F_t/∂I ⊙ I``,
    masks ``Mp = 1 − σ(γ(â − α))``, ``Mn = σ(γ(â − β))`` of the normalized map ``â``, loss
    ``F_t(I⊙Mp) − F_t(I) + F_t(I) − F_t(I⊙Mn) + λ(mean|1−Mp| + mean|1−Mn|)`` minimized by Adam.

    ``lr`` defaults to 0.007, not the paper's 0.2: the loss gradient runs through the masked images'
    ReLU gates, so it jumps when float rounding moves the map, and at 0.2 fifty Adam steps amplify
    that into a different map per thread count or precision (Spearman 0.65–0.77 between 1 and 2
    threads on EfficientNet-Lite0 photos; ≥ 0.97 at 0.007, with the lowest MoRF kept). Measured in
    ``benchmarks/RESULTS.md`` (LPR).

    ``normalize``: the map's per-image ``[0, 1]`` scaling before the masks, ``"symmetric"``
    (``(a/max|a| + 1)/2``, zero stays at 0.5) or ``"minmax"``; ``mask="smooth"`` Gaussian-smooths it
    (σ = ``smooth_sigma`` pixels) first. ``patience``/``tol``: per-row early stop on a loss plateau.
    ``arch``: ``"position"`` (one weight per channel and position) or ``"channel"``; ``W`` starts at
    ``init`` (+ seeded ``N(0, init_std²)``); ``head`` also puts rules on the classifier head's
    activations. ``rules``: a file (or loaded dict) from ``pyexplain fit-rules``, used as a fixed rule.
    Extras: ``loss_history`` ``[N, iterations run]``, and with ``return_masks`` ``positive_mask`` /
    ``negative_mask`` ``[N, 1, H, W]``.
    """
    if rules is not None:
        return fixed_rule_attribution(model, x, targets, rules)
    _check_options(iterations, lr, gamma, arch, variant, mask, normalize, smooth_sigma, patience)
    config = LossConfig(gamma, alpha, beta, lam, mask, smooth_sigma, normalize)
    f_ref = reference_activations(model, x, head) if reference else None
    graph = RuleGraph.build(model, x, targets, variant=variant, f_ref=f_ref,
                            keep_activation_mask=keep_activation_mask, head=head, pass_saturated=pass_saturated)
    weights = initial_weights(graph.sites, arch, x.shape[0], init, init_std, seed, x.dtype, x.device)
    attribution, history, kept = optimize_rules(
        model, graph, weights, targets.indices, targets.score, config, iterations=int(iterations), lr=lr,
        patience=patience, tol=tol, progress=progress, keep_masks=return_masks)
    extras = {"loss_history": history}
    if kept is not None:
        extras.update(positive_mask=kept[0], negative_mask=kept[1])
    return MethodResult(attribution, extras)
