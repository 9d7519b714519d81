"""Grad-CAM on transformers: token sequences laid out on the patch grid (class token dropped), Swin's
channels-last maps permuted, a default layer that is never the patch embedding; checked against
Grad-CAM computed by hand from hooks, and against Captum's LayerGradCam where its layout applies."""
from __future__ import annotations

import pytest
import timm
import torch
from torchvision.models import get_model

import pyexplain
from pyexplain.core.layers import find_default_cam_layer, token_grid
from pyexplain.core.targets import Targets
from pyexplain.errors import PyExplainError
from pyexplain.methods.cam import gradcam_map

_BUILT: dict[str, torch.nn.Module] = {}


def _vit_tiny() -> torch.nn.Module:
    """timm ViT-tiny, random weights (class-token head), 224×224 inputs: 196 patches + 1 class token."""
    if "vit" not in _BUILT:
        torch.manual_seed(0)
        _BUILT["vit"] = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval().double()
    return _BUILT["vit"]


def _swin_t() -> torch.nn.Module:
    if "swin" not in _BUILT:
        torch.manual_seed(0)
        _BUILT["swin"] = get_model("swin_t", weights=None).eval().double()
    return _BUILT["swin"]


def _image(size: int) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


@pytest.mark.parametrize("tokens,image,grid", [(197, (224, 224), (1, 14, 14)), (198, (224, 224), (2, 14, 14)),
                                               (196, (224, 224), (0, 14, 14)), (1 + 14 * 20, (224, 320), (1, 14, 20)),
                                               (5, (32, 32), (1, 2, 2)), (49, (224, 224), (0, 7, 7))])
def test_token_grid(tokens, image, grid):
    assert token_grid(tokens, image) == grid


def _hand_gradcam(model, x, layer_name, target, to_map):
    """Grad-CAM from a forward hook: ``ReLU(Σ_k mean(∂y_t/∂A^k) A^k)`` with ``A = to_map(output)``."""
    captured = {}
    layer = model.get_submodule(layer_name)
    handle = layer.register_forward_hook(lambda m, a, out: captured.setdefault("out", out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits[0, target], captured["out"])
    acts, grads = to_map(captured["out"].detach()), to_map(grad)
    return (grads.mean((2, 3), keepdim=True) * acts).sum(1).clamp(min=0)


def test_vit_default_layer_is_the_last_attention_input_not_the_patch_embedding():
    model, x = _vit_tiny(), _image(224)
    layer = find_default_cam_layer(model, x)
    assert layer == "blocks.11.norm1" and not layer.startswith("patch_embed")
    target = int(model(x).argmax())
    ours = gradcam_map(model, x, Targets(torch.tensor([target])), None)
    hand = _hand_gradcam(model, x, "blocks.11.norm1", target,
                         lambda t: t[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2))
    assert ours.shape == (1, 14, 14) and ours.abs().amax() > 0
    torch.testing.assert_close(ours, hand, rtol=1e-10, atol=1e-14)
    e = pyexplain.explain(model, x, "gradcam")
    assert e.attribution.shape == x.shape and torch.isfinite(e.attribution).all()


def test_vit_last_block_output_has_no_patch_gradient_with_a_class_token_head():
    """Why the default is not the last block's output: after it, only the class token reaches the head."""
    model, x = _vit_tiny(), _image(224)
    cam = gradcam_map(model, x, Targets(None), "blocks.11")
    assert cam.shape == (1, 14, 14) and float(cam.abs().amax()) == 0.0


def test_average_pooled_vit_defaults_to_the_last_block_output():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, global_pool="avg",
                              class_token=False).eval().double()
    x = _image(64)
    assert find_default_cam_layer(model, x) == "blocks"
    target = int(model(x).argmax())
    hand = _hand_gradcam(model, x, "blocks", target, lambda t: t.reshape(1, 4, 4, -1).permute(0, 3, 1, 2))
    torch.testing.assert_close(gradcam_map(model, x, Targets(torch.tensor([target])), None), hand,
                               rtol=1e-10, atol=1e-14)


@pytest.mark.slow
def test_torchvision_vit_b_16_default_layer_and_map():
    torch.manual_seed(0)
    model = get_model("vit_b_16", weights=None).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initializes the head
    x = _image(224).float()
    assert find_default_cam_layer(model, x) == "encoder.layers.encoder_layer_11.ln_1"
    e = pyexplain.explain(model, x, "gradcam")
    assert e.attribution.shape == x.shape and torch.isfinite(e.attribution).all() and e.attribution.amax() > 0


def test_swin_channels_last_stage_is_permuted_and_default_is_the_nchw_permute():
    from captum.attr import LayerGradCam

    model, x = _swin_t(), _image(64)
    assert find_default_cam_layer(model, x) == "permute"
    target = int(model(x).argmax())
    ours = gradcam_map(model, x, Targets(torch.tensor([target])), "features")  # [1, 2, 2, 768]: NHWC
    hand = _hand_gradcam(model, x, "features", target, lambda t: t.permute(0, 3, 1, 2))
    torch.testing.assert_close(ours, hand, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(gradcam_map(model, x, Targets(torch.tensor([target])), "features", "nhwc"), ours)
    default = gradcam_map(model, x, Targets(torch.tensor([target])), None)
    theirs = LayerGradCam(model, model.permute).attribute(x, target=target, relu_attributions=True)[:, 0]
    torch.testing.assert_close(default, theirs, rtol=1e-9, atol=1e-12)


def test_layout_errors_are_one_line():
    model, x = _swin_t(), _image(64)
    with pytest.raises(PyExplainError, match="reshape must be one of"):
        pyexplain.explain(model, x, "gradcam", reshape="tokenz")
    with pytest.raises(PyExplainError, match="not a tokens feature map") as info:
        pyexplain.explain(model, x, "gradcam", layer="features", reshape="tokens")
    assert "\n" not in str(info.value)


def test_cnn_default_layers_are_unchanged():
    torch.manual_seed(0)
    for name, layer in (("resnet18", "layer4"), ("vgg11", "features"), ("convnext_tiny", "features")):
        assert find_default_cam_layer(get_model(name, weights=None).eval(), _image(64).float()) == layer


def test_default_layer_cache_follows_a_swapped_layer():
    from pyexplain.core.layers import default_cam_layer

    torch.manual_seed(0)
    model = get_model("resnet18", weights=None).eval()
    x = _image(64).float()
    assert default_cam_layer(model, x) == "layer4"
    model.layer4, model.fc = torch.nn.Identity(), torch.nn.Linear(256, 1000)
    assert default_cam_layer(model, x) == "layer3"


def test_export_refuses_a_layout_it_cannot_compute():
    from pyexplain.export.compiler import compile_explainer

    torch.manual_seed(0)
    model = get_model("resnet18", weights=None).eval()
    x = _image(64).float()
    with pytest.raises(PyExplainError, match="channels-last"):
        compile_explainer(model, "gradcam", x, reshape="nhwc")
    with pytest.raises(PyExplainError, match="not a tokens feature map"):
        compile_explainer(model, "gradcam", x, reshape="tokens")
