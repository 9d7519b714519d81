"""Where the small models' trained weights come from.

- **Shipped** (seed 0 of every small model): state-dict files inside the package
  (``pyexplain/data/weights/``), checked against :data:`SHIPPED_SHA256` before they are read. Training
  in float32 follows the CPU's rounding (an AMD EPYC with AVX2 and an Intel Xeon with AVX-512 trained
  different synthetic models from one seed), so a model trained on first use differs from machine to
  machine; the shipped file makes every machine explain and judge one model.
  ``python -m pyexplain.data.ship_weights`` retrains them.
- **Cached** (other seeds, or retrained): ``$PYEXPLAIN_CACHE``, else ``$XDG_CACHE_HOME/pyexplain``,
  else ``~/.cache/pyexplain``; trained on first use.

Files are written atomically and read with ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ..errors import PyExplainError
from ..io import atomic_write

SHIPPED_DIR = Path(__file__).parent / "weights"
#: File name → SHA-256 of the shipped weights (written by ``python -m pyexplain.data.ship_weights``).
SHIPPED_SHA256: dict[str, str] = {
    "digits_cnn-v1-seed0.pt": "7b7e16b763a607df722f31fab4a481d355b7bbf753e7381365db01b742950758",
    "synthetic_vgg-v1-seed0.pt": "61ed4810c9f759ed2ce8e9fbed5f5a9fa6a372acff5521b99ad3a395248118f5",
    "synthetic_resnet-v1-seed0.pt": "346f59d2751b17eb9a29e704c0345603742ee7a8cd689b7cfa9d24063fb6b2a3",
}


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
    state = _detached_copy(train())
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return state


def shipped_state(name: str) -> dict[str, Tensor]:
    """The shipped state dict ``name``, after its SHA-256 is checked (one-line error if it is missing
    or damaged)."""
    path = SHIPPED_DIR / name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PyExplainError(f"the weights file {path} shipped with pyexplain cannot be read ({exc.strerror or exc}); "
                             "reinstall pyexplain") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHIPPED_SHA256[name]:
        raise PyExplainError(f"the weights file {path} shipped with pyexplain is damaged (SHA-256 {digest[:16]}…, "
                             f"expected {SHIPPED_SHA256[name][:16]}…); reinstall pyexplain")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # the bytes that were checked


def trained_state(name: str, train: Callable[[], dict[str, Tensor]], retrain: bool = False) -> dict[str, Tensor]:
    """The weights ``name``: the shipped file when the package holds one, else the cache's (trained on
    first use). ``retrain``: ``train()`` anew; cached unless a shipped file has that name (it would never
    be read)."""
    if name in SHIPPED_SHA256:
        return _detached_copy(train()) if retrain else shipped_state(name)
    return cached_state(name, train, retrain)


def weights_name(model: str, version: int, seed: int) -> str:
    """The file name of ``model``'s weights for training recipe ``version`` and ``seed``."""
    return f"{model}-v{version}-seed{seed}.pt"


def weights_source(name: str, retrain: bool = False) -> str:
    """Where :func:`trained_state` took ``name`` from, in words."""
    if name not in SHIPPED_SHA256:
        return f"{'trained now, ' if retrain else ''}cached as {cache_dir() / name}"
    return "trained now, not cached (this seed uses the weights shipped with pyexplain)" if retrain else "shipped with pyexplain"


def _detached_copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A CPU copy of ``state`` without autograd history."""
    return {k: v.detach().cpu().clone() for k, v in state.items()}
