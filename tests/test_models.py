"""Model loading: the embedded real model, torchvision names, the user's own, and their errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import pyexplain
from pyexplain import PyExplainError
from pyexplain.core.canonize import fold_batchnorm


def test_embedded_model_classifies_chelsea_as_egyptian_cat(lite0, chelsea):
    model, preprocess = lite0
    probabilities = model(chelsea).softmax(1)[0]
    assert probabilities.argmax().item() == 285
    assert preprocess.label(285) == "Egyptian cat"
    assert 0.7 < probabilities[285].item() < 0.9


def test_class_names_and_indices(lite0):
    preprocess = lite0[1]
    assert preprocess.class_index("egyptian cat") == 285
    assert preprocess.class_index("285") == 285
    with pytest.raises(PyExplainError, match="did you mean"):
        preprocess.class_index("egyptian kat")
    with pytest.raises(PyExplainError, match="outside"):
        preprocess.class_index("1000")


def test_torchvision_without_cached_weights_offline_names_the_ways_out(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PyExplainError, match=r"--weights FILE") as info:
        pyexplain.load_model("resnet18", offline=True)
    path = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(path) in str(info.value) and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in str(info.value)
    assert not path.parent.exists()


def test_torchvision_weights_from_hub_cache_and_file(tmp_path, monkeypatch):
    torch.manual_seed(0)
    from torchvision.models import resnet18

    reference = resnet18().eval()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.save(reference.state_dict(), cache / "resnet18-f37072fd.pth")
    model, preprocess = pyexplain.load_model("resnet18", offline=True)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x), reference(x))
    assert (preprocess.size, preprocess.resize) == (224, 256)
    explicit, _ = pyexplain.load_model("resnet18", weights=cache / "resnet18-f37072fd.pth")
    torch.testing.assert_close(explicit(x), reference(x))


def test_weights_file_errors(tmp_path):
    with pytest.raises(PyExplainError, match="does not exist"):
        pyexplain.load_model("efficientnet_lite0", weights=tmp_path / "missing.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(PyExplainError, match="cannot read weights"):
        pyexplain.load_model("efficientnet_lite0", weights=corrupt)
    mismatched = tmp_path / "other.pth"
    torch.save(nn.Linear(2, 2).state_dict(), mismatched)
    with pytest.raises(PyExplainError, match="do not match"):
        pyexplain.load_model("efficientnet_lite0", weights=mismatched)


def test_unknown_model():
    with pytest.raises(PyExplainError, match="unknown model 'nope'"):
        pyexplain.load_model("nope")


def tiny_factory() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def test_user_model_factory_with_weights_and_labels(tmp_path):
    reference = tiny_factory()
    with torch.no_grad():
        reference[4].bias.fill_(0.5)
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    model, preprocess = pyexplain.load_model(
        f"{__name__}:tiny_factory", weights=tmp_path / "w.pt", input_size=32, mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25), labels=["a", "b", "c"])
    assert torch.equal(model[4].bias, torch.full((3,), 0.5))
    assert (preprocess.size, preprocess.mean, preprocess.labels) == (32, (0.5, 0.5, 0.5), ("a", "b", "c"))
    with pytest.raises(PyExplainError, match="cannot import model factory"):
        pyexplain.load_model("no_such_package.mod:factory")


@pytest.mark.parametrize("name", ["vgg16", "mobilenet_v2", "densenet121", "inception_v3"])
def test_random_weight_architectures_build(name):
    model, preprocess = pyexplain.load_model(name, random_weights=True)
    assert not model.training
    assert preprocess.size == (299 if name == "inception_v3" else 224)


def test_fold_batchnorm_preserves_outputs(lite0, chelsea, resnet18, small_images):
    for model, x in ((lite0[0], chelsea), (resnet18, small_images)):
        folded = fold_batchnorm(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    assert any(isinstance(m, nn.BatchNorm2d) for m in resnet18.modules())


def test_class_names_accept_torchvision_names_and_variants():
    from pyexplain.preprocess import find_class, imagenet_labels

    labels = imagenet_labels()
    assert labels[281] == "tabby" and labels[282] == "tiger cat"
    for text in ("tabby", "Tabby", "tabby, tabby cat", "tabby cat", " TABBY_CAT "):
        assert find_class(labels, text) == 281, text
    assert find_class(labels, "tiger cat") == 282 and find_class(labels, "tiger-cat") == 282
    assert find_class(labels, "great white shark, white shark") == 2
    assert find_class(labels, "crane") == 517 and find_class(labels, "crane bird") == 134
    with pytest.raises(PyExplainError, match="ambiguous: indices 0, 2"):
        find_class(("crane", "bird", "crane"), "Crane")
    with pytest.raises(PyExplainError, match="did you mean 'tabby'"):
        find_class(labels, "tabbby")
