"""``pyexplain.explain`` on PIL images and numpy arrays, its maps at the image's resolution, and
its checks of dtypes, class-name targets, batch sizes and grad-disabling contexts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import pyexplain
from pyexplain import PyExplainError
from pyexplain.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

LABELS = ("ant", "bee", "tabby", "tiger cat", "eel")
PRE = Preprocess(32, IMAGENET_MEAN, IMAGENET_STD, LABELS, resize=36)


def tiny_factory() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5)).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_factory()


@pytest.fixture(scope="module")
def picture():
    """A 60×45 RGB photo-like image (seeded noise on a ramp)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 60)[None, :, None] + rng.integers(0, 55, (45, 60, 3))
    return Image.fromarray(ramp.astype(np.uint8), "RGB")


def test_pil_and_numpy_inputs_give_the_tensor_paths_maps(model, picture):
    expected = pyexplain.explain(model, PRE(picture), "gradxinput", target=1)
    array = np.asarray(picture)
    for images in (picture, array, array / 255.0, array.astype(np.float32) / 255):
        got = pyexplain.explain(model, images, "gradxinput", target=1, preprocess=PRE)
        torch.testing.assert_close(got.attribution, expected.attribution)
    both = pyexplain.explain(model, [picture, array], "gradxinput", target=[1, 3], preprocess=PRE)
    torch.testing.assert_close(both.attribution[:1], expected.attribution)
    torch.testing.assert_close(both.attribution[1:], pyexplain.explain(model, PRE(picture), "gradxinput", target=3).attribution)


def test_a_loaded_model_carries_its_preprocessing(picture):
    model, preprocess = pyexplain.load_model(f"{__name__}:tiny_factory", input_size=32)
    got = pyexplain.explain(model, picture, "saliency", target=1)
    torch.testing.assert_close(got.attribution, pyexplain.explain(model, preprocess(picture), "saliency", target=1).attribution)
    with pytest.raises(PyExplainError, match="need the model's preprocessing"):
        pyexplain.explain(tiny_factory(), picture, "saliency")


def test_map_at_the_images_resolution_and_the_overlay(model, picture):
    # 60×45 → shorter side 36: 48×36, center crop 32 at (8, 2), i.e. (10, 2.5)–(50, 42.5) in the original
    assert PRE.crop_box(60, 45) == (10.0, 2.5, 50.0, 42.5)
    e = pyexplain.explain(model, picture, "gradxinput", preprocess=PRE)
    full = e.numpy(0)
    assert full.shape == (45, 60) and full.dtype == np.float32
    inside = np.zeros((45, 60), bool)
    inside[2:42, 10:50] = True
    assert np.all(full[~inside] == 0) and np.count_nonzero(full[inside]) > 0.9 * inside.sum()
    ones = PRE.to_image(torch.ones(32, 32), 60, 45)
    np.testing.assert_allclose(ones, inside.astype(np.float32), atol=1e-6)
    assert np.isclose(full[inside].sum(), e.map[0].sum().item() * (40 * 40) / (32 * 32), rtol=0.1)
    image = e.overlay(0)
    assert isinstance(image, Image.Image) and image.width > 2 * image.height  # the image, the map, a colour bar
    tensor_path = pyexplain.explain(model, PRE(picture), "gradxinput")
    assert tensor_path.numpy(0).shape == (32, 32)
    with pytest.raises(PyExplainError, match="overlay needs the input image"):
        tensor_path.overlay(0)


def test_repr_is_short(model, picture):
    text = repr(pyexplain.explain(model, [picture, picture], "saliency", preprocess=PRE))
    assert text.startswith("Explanation(method='saliency', rows=2, map=[2, 32, 32]") and len(text) < 150


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_other_float_dtypes_are_computed_in_the_models_dtype(model, picture, dtype):
    x = PRE(picture)
    expected = pyexplain.explain(model, x, "integrated_gradients", target=2, steps=4)
    got = pyexplain.explain(model, x.to(dtype), "integrated_gradients", target=2, steps=4)
    assert got.attribution.dtype == torch.float32
    tolerance = {"rtol": 1e-2, "atol": 1e-3} if dtype == torch.float16 else {}
    torch.testing.assert_close(got.attribution, pyexplain.explain(model, x.to(dtype).float(), "integrated_gradients",
                                                                   target=2, steps=4).attribution)
    torch.testing.assert_close(got.attribution, expected.attribution, **tolerance)


def test_class_names_as_targets(model, picture):
    x = PRE(picture)
    by_index = pyexplain.explain(model, x, "saliency", target=3, preprocess=PRE)
    for name in ("tiger cat", "Tiger_Cat", "tiger cat, Panthera tigris"):
        torch.testing.assert_close(pyexplain.explain(model, x, "saliency", target=name, preprocess=PRE).attribution,
                                   by_index.attribution)
    several = pyexplain.explain(model, torch.cat([x, x]), "saliency", target=["bee", 3], preprocess=PRE)
    assert several.targets.tolist() == [1, 3]
    assert pyexplain.explain(model, x, "saliency", target=[["ant", "eel"]], preprocess=PRE).targets.tolist() == [0, 4]
    with pytest.raises(PyExplainError, match="class names are unknown"):
        pyexplain.explain(model, x, "saliency", target="bee")
    with pytest.raises(PyExplainError, match="did you mean 'bee'"):
        pyexplain.explain(model, x, "saliency", target="beee", preprocess=PRE)


@pytest.mark.parametrize("batch_size", [0, -2, 1.5, True, "2"])
def test_bad_batch_sizes(model, picture, batch_size):
    with pytest.raises(PyExplainError, match="batch_size must be a positive integer"):
        pyexplain.explain(model, PRE(picture), "saliency", batch_size=batch_size)


@pytest.mark.parametrize("method,options", [("gradxinput", {}), ("lpr", {"iterations": 2}),
                                            ("integrated_gradients", {"steps": 4}), ("gradcam", {})])
@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
def test_methods_under_no_grad_and_inference_mode(model, picture, method, options, context):
    x = PRE(picture)
    expected = pyexplain.explain(model, x, method, target=1, **options).attribution
    manager = torch.no_grad() if context == "no_grad" else torch.inference_mode()
    with manager:
        made_here = x.clone()  # an inference tensor under inference_mode
        got = pyexplain.explain(model, made_here, method, target=1, **options).attribution
    torch.testing.assert_close(got, expected)
    assert expected.abs().sum() > 0


def test_a_model_made_under_inference_mode_is_refused(picture):
    with torch.inference_mode():
        model = tiny_factory()
    with pytest.raises(PyExplainError, match="created under torch.inference_mode"):
        pyexplain.explain(model, PRE(picture), "saliency")
