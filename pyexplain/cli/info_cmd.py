"""``pyexplain models`` and ``pyexplain methods``."""
from __future__ import annotations

from ..models import DEFAULT_MODEL, SMALL_MODELS, weights_status
from ..registry import list_methods
from . import app


@app.command("models")
def models_command() -> None:
    """List the known models and how their ImageNet weights are had here (embedded, cached, or downloaded
    on first use)."""
    from ..models.torchvision_models import torchvision_names

    for name in (DEFAULT_MODEL, *torchvision_names()):
        print(f"{name:20s} {weights_status(name)}")
    for name in SMALL_MODELS:
        print(f"{name:20s} trained by pyexplain on first use, cached (pyexplain train {name})")
    print("timm:NAME            timm's image classifiers (pip install 'pyexplain[timm]'); pretrained weights from "
          "the Hugging Face Hub cache, else downloaded on first use")
    print("package.module:factory  your own model (--weights FILE for its state dict)")


@app.command("methods")
def methods_command() -> None:
    """List every method with a one-line description, its paper and its cost per image."""
    for info in list_methods():
        options = ", ".join(f"{k}={v!r}" for k, v in info.defaults.items()) or "-"
        print(f"{info.name}\n    {info.description}\n    paper: {info.paper}\n    cost: {info.cost}\n    options: {options}")
