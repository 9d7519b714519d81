"""``pyexplain.explain``: targets, batching, validation, and that the model is left as it was."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import pyexplain
from pyexplain import PyExplainError


def _plain_gradient(model, x, targets):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (g,) = torch.autograd.grad(out.gather(1, torch.as_tensor(targets)[:, None]).sum(), x)
    return g


def test_top1_default_and_scores(resnet18, small_images):
    e = pyexplain.explain(resnet18, small_images, "gradxinput")
    logits = resnet18(small_images)
    assert torch.equal(e.targets, logits.argmax(1))
    torch.testing.assert_close(e.scores, logits.max(1).values)
    torch.testing.assert_close(e.attribution, _plain_gradient(resnet18, small_images, e.targets) * small_images)
    assert e.map.shape == (2, 64, 64) and torch.equal(e.image_index, torch.arange(2))


def test_one_target_per_image_and_several_per_image(resnet18, small_images):
    per_image = pyexplain.explain(resnet18, small_images, "saliency", target=[3, 9])
    assert per_image.targets.tolist() == [3, 9]
    several = pyexplain.explain(resnet18, small_images, "saliency", target=[[3, 4], [9]])
    assert several.targets.tolist() == [3, 4, 9] and several.image_index.tolist() == [0, 0, 1]
    torch.testing.assert_close(several.attribution[[0, 2]], per_image.attribution)
    single = pyexplain.explain(resnet18, small_images[:1], "saliency", target=4)
    torch.testing.assert_close(several.attribution[1:2], single.attribution)


def test_batch_size_chunks_give_the_same_result(resnet18, small_images):
    whole = pyexplain.explain(resnet18, small_images, "guided_backprop", target=[1, 2])
    chunked = pyexplain.explain(resnet18, small_images, "guided_backprop", target=[1, 2], batch_size=1)
    torch.testing.assert_close(whole.attribution, chunked.attribution)


def test_probability_score_differentiates_softmax(resnet18, small_images):
    e = pyexplain.explain(resnet18, small_images[:1], "saliency", target=5, score="probability", absolute=False)
    x = small_images[:1].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(resnet18(x).softmax(1)[0, 5], x)
    torch.testing.assert_close(e.attribution, g)


def test_integrated_gradients_completeness_improves_with_steps(resnet18, small_images):
    x = small_images[:1]
    with torch.no_grad():
        gap = (resnet18(x)[0, 3] - resnet18(torch.zeros_like(x))[0, 3]).item()
    errors = [abs(pyexplain.explain(resnet18, x, "integrated_gradients", target=3, steps=s,
                                    internal_batch_size=128).attribution.sum().item() - gap) for s in (8, 256)]
    assert errors[1] < errors[0]
    assert errors[1] < 0.01 * abs(gap)


@pytest.mark.parametrize("images,message", [
    (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
    (torch.zeros(1, 1, 8, 8), "channels"),
    (torch.zeros(8, 8), "shape"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "floating"),
    ([[1.0]], "torch.Tensor"),
    (torch.zeros(0, 3, 8, 8), "empty"),
])
def test_bad_images_are_one_line_errors(resnet18, images, message):
    with pytest.raises(PyExplainError, match=message) as info:
        pyexplain.explain(resnet18, images, "saliency")
    assert "\n" not in str(info.value)


def test_bad_targets_options_and_methods(resnet18, small_images):
    with pytest.raises(PyExplainError, match="outside the model's classes"):
        pyexplain.explain(resnet18, small_images, "saliency", target=1000)
    with pytest.raises(PyExplainError, match="2 images"):
        pyexplain.explain(resnet18, small_images, "saliency", target=[1, 2, 3])
    with pytest.raises(PyExplainError, match="no option 'stpes'"):
        pyexplain.explain(resnet18, small_images, "integrated_gradients", stpes=3)
    with pytest.raises(PyExplainError, match="unknown method"):
        pyexplain.explain(resnet18, small_images, "nope")


def test_training_flags_restored_and_parameters_untouched(small_images):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 62 * 62, 5))
    model.train()
    stats = model[1].running_mean.clone()
    pyexplain.explain(model, small_images, "gradcam")
    assert all(m.training for m in model.modules())
    assert torch.equal(model[1].running_mean, stats)
    assert all(p.grad is None for p in model.parameters())


def test_list_methods_has_every_foundation_method():
    names = {m.name for m in pyexplain.list_methods()}
    assert {"saliency", "gradxinput", "integrated_gradients", "smoothgrad", "smoothgrad_sq", "guided_backprop",
            "deconvnet", "gradcam", "guided_gradcam"} <= names
    assert all(m.description and m.paper and m.cost for m in pyexplain.list_methods())


FOUNDATION_METHODS = ["saliency", "gradxinput", "integrated_gradients", "smoothgrad", "smoothgrad_sq",
                      "guided_backprop", "deconvnet", "gradcam", "guided_gradcam"]
FAST = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 2}, "smoothgrad_sq": {"samples": 2}}


@pytest.mark.parametrize("method", FOUNDATION_METHODS)
def test_frozen_parameters_and_no_grad_context(method, small_images):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 31 * 31, 5)).eval()
    expected = pyexplain.explain(model, small_images, method, target=2, **FAST.get(method, {})).attribution
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        frozen = pyexplain.explain(model, small_images, method, target=2, **FAST.get(method, {})).attribution
    torch.testing.assert_close(frozen, expected)
    assert frozen.abs().sum() > 0
