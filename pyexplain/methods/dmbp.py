"""DMBP: Disentangled Masked Backpropagation (Ruiz, Agudo, Moreno-Noguer, ICCV 2021; SPEC §4).

At its input, a piecewise-linear network's logit is linear in the input and the hidden biases,
``y = ∇ₓF·x + Σ_b ∇_bF·b`` (the head's own bias, which no mask reaches, is left out). DMBP learns a
mask ``σ_l = sigmoid(s_l)`` per activation call, shaped like its output, and splits ``y`` into

- ``y⁺(σ)``: the same decomposition with the gradient at every activation output multiplied by ``σ_l``,
- ``y⁻(σ)``: likewise with ``1 − σ_l``,
- ``ỹ = y − y⁺ − y⁻`` (nuisance),

minimizing ``y⁻ − y⁺ + |ỹ|`` (``loss="all"``; ``"pos_neg"``: ``y⁻ − y⁺``; ``"pos"``: ``−y⁺``) with
RMSprop (lr 0.01, 200 iterations, ``s = 0`` at start). Output: ``∇ₓF⁺ ⊙ x`` (``positive``),
``∇ₓF⁻ ⊙ x`` (``negative``) and their sum (the attribution).

Computed without a double backward: ``y^±`` is the *gated forward* of
:mod:`pyexplain.core.linearize` (gates and max-pool indices frozen from the clean pass, activation
outputs multiplied by ``σ`` or ``1 − σ``), both halves in one batched pass; one iteration is that
pass plus one backward to ``s``. ``benchmarks/dmbp_naive.py`` keeps the paper's formulation (masked
backward passes with bias gradients and a double backward) as the reference.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..core.linearize import gated_forward, linearize as linearize_model
from ..core.targets import Targets
from ..errors import PyExplainError
from ..registry import MethodResult, register_method

LOSSES = ("all", "pos_neg", "pos")


def _pick(logits: Tensor, classes: Tensor) -> Tensor:
    return logits.gather(1, classes[:, None])[:, 0]


class DMBPObjective:
    """``y``, ``y⁺(σ)``, ``y⁻(σ)`` of a batch, by gated forwards at the batch's clean linearization.

    ``y = F_t(x) − c`` where ``c = G(x; σ≡0)`` is the part of the logit that no mask reaches (the
    output layer's bias, and anything else after the last activation).
    """

    def __init__(self, model: nn.Module, x: Tensor, targets: Targets, *, smooth: bool = False) -> None:
        if targets.score != "logit":
            raise PyExplainError("dmbp decomposes the logit; use score='logit'")
        self.model, self.x, self.n = model, x.detach(), x.shape[0]
        self.state = linearize_model(model, self.x, smooth=smooth)
        self.classes = targets.resolve(self.state.logits)
        self.shapes = [u.shape for u in self.state.masked_units]
        with torch.no_grad():
            zeros = [x.new_zeros(shape) for shape in self.shapes]
            self.constant = _pick(gated_forward(model, self.x, self.state, zeros), self.classes)
        self.y = _pick(self.state.logits, self.classes) - self.constant

    def init_logits(self) -> list[Tensor]:
        """``s_l = 0`` (``σ = 0.5``) for every masked activation call, as leaves."""
        return [self.x.new_zeros(shape, requires_grad=True) for shape in self.shapes]

    def terms(self, logits: list[Tensor], *, negative: bool = True) -> tuple[Tensor, Tensor | None]:
        """``(y⁺, y⁻)`` at ``σ = sigmoid(logits)``: one batched gated forward of ``[x; x]`` with masks
        ``[σ; 1 − σ]`` (``negative=False``: ``y⁺`` alone, from ``x`` and ``σ``; ``y⁻`` is None)."""
        sigmas = [torch.sigmoid(s) for s in logits]
        if not negative:
            return _pick(gated_forward(self.model, self.x, self.state, sigmas), self.classes) - self.constant, None
        both = self._pair(sigmas, torch.cat([self.x, self.x]))
        return both[:self.n], both[self.n:]

    def _pair(self, sigmas: list[Tensor], x_pair: Tensor) -> Tensor:
        masks = [torch.cat([s, 1 - s]) for s in sigmas]
        out = gated_forward(self.model, x_pair, self.state, masks)
        return _pick(out, self.classes.repeat(2)) - self.constant.repeat(2)

    def input_gradients(self, logits: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``(∇ₓF⁺, ∇ₓF⁻)``: the gated forward's input gradients at ``σ = sigmoid(logits)``."""
        x_pair = torch.cat([self.x, self.x]).requires_grad_(True)
        with torch.enable_grad():
            both = self._pair([torch.sigmoid(s.detach()) for s in logits], x_pair)
            (grad,) = torch.autograd.grad(both.sum(), x_pair)
        return grad[:self.n], grad[self.n:]


def dmbp_loss(y: Tensor, y_pos: Tensor, y_neg: Tensor | None, variant: str) -> Tensor:
    """Per-row loss: ``"all"``: ``y⁻ − y⁺ + |y − y⁺ − y⁻|``; ``"pos_neg"``: ``y⁻ − y⁺``; ``"pos"``: ``−y⁺``."""
    if variant == "pos":
        return -y_pos
    if variant == "pos_neg":
        return y_neg - y_pos
    return y_neg - y_pos + (y - y_pos - y_neg).abs()


@dataclass(frozen=True)
class Step:
    """One iteration's terms, evaluated at the masks *before* that iteration's update."""

    iteration: int
    y_pos: Tensor
    y_neg: Tensor | None
    loss: Tensor


def optimize(objective: DMBPObjective, logits: list[Tensor], iterations: int, lr: float, loss: str) -> Iterator[Step]:
    """RMSprop on ``logits`` (updated in place), yielding each iteration's :class:`Step` before its update.

    Rows are independent (per-row masks, summed losses, elementwise RMSprop), so a batch gives the
    same result as its rows one at a time.
    """
    optimizer = torch.optim.RMSprop(logits, lr=lr)
    for i in range(iterations):
        with torch.enable_grad():
            y_pos, y_neg = objective.terms(logits, negative=loss != "pos")
            rows = dmbp_loss(objective.y, y_pos, y_neg, loss)
            grads = torch.autograd.grad(rows.sum(), logits)
        yield Step(i, y_pos.detach(), None if y_neg is None else y_neg.detach(), rows.detach())
        for param, grad in zip(logits, grads):
            param.grad = grad
        optimizer.step()


def _check_options(iterations: int, lr: float, loss: str) -> None:
    if iterations < 1:
        raise PyExplainError(f"iterations must be at least 1, got {iterations}")
    if not lr > 0:
        raise PyExplainError(f"lr must be positive, got {lr}")
    if loss not in LOSSES:
        raise PyExplainError(f"unknown dmbp loss {loss!r}; use one of {', '.join(LOSSES)}")


@register_method(
    "dmbp",
    description="learned masks on every activation split the logit into positive, negative and nuisance parts",
    paper="Ruiz, Agudo, Moreno-Noguer: Generating Attribution Maps with Disentangled Masked Backpropagation (ICCV 2021)",
    cost="iterations × (1 gated forward of 2 rows + 1 backward), plus 3 forwards and 1 backward",
    iterative=True,
)
def dmbp(model: nn.Module, x: Tensor, targets: Targets, *, iterations: int = 200, lr: float = 0.01,
         loss: str = "all", linearize: bool = False, progress: bool = False) -> MethodResult:
    """``A = ∇ₓF⁺ ⊙ x + ∇ₓF⁻ ⊙ x`` at the learned masks; extras ``positive``, ``negative``
    ``[N, C, H, W]`` and ``loss_history`` ``[N, iterations]``. ``linearize=True`` accepts models
    with SiLU/GELU/sigmoid gates by freezing them at the clean pass
    (:func:`pyexplain.core.linearize.linearize`)."""
    _check_options(iterations, lr, loss)
    objective = DMBPObjective(model, x, targets, smooth=linearize)
    logits = objective.init_logits()
    history = x.new_zeros(x.shape[0], iterations)
    with tqdm(total=iterations, desc="dmbp", unit="it", disable=not progress, file=sys.stderr, leave=False) as bar:
        for step in optimize(objective, logits, iterations, lr, loss):
            history[:, step.iteration] = step.loss
            bar.set_postfix(loss=f"{step.loss.mean().item():.4g}", refresh=False)
            bar.update(1)
    grad_pos, grad_neg = objective.input_gradients(logits)
    positive, negative = grad_pos * x, grad_neg * x
    return MethodResult(positive + negative, {"positive": positive, "negative": negative, "loss_history": history})
