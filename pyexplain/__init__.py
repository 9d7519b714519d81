"""pyexplain: attribution maps for image classifiers — learned backward passes (LPR, DMBP) and
the classic baselines, with metrics, fused kernels, export and a CLI.

The public names are imported on first use (module ``__getattr__``), so that ``import pyexplain``
and the command line's help start without torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import PyExplainError

if TYPE_CHECKING:
    from .api import explain
    from .explanation import Explanation
    from .export import export_explainer
    from .models import load_model
    from .ops import backend
    from .registry import list_methods

#: Public name → the module that defines it.
_LAZY = {
    "explain": ".api",
    "export_explainer": ".export",
    "load_model": ".models",
    "list_methods": ".registry",
    "backend": ".ops",
    "Explanation": ".explanation",
}

__all__ = ["explain", "export_explainer", "load_model", "list_methods", "backend", "Explanation", "PyExplainError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
