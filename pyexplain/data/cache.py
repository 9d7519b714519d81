"""Where trained small models live: ``$PYEXPLAIN_CACHE``, else ``$XDG_CACHE_HOME/pyexplain``, else
``~/.cache/pyexplain``. Files are written atomically and read with ``weights_only=True``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ..io import atomic_write


def cache_dir() -> Path:
    """The directory for pyexplain's cached models (not created here)."""
    if os.environ.get("PYEXPLAIN_CACHE"):
        return Path(os.environ["PYEXPLAIN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "pyexplain"


def cached_state(name: str, train: Callable[[], dict[str, Tensor]], retrain: bool = False) -> dict[str, Tensor]:
    """The state dict cached as ``cache_dir()/name``; ``train()`` makes (and caches) it when it is
    missing, unreadable or ``retrain`` is set."""
    path = cache_dir() / name
    if path.is_file() and not retrain:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a corrupt cache entry is rebuilt, never trusted
            pass
    state = {k: v.detach().cpu().clone() for k, v in train().items()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return state
