"""``timm:NAME`` models: random weights explained like any model, timm's data config and class
names, and its pretrained weights resolved by timm (the Hub download patched, never reached)."""
from __future__ import annotations

import pytest
import torch

import pyexplain
from pyexplain import PyExplainError
from pyexplain.models.hub import OFFLINE_ENV

from cli_support import run_cli

timm = pytest.importorskip("timm")


def _input_gradient(model, x, target):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x)[:, target].sum(), x)
    return g


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("vit_tiny_patch16_224", 224)])
def test_random_weight_timm_models_explained_with_gradxinput(name, size):
    torch.manual_seed(0)
    model, preprocess = pyexplain.load_model(f"timm:{name}", random_weights=True)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    e = pyexplain.explain(model, x, "gradxinput", target=281)
    torch.testing.assert_close(e.attribution, _input_gradient(model, x, 281) * x)
    assert e.attribution.abs().sum() > 0
    config = timm.data.resolve_model_data_config(model)
    assert preprocess.size == config["input_size"][-1] and preprocess.mean == tuple(config["mean"])
    assert preprocess.resize == int(config["input_size"][-1] / config["crop_pct"])
    assert preprocess.labels[281] == "tabby, tabby cat" and preprocess.class_index("tabby cat") == 281


def test_timm_prefix_is_not_a_factory_and_unknown_names_are_one_line():
    with pytest.raises(PyExplainError, match=r"timm has no model 'resnet181'.*did you mean timm:resnet18"):
        pyexplain.load_model("timm:resnet181", random_weights=True)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "hf"


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_timm_offline_names_the_hub_and_the_cache(hf_cache, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(OFFLINE_ENV, "1")
    with pytest.raises(PyExplainError, match="downloads are off") as info:
        pyexplain.load_model("timm:resnet18")
    message = str(info.value)
    assert "https://huggingface.co/timm/resnet18.a1_in1k" in message and str(hf_cache / "models--timm--resnet18.a1_in1k") in message
    assert "--weights FILE" in message and "\n" not in message
    monkeypatch.setenv(OFFLINE_ENV, "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PyExplainError, match="downloads are off"):
        pyexplain.load_model("timm:resnet18")
    code, _, err = run_cli(["explain", "builtin:chelsea", "--model", "timm:resnet18", "--out", tmp_path / "o"], capsys)
    assert code == 2 and err.startswith("error: no pretrained weights for 'timm:resnet18'") and err.count("\n") == 1
    assert _files(hf_cache) == []


def test_timm_download_failure_and_success_through_the_hub_function(hf_cache, monkeypatch, tmp_path):
    import timm.models._hub as timm_hub
    from safetensors.torch import save_file

    monkeypatch.setenv(OFFLINE_ENV, "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    asked = []

    def unreachable(repo_id, filename, **kwargs):  # as the Hub client: a partial blob, then the failure
        asked.append((repo_id, filename))
        blobs = hf_cache / f"models--{repo_id.replace('/', '--')}" / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        (blobs / "0123abcd.incomplete").write_bytes(b"half")
        raise ConnectionError("connection refused")

    monkeypatch.setattr(timm_hub, "hf_hub_download", unreachable)
    with pytest.raises(PyExplainError, match=r"the download failed \(ConnectionError: connection refused\)"):
        pyexplain.load_model("timm:resnet18")
    assert asked and asked[0][0] == "timm/resnet18.a1_in1k" and _files(hf_cache) == []

    torch.manual_seed(1)
    reference = timm.create_model("resnet18", pretrained=False).eval()
    served = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), str(served))
    monkeypatch.setattr(timm_hub, "hf_hub_download", lambda repo_id, filename, **kwargs: str(served))
    model, _ = pyexplain.load_model("timm:resnet18")
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x), reference(x))


def test_cli_explains_a_timm_model_with_a_class_name(tmp_path, capsys):
    code, out, err = run_cli(["explain", "builtin:chelsea", "--model", "timm:resnet18", "--random-weights",
                              "--target", "tabby cat", "--input-size", "64", "--device", "cpu", "--out", tmp_path], capsys)
    assert code == 0, err
    assert "tabby, tabby cat (target 281" in out and (tmp_path / "chelsea_gradxinput.npy").is_file()
