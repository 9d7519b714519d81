"""The small models' data and training: determinism, caching, load_model names, evidence regions,
and the ground-truth check (a map equal to the true region wins the pointing game and insertion)."""
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from pyexplain import load_model
from pyexplain.data import cache
from pyexplain.data.digits import DigitsCNN, digits_splits, load_digits_cnn, train_digits_cnn
from pyexplain.data.synthetic import CLASSES, make_synthetic, shape_mask
from pyexplain.data.synthetic_models import load_synthetic_model
from pyexplain.data.training import Split, accuracy
from pyexplain.errors import PyExplainError
from pyexplain.metrics import insertion, pointing_game, relevance_mass


def test_digits_split_is_seeded_and_in_unit_range():
    train, test = digits_splits(0)
    assert train.x.shape == (1438, 1, 28, 28) and test.x.shape == (359, 1, 28, 28)
    assert train.x.min() >= 0 and train.x.max() <= 1
    again = digits_splits(0)[1]
    assert torch.equal(again.x, test.x) and torch.equal(again.y, test.y)
    assert not torch.equal(digits_splits(1)[1].y, test.y)
    assert torch.cat([train.y, test.y]).bincount().tolist() == np.bincount(load_digits().target).tolist()


def test_training_is_deterministic_from_the_seed():
    train = digits_splits(0)[0]
    small = Split(train.x[:128], train.y[:128])
    a = train_digits_cnn(small, seed=3, epochs=1).state_dict()
    b = train_digits_cnn(small, seed=3, epochs=1).state_dict()
    c = train_digits_cnn(small, seed=4, epochs=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_cache_dir_and_atomic_cached_state(tmp_path, monkeypatch):
    monkeypatch.delenv("PYEXPLAIN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "pyexplain"
    monkeypatch.setenv("PYEXPLAIN_CACHE", str(tmp_path / "own"))
    assert cache.cache_dir() == tmp_path / "own"
    calls = []

    def train():
        calls.append(1)
        return {"w": torch.full((2,), float(len(calls)))}

    assert cache.cached_state("m.pt", train)["w"].tolist() == [1.0, 1.0]
    assert cache.cached_state("m.pt", train)["w"].tolist() == [1.0, 1.0] and len(calls) == 1  # from the cache
    (tmp_path / "own" / "m.pt").write_bytes(b"not a checkpoint")
    assert cache.cached_state("m.pt", train)["w"].tolist() == [2.0, 2.0]  # corrupt entry rebuilt
    assert cache.cached_state("m.pt", train, retrain=True)["w"].tolist() == [3.0, 3.0]
    assert sorted(p.name for p in (tmp_path / "own").iterdir()) == ["m.pt"]  # no temporary files left


def test_small_models_by_name(tmp_path):
    model, preprocess = load_model("digits_cnn", random_weights=True)
    x = preprocess(Image.new("RGB", (50, 40), "white"))
    assert x.shape == (1, 1, 28, 28) and torch.allclose(x, torch.ones_like(x))
    assert model(x).shape == (1, 10) and preprocess.label(3) == "3"
    for name in ("synthetic_vgg", "synthetic_resnet"):
        model, preprocess = load_model(name, random_weights=True)
        assert model(preprocess(Image.new("RGB", (32, 32)))).shape == (1, len(CLASSES))
    path = tmp_path / "w.pt"
    torch.save(DigitsCNN().state_dict(), path)
    assert isinstance(load_model("digits_cnn", weights=path)[0], DigitsCNN)
    with pytest.raises(PyExplainError, match="do not match"):
        load_model("synthetic_vgg", weights=path)
    with pytest.raises(PyExplainError, match="digits_cnn"):
        load_model("no_such_model")


def test_synthetic_images_are_seeded_and_regions_are_the_shapes():
    s = make_synthetic(24, seed=5)
    again = make_synthetic(24, seed=5)
    assert torch.equal(s.x, again.x) and torch.equal(s.regions, again.regions)
    assert not torch.equal(make_synthetic(24, seed=6).x, s.x)
    assert s.y.bincount(minlength=len(CLASSES)).tolist() == [4] * len(CLASSES)
    for i in range(24):
        pixels = s.x[i][:, s.regions[i, 0]]
        assert pixels.shape[1] >= 20
        assert torch.allclose(pixels, pixels[:, :1].expand_as(pixels))  # one flat color inside the region
    assert shape_mask(0, 15.5, 15.5, 6.0).sum() == pytest.approx(np.pi * 36, rel=0.1)  # a disk of radius 6


def test_two_class_images_hold_two_separate_classes():
    s = make_synthetic(30, seed=2, two_class=True)
    assert s.labels.shape == (30, 2) and (s.labels[:, 0] != s.labels[:, 1]).all()
    assert s.regions.shape == (30, 2, 32, 32)
    assert not (s.regions[:, 0] & s.regions[:, 1]).any()


@pytest.mark.slow
def test_region_map_wins_pointing_game_and_beats_a_random_map_on_insertion():
    """On the trained synthetic ResNet (shipped weights), the ground-truth region as a
    map scores a perfect pointing game and full relevance mass, and inserts better than random."""
    model, test = load_synthetic_model("synthetic_resnet")
    assert accuracy(model, test) > 0.95
    x, y, region = test.x[:24], test.y[:24], test.regions[:24, 0]
    truth = region.float()
    assert pointing_game(truth, region).all()
    assert torch.allclose(relevance_mass(truth, region), torch.ones(24))
    noise = torch.rand(24, 32, 32, generator=torch.Generator().manual_seed(0))
    assert pointing_game(noise, region).float().mean() < 0.5
    assert relevance_mass(noise, region).mean() < 0.2
    step = 8  # coarser than the protocol's 5 px per step at 32×32, to keep the test fast
    assert insertion(model, x, truth, y, pixels_per_step=step).auc.mean() > insertion(model, x, noise, y, pixels_per_step=step).auc.mean() + 0.1


def test_shipped_weights_are_checked_then_used_without_training(tmp_path, monkeypatch):
    monkeypatch.setenv("PYEXPLAIN_CACHE", str(tmp_path / "cache"))
    assert sorted(p.name for p in cache.SHIPPED_DIR.iterdir()) == sorted(cache.SHIPPED_SHA256)
    digits, digits_test = load_digits_cnn()
    assert accuracy(digits, digits_test) > 0.95
    for name in ("synthetic_vgg", "synthetic_resnet"):
        model, test = load_synthetic_model(name)
        shipped = cache.shipped_state(f"{name}-v1-seed0.pt")
        assert model.state_dict().keys() == shipped.keys()
        assert all(torch.equal(model.state_dict()[k], v) for k, v in shipped.items())
        assert accuracy(model, Split(test.x, test.y)) > 0.95
    assert not (tmp_path / "cache").exists()  # nothing trained, nothing cached

    damaged = tmp_path / "weights"
    damaged.mkdir()
    for name in cache.SHIPPED_SHA256:
        data = bytearray((cache.SHIPPED_DIR / name).read_bytes())
        data[len(data) // 2] ^= 1
        (damaged / name).write_bytes(bytes(data))
    monkeypatch.setattr(cache, "SHIPPED_DIR", damaged)
    with pytest.raises(PyExplainError, match=r"shipped with pyexplain is damaged .*; reinstall pyexplain$"):
        load_synthetic_model("synthetic_resnet")
    (damaged / "digits_cnn-v1-seed0.pt").unlink()
    with pytest.raises(PyExplainError, match=r"cannot be read .*; reinstall pyexplain$"):
        load_digits_cnn()
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_the_training_recipe_reproduces_a_model_as_accurate_as_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PYEXPLAIN_CACHE", str(tmp_path / "cache"))
    model, test = load_digits_cnn(retrain=True)
    assert accuracy(model, test) > 0.95
    assert not (tmp_path / "cache").exists()  # seed 0 reads the shipped file: a retrained copy is not cached
    other, other_test = load_digits_cnn(seed=1)
    assert accuracy(other, other_test) > 0.95
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["digits_cnn-v1-seed1.pt"]
