"""Grad×Input and Grad-CAM on ten torchvision classifier families (random weights, small inputs where the
architecture allows): maps of the input's shape, finite; against Captum's InputXGradient and
LayerGradCam where Captum's layout applies."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models import get_model

import pyexplain
from pyexplain.core.layers import default_cam_layer
from pyexplain.core.targets import Targets
from pyexplain.methods.cam import gradcam_map

from model_support import calibrate_batchnorm

#: name, input size, extra builder options (ViT's position embedding fixes its input size)
FAMILIES = [
    ("vgg11", 32, {}), ("resnet18", 32, {}), ("densenet121", 32, {}), ("mobilenet_v3_small", 32, {}),
    ("efficientnet_b0", 32, {}), ("convnext_tiny", 32, {}), ("regnet_y_400mf", 32, {}),
    ("vit_b_16", 32, {"image_size": 32}), ("swin_t", 32, {}), ("inception_v3", 75, {"aux_logits": False}),
]


def _build(name: str, size: int, options: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    model = get_model(name, weights=None, **options)
    if name == "vit_b_16":
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # zero-initialized by torchvision
    return calibrate_batchnorm(model, torch.randn(16, 3, size, size))


@pytest.mark.slow
@pytest.mark.parametrize("name,size,options", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_gradxinput_and_gradcam_on_every_family(name, size, options):
    model = _build(name, size, options)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    for method in ("gradxinput", "gradcam"):
        e = pyexplain.explain(model, x, method)
        assert e.attribution.shape == x.shape, method
        assert torch.isfinite(e.attribution).all(), method
        assert e.attribution.abs().amax() > 0, method
    assert not default_cam_layer(model, x).startswith(("conv_proj", "features.0.0", "patch_embed"))


@pytest.mark.slow
@pytest.mark.parametrize("name,layer", [("resnet18", "layer4"), ("swin_t", "permute"), ("regnet_y_400mf", "trunk_output")])
def test_against_captum(name, layer):
    """At 64×64 the last stage of each is 2×2 (at 32×32 it is 1×1, and the default moves one stage up)."""
    from captum.attr import InputXGradient, LayerGradCam

    size = 64
    model = _build(name, size, {}).double()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    target = model(x).argmax(1)
    assert default_cam_layer(model, x) == layer
    ours = pyexplain.explain(model, x, "gradxinput", target=target.tolist()).attribution
    theirs = InputXGradient(model).attribute(x.clone(), target=target).detach()
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12 * float(theirs.abs().max()))
    cam = gradcam_map(model, x, Targets(target), None)
    theirs = LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=target, relu_attributions=True)[:, 0].detach()
    torch.testing.assert_close(cam, theirs, rtol=1e-9, atol=1e-12 * float(theirs.abs().max()))


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [(name, 224 if name == "vit_b_16" else max(size, 64)) for name, size, _ in FAMILIES],
                         ids=[f[0] for f in FAMILIES])
def test_cli_model_name_with_random_weights(name, size, tmp_path, capsys):
    """``pyexplain explain IMAGE --model NAME --random-weights`` for each family, Grad×Input and Grad-CAM."""
    from PIL import Image

    from tests.cli_support import run_cli

    image = tmp_path / "photo.png"
    Image.new("RGB", (size + 8, size), (120, 80, 40)).save(image)
    for method in ("gradxinput", "gradcam"):
        code, _, err = run_cli(["explain", image, "--model", name, "--random-weights", "--input-size", size,
                                "-M", method, "--out", tmp_path / "out", "--json"], capsys)
        assert code == 0, err
        written = np.load(tmp_path / "out" / f"photo_{method}.npy")
        assert written.shape == (size, size) and np.isfinite(written).all()
