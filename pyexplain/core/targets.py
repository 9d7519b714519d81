"""Which class each row of a batch is explained for, and the score that is differentiated."""
from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
from torch import Tensor, nn

from ..errors import PyExplainError
from ..preprocess import find_class

#: ``None`` (top-1), one class for every image, one per image, or a list of classes per image; a
#: class is an index or, when the class names are known, a name.
TargetSpec = Union[None, int, str, Sequence[Union[int, str]], Sequence[Sequence[Union[int, str]]], Tensor]
#: ``"logit"`` (default), ``"probability"``, ``"log_probability"`` or ``f(logits, targets) -> [N]``.
ScoreSpec = Union[str, Callable[[Tensor, Tensor], Tensor]]


def class_names_to_indices(target: TargetSpec, labels: Sequence[str] | None) -> TargetSpec:
    """``target`` with every class name replaced by its index in ``labels`` (see
    :func:`pyexplain.preprocess.find_class`); a name without known labels is a one-line error."""
    if isinstance(target, str):
        if labels is None:
            raise PyExplainError(f"target {target!r} is a class name, but the model's class names are unknown: "
                                 "give a class index, or pass preprocess= (from pyexplain.load_model)")
        return find_class(tuple(labels), target)
    if isinstance(target, (list, tuple)):
        return [class_names_to_indices(t, labels) for t in target]
    return target


def expand_targets(x: Tensor, target: TargetSpec) -> tuple[Tensor, Tensor, Tensor | None]:
    """Turn a target spec into rows: returns ``(x_rows, image_index, targets_or_None)``.

    A list of lists (several classes for one image) repeats that image once per class; ``None``
    leaves the targets to be resolved as the top-1 class from the model's clean logits.
    """
    n = x.shape[0]
    rows = torch.arange(n)
    if target is None:
        return x, rows, None
    if isinstance(target, Tensor):
        target = target.tolist()
    if isinstance(target, int):
        return x, rows, torch.full((n,), target, dtype=torch.long)
    target = list(target)
    if len(target) != n:
        raise PyExplainError(f"got {len(target)} targets for {n} images; give one target per image")
    if any(isinstance(t, (list, tuple)) for t in target):
        per_image = [list(t) if isinstance(t, (list, tuple)) else [t] for t in target]
        index = torch.tensor([i for i, ts in enumerate(per_image) for _ in ts], dtype=torch.long)
        flat = torch.tensor([t for ts in per_image for t in ts], dtype=torch.long)
        return x[index], index, flat
    return x, rows, torch.tensor([int(t) for t in target], dtype=torch.long)


def check_targets(targets: Tensor, num_classes: int) -> None:
    bad = targets[(targets < 0) | (targets >= num_classes)]
    if bad.numel():
        raise PyExplainError(f"target {int(bad[0])} is outside the model's classes 0..{num_classes - 1}")


def target_scores(logits: Tensor, targets: Tensor, score: ScoreSpec = "logit") -> Tensor:
    """The differentiated score of each row: ``[N]``."""
    if callable(score):
        return score(logits, targets)
    if score == "logit":
        values = logits
    elif score == "probability":
        values = logits.softmax(1)
    elif score == "log_probability":
        values = logits.log_softmax(1)
    else:
        raise PyExplainError(f"unknown score {score!r}; use 'logit', 'probability' or 'log_probability'")
    return values.gather(1, targets.to(logits.device)[:, None])[:, 0]


class Targets:
    """Targets of one batch, resolved to class indices from the model's clean logits when needed.

    Methods call :meth:`resolve` with the logits of their own clean forward pass (so top-1 costs
    no extra pass), or :meth:`resolve_with` when they never run one.
    """

    def __init__(self, explicit: Tensor | None, score: ScoreSpec = "logit") -> None:
        self.explicit = explicit
        self.score = score
        self.logits: Tensor | None = None
        self.indices: Tensor | None = None

    def resolve(self, logits: Tensor) -> Tensor:
        logits = logits.detach()
        if self.indices is None:
            indices = logits.argmax(1) if self.explicit is None else self.explicit.to(logits.device)
            check_targets(indices, logits.shape[1])
            self.logits, self.indices = logits, indices
        return self.indices

    def resolve_with(self, model: nn.Module, x: Tensor) -> Tensor:
        if self.indices is None:
            with torch.no_grad():
                self.resolve(model(x))
        return self.indices

    def scores(self, logits: Tensor) -> Tensor:
        """Differentiable target scores of ``logits`` (rows in the same order as the batch)."""
        return target_scores(logits, self.resolve(logits) if self.indices is None else self.indices, self.score)
