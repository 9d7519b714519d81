"""The static catalogues the command line reads without torch agree with the code they describe:
every registered method's description, paper, cost and option defaults; the model names, their
checkpoint files and the torch hub folder; and the constants the commands declare as defaults."""
from __future__ import annotations

import os

import pyexplain
from pyexplain import model_catalog
from pyexplain.method_catalog import METHODS, MethodEntry
from pyexplain.registry import check_method_names, describe_methods, list_methods


def catalogue_entry(info) -> str:
    """The catalogue text for a registered method (printed when the catalogue lags the code)."""
    return (f"MethodEntry({info.name!r}, iterative={info.iterative!r}, description={info.description!r}, "
            f"paper={info.paper!r}, cost={info.cost!r}, defaults={info.defaults!r}, sign={info.map_sign()!r})")


def test_method_catalogue_matches_the_registered_methods():
    registered = {info.name: info for info in list_methods()}
    assert sorted(METHODS) == sorted(registered), "add or remove entries in pyexplain/method_catalog.py"
    for name, info in registered.items():
        entry = METHODS[name]
        expected = MethodEntry(name, info.iterative, info.description, info.paper, info.cost, info.defaults,
                               info.map_sign(), entry.sign_note)
        assert entry == expected, catalogue_entry(info)
        assert bool(entry.sign_note) == callable(info.sign), f"{name}: say which option changes the map's sign"
        assert list(METHODS[name].defaults) == list(info.defaults)  # same order as the signature
    assert [e.name for e in describe_methods()] == sorted(registered)


def test_fixed_cost_methods_are_the_cheap_fixed_rules():
    cheap = {e.name for e in describe_methods() if e.fixed_cost}
    assert {"saliency", "gradxinput", "guided_backprop", "deconvnet", "gradcam", "guided_gradcam"} <= cheap
    assert not any(METHODS[name].iterative for name in cheap)
    assert not cheap & {"integrated_gradients", "smoothgrad", "smoothgrad_sq", "blur_ig", "lpr", "dmbp"}


def test_unknown_method_names_get_suggestions():
    check_method_names(["saliency", "lpr"])
    try:
        check_method_names(["gradcm"])
    except pyexplain.PyExplainError as exc:
        assert "did you mean gradcam" in str(exc)
    else:
        raise AssertionError("gradcm accepted")


def test_model_catalogue_matches_torchvision_and_the_hub(monkeypatch, tmp_path):
    import torch

    from pyexplain.models.torchvision_models import default_weights, torchvision_names

    assert model_catalog.TORCHVISION_MODELS == torchvision_names()
    for name, (url, size) in model_catalog.TORCHVISION_WEIGHTS.items():
        weights = default_weights(name)
        assert (weights.url, weights.meta.get("_file_size")) == (url, size), name
    for env in ({}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {"TORCH_HOME": str(tmp_path / "th")}):
        monkeypatch.delenv("TORCH_HOME", raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert str(model_catalog.hub_checkpoint_dir()) == os.path.join(torch.hub.get_dir(), "checkpoints")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    url = model_catalog.TORCHVISION_WEIGHTS["resnet18"][0]
    monkeypatch.setenv(model_catalog.OFFLINE_ENV, "1")
    assert model_catalog.weights_status("resnet18") == f"not cached, downloads are off ({url})"
    monkeypatch.setenv(model_catalog.OFFLINE_ENV, "0")
    assert model_catalog.weights_status("resnet18").startswith(f"will download on first use ({url}, ")
    path = model_catalog.hub_checkpoint_dir() / os.path.basename(url)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert model_catalog.weights_status("resnet18") == f"cached ({path})"


def test_command_defaults_match_the_library():
    from pyexplain.cli import dataset_cmd, evaluate_cmd
    from pyexplain.dataset.config import PRECISIONS
    from pyexplain.evaluation import METRICS
    from pyexplain.metrics.roar import DEFAULT_FRACTIONS

    assert evaluate_cmd.METRIC_NAMES == tuple(METRICS)
    assert tuple(float(f) for f in evaluate_cmd.ROAR_FRACTIONS.split(",")) == DEFAULT_FRACTIONS
    assert dataset_cmd.PRECISIONS == PRECISIONS
