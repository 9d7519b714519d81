"""Frozen amortized-LPR channel rules as the explainer compiler takes them.

Sources: a rules file from ``pyexplain fit-rules`` (a dict read with ``torch.load(weights_only=True)``:
``format="pyexplain-lpr-rules"``, ``version=1``, ``calls`` — one record per ruled activation call with
its ``index`` and ``kind`` —, ``weights`` — one ``[C]`` tensor per record —, and the settings
``variant``, ``reference``, ``keep_activation_mask``), the same dict in memory, or a plain list with
one tensor ``[C]`` (or ``None`` for the plain gradient) per activation call, in call order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import PyExplainError
from ..methods._lpr_rules import load_rules

FORMAT = "pyexplain-lpr-rules"
VERSION = 1
VARIANTS = ("feature", "gradient")


@dataclass(frozen=True)
class ChannelRules:
    """``weights[i]``: the rule of activation call ``i`` (absent: the plain gradient there)."""

    weights: dict[int, Tensor]
    kinds: dict[int, str] = field(default_factory=dict)
    variant: str = "feature"
    reference: bool = True
    keep_activation_mask: bool = False
    source: str = "rules"

    def per_call(self, kinds: Sequence[str]) -> list[Tensor | None]:
        """One weight (or ``None``) per activation call of a model whose calls have ``kinds``."""
        outside = sorted(i for i in self.weights if not 0 <= i < len(kinds))
        if outside:
            raise PyExplainError(f"{self.source} has a rule for activation call {outside[0]} but the model makes "
                                 f"{len(kinds)} activation calls")
        for index, kind in self.kinds.items():
            if kinds[index] != kind:
                raise PyExplainError(f"{self.source} do not match the model: activation call {index} is {kind} in "
                                     f"the rules, {kinds[index]} here")
        return [self.weights.get(i) for i in range(len(kinds))]


def _from_dict(rules: dict[str, Any], source: str) -> ChannelRules:
    if rules.get("format") != FORMAT:
        raise PyExplainError(f"{source} is not a pyexplain LPR rules file (made by `pyexplain fit-rules`)")
    if rules.get("version") != VERSION:
        raise PyExplainError(f"{source} has rules format version {rules.get('version')!r}; this pyexplain reads {VERSION}")
    calls, weights = rules.get("calls"), rules.get("weights")
    if (not isinstance(calls, list) or not isinstance(weights, list) or len(calls) != len(weights)
            or not all(isinstance(c, dict) and isinstance(c.get("index"), int) for c in calls)
            or not all(isinstance(w, Tensor) and w.ndim == 1 and bool(torch.isfinite(w).all()) for w in weights)
            or rules.get("variant", "feature") not in VARIANTS):
        raise PyExplainError(f"{source} is a damaged LPR rules file (calls, weights or settings malformed)")
    return ChannelRules(
        weights={c["index"]: w.float() for c, w in zip(calls, weights)},
        kinds={c["index"]: c["kind"] for c in calls if "kind" in c},
        variant=rules.get("variant", "feature"), reference=bool(rules.get("reference", True)),
        keep_activation_mask=bool(rules.get("keep_activation_mask", False)), source=source,
    )


def load_channel_rules(source: ChannelRules | str | os.PathLike | dict | Sequence[Tensor | None]) -> ChannelRules:
    """Channel rules from a rules file, its dict, or a per-call list of tensors."""
    if isinstance(source, ChannelRules):
        return source
    if isinstance(source, dict):
        return _from_dict(source, "LPR rules")
    if isinstance(source, (str, os.PathLike)):
        return _from_dict(load_rules(source), f"rules file {str(source)!r}")
    if isinstance(source, (list, tuple)) and all(w is None or isinstance(w, Tensor) for w in source):
        return ChannelRules({i: w.detach().float() for i, w in enumerate(source) if w is not None}, source="LPR rules")
    raise PyExplainError("rules must be a rules file, its dict, or a list of per-call tensors (None for no rule)")
