"""``pyexplain models`` and ``pyexplain methods``: answered from the static catalogues, without torch."""
from __future__ import annotations

from ..model_catalog import DEFAULT_MODEL, SMALL_MODELS, TORCHVISION_MODELS, weights_status
from ..registry import describe_methods
from . import app


@app.command("models")
def models_command() -> None:
    """List the models and how their weights are had here (embedded, shipped, cached, or downloaded on first use)."""
    for name in (DEFAULT_MODEL,) + TORCHVISION_MODELS:
        print(f"{name:20s} {weights_status(name)}")
    for name in SMALL_MODELS:
        print(f"{name:20s} trained by pyexplain, weights shipped with the package (pyexplain train {name})")
    print("timm:NAME            timm's image classifiers (pip install 'pyexplain[timm]'); pretrained weights from "
          "the Hugging Face Hub cache, else downloaded on first use")
    print("package.module:factory  your own model (--weights FILE for its state dict)")


@app.command("methods")
def methods_command() -> None:
    """List the methods: description, paper, cost, options, and whether the map is signed (for and
    against the target) or non-negative (relevance only)."""
    for entry in describe_methods():
        options = ", ".join(f"{k}={v!r}" for k, v in entry.defaults.items()) or "-"
        sign = f"{entry.sign} ({entry.sign_note})" if entry.sign_note else entry.sign
        print(f"{entry.name}\n    {entry.description}\n    paper: {entry.paper}\n    cost: {entry.cost}\n    options: {options}"
              f"\n    map: {sign}")
