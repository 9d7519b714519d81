"""pyexplain: attribution maps for image classifiers — learned backward passes (LPR, DMBP) and
the classic baselines, with metrics, fused kernels, export and a CLI."""
from .api import explain
from .export import export_explainer
from .errors import PyExplainError
from .explanation import Explanation
from .models import load_model
from .ops import backend
from .registry import list_methods

__all__ = ["explain", "export_explainer", "load_model", "list_methods", "backend", "Explanation", "PyExplainError"]
__version__ = "0.1.0"
