"""Frozen amortized-LPR channel rules as the explainer compiler takes them.

Sources: a rules file from ``pyexplain fit-rules`` or its dict (read and checked by
:mod:`pyexplain.methods._lpr_rules`: ``calls`` — one record per ruled activation call with its
``index`` and ``kind`` —, ``weights`` — one ``[C]`` tensor per record —, and the settings
``variant``, ``reference``, ``keep_activation_mask``, ``pass_saturated`` —, for the predictor family
``predictors``, one dict of predictor tensors per record), or a plain list with one tensor ``[C]`` (or
``None`` for the plain gradient) per activation call, in call order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from torch import Tensor

from ..errors import PyExplainError


@dataclass(frozen=True)
class ChannelRules:
    """``weights[i]``: the rule of activation call ``i`` (absent: the plain gradient there);
    ``predictors[i]``: its predictor of ``W`` from the activation (absent: ``W = weights[i]``)."""

    weights: dict[int, Tensor]
    predictors: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    kinds: dict[int, str] = field(default_factory=dict)
    variant: str = "feature"
    reference: bool = True
    keep_activation_mask: bool = False
    pass_saturated: bool = False
    source: str = "LPR rules"

    def per_call(self, kinds: Sequence[str]) -> list[Tensor | None]:
        """One weight (or ``None``) per activation call of a model whose calls have ``kinds``."""
        outside = sorted(i for i in self.weights if not 0 <= i < len(kinds))
        if outside:
            raise PyExplainError(f"{self.source} do not match the model: a rule for activation call {outside[0]}, "
                                 f"but the model makes {len(kinds)} activation calls")
        for index, kind in self.kinds.items():
            if kinds[index] != kind:
                raise PyExplainError(f"{self.source} do not match the model: activation call {index} is {kind} in "
                                     f"the rules, {kinds[index]} here")
        return [self.weights.get(i) for i in range(len(kinds))]


def _from_file_dict(rules: dict[str, Any], source: str) -> ChannelRules:
    calls = rules["calls"]
    if not all(isinstance(c, dict) and isinstance(c.get("index"), int) for c in calls):
        raise PyExplainError(f"{source} is a damaged LPR rules file (call records without an index)")
    if rules["variant"] not in ("feature", "gradient"):
        raise PyExplainError(f"{source} has an unknown rule variant {rules['variant']!r}")
    predictors = rules.get("predictors") or []
    return ChannelRules(
        weights={c["index"]: w.float() for c, w in zip(calls, rules["weights"])},
        predictors={c["index"]: {k: t.float() for k, t in p.items()} for c, p in zip(calls, predictors)},
        kinds={c["index"]: c["kind"] for c in calls if "kind" in c},
        variant=str(rules["variant"]), reference=bool(rules["reference"]),
        keep_activation_mask=bool(rules["keep_activation_mask"]), pass_saturated=bool(rules["pass_saturated"]),
        source=source,
    )


def load_channel_rules(source: ChannelRules | str | os.PathLike | dict | Sequence[Tensor | None]) -> ChannelRules:
    """Channel rules from a rules file, its dict, or a per-call list of tensors."""
    from ..methods._lpr_rules import check_rules, load_rules

    if isinstance(source, ChannelRules):
        return source
    if isinstance(source, dict):
        return _from_file_dict(check_rules(source, "LPR rules"), "LPR rules")
    if isinstance(source, (str, os.PathLike)):
        return _from_file_dict(load_rules(source), f"rules file {str(source)!r}")
    if isinstance(source, (list, tuple)) and all(w is None or isinstance(w, Tensor) for w in source):
        return ChannelRules({i: w.detach().float() for i, w in enumerate(source) if w is not None})
    raise PyExplainError("rules must be a rules file, its dict, or a list of per-call tensors (None for no rule)")
