"""Reading state-dict files safely (``weights_only=True``) and loading them into a model."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import PyExplainError


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """``torch.load(path, weights_only=True)`` with one-line errors; unwraps ``{"state_dict": ...}``."""
    path = Path(path)
    if not path.is_file():
        raise PyExplainError(f"weights file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise PyExplainError(f"weights file {str(path)!r} is empty")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise PyExplainError(f"cannot read weights file {str(path)!r}: {reason}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PyExplainError(f"weights file {str(path)!r} is not a state dict of tensors")
    return state


def load_weights(model: nn.Module, state: dict[str, Tensor], source: str, name: str) -> None:
    """``model.load_state_dict(state, strict=True)``; a mismatch is a one-line error naming ``source``."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise PyExplainError(f"weights {source!r} do not match model {name!r}: {detail[:300]}") from None
