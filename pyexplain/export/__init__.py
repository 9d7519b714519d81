"""Deployable fixed-rule explainers: the explainer compiler and its ONNX / torch.export / TorchScript writers."""
from .compiler import EXPORTABLE_METHODS, CompiledExplainer, compile_explainer
from .formats import FORMATS, export_explainer
from .loading import load_explainer
from .graph import SUPPORTED

__all__ = ["compile_explainer", "export_explainer", "load_explainer", "CompiledExplainer", "EXPORTABLE_METHODS",
           "FORMATS", "SUPPORTED"]
