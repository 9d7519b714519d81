"""torchvision weights as torchvision gets them: cache, else its own hash-checked download (served
here from a loopback HTTP server), refused when offline; no failure leaves a file in the cache."""
from __future__ import annotations

import hashlib
import io

import pytest
import torch

import pyexplain
from pyexplain import PyExplainError
from pyexplain.models.hub import OFFLINE_ENV
from pyexplain import model_catalog
from pyexplain.model_catalog import weights_status
from pyexplain.models.torchvision_models import default_weights, torchvision_names

from cli_support import run_cli
from weights_server import serve

NAME = "squeezenet1_1"  # the smallest torchvision classifier (5 MB)


@pytest.fixture(scope="module")
def checkpoint():
    """A seeded random squeezenet1_1: ``(model, serialized state dict, its sha256)``."""
    from torchvision.models import squeezenet1_1

    torch.manual_seed(0)
    model = squeezenet1_1().eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    body = buffer.getvalue()
    return model, body, hashlib.sha256(body).hexdigest()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache, downloads allowed, no proxy between us and 127.0.0.1."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(OFFLINE_ENV, "0")
    for key in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return tmp_path / "torch" / "hub" / "checkpoints"


def _point_weights_at(monkeypatch, url: str) -> None:
    """torchvision's weights entry, and the catalogue ``pyexplain models`` reads, point at ``url``."""
    monkeypatch.setattr(default_weights(NAME).value, "url", url)
    monkeypatch.setitem(model_catalog.TORCHVISION_WEIGHTS, NAME, (url, model_catalog.TORCHVISION_WEIGHTS[NAME][1]))


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_every_torchvision_classifier_is_a_model_name():
    import torchvision

    assert set(torchvision_names()) == set(torchvision.models.list_models(module=torchvision.models))
    assert {"vgg16", "resnet50", "vit_b_16", "convnext_tiny", "efficientnet_b0", "swin_t"} <= set(torchvision_names())


def test_download_with_hash_check_then_cache_hit(hub, monkeypatch, checkpoint, capfd):
    reference, body, digest = checkpoint
    path = f"/{NAME}-{digest[:8]}.pth"
    with serve({path: (body, "full")}) as server:
        _point_weights_at(monkeypatch, server.url(path))
        assert weights_status(NAME).startswith("will download")
        model, preprocess = pyexplain.load_model(NAME)
        assert "100%" in capfd.readouterr().err  # torch.hub's progress bar
        assert _files(hub) == [path[1:]]
        assert weights_status(NAME).startswith("cached")
        x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(model(x), reference(x))
        again, _ = pyexplain.load_model(NAME, offline=True)  # the cache is used, offline or not
        torch.testing.assert_close(again(x), reference(x))
        assert server.requests == [path]
    weights = default_weights(NAME)
    assert preprocess.labels == tuple(weights.meta["categories"])
    assert (preprocess.size, preprocess.resize) == (weights.transforms().crop_size[0], weights.transforms().resize_size[0])
    assert getattr(model, "pyexplain_preprocess") is preprocess


@pytest.mark.parametrize("case", ["bad hash", "interrupted", "not found"])
def test_failed_download_leaves_no_file_and_names_the_ways_out(hub, monkeypatch, checkpoint, case):
    _, body, digest = checkpoint
    wrong = "0" * 8 if digest[:8] != "0" * 8 else "1" * 8
    path, files = {
        "bad hash": (f"/{NAME}-{wrong}.pth", {f"/{NAME}-{wrong}.pth": (body, "full")}),
        "interrupted": (f"/{NAME}-{digest[:8]}.pth", {f"/{NAME}-{digest[:8]}.pth": (body, "truncate")}),
        "not found": (f"/{NAME}-{digest[:8]}.pth", {}),
    }[case]
    with serve(files) as server:
        _point_weights_at(monkeypatch, server.url(path))
        with pytest.raises(PyExplainError) as info:
            pyexplain.load_model(NAME)
        assert server.requests == [path]
    message = str(info.value)
    assert "\n" not in message and server.url(path) in message and str(hub / path[1:]) in message
    assert "go online" in message and "--weights FILE" in message and "copy the file" in message
    # a transfer cut short is caught by the hash check (torch.hub reads until the connection closes)
    assert {"bad hash": "invalid hash", "interrupted": "invalid hash", "not found": "404"}[case] in message
    assert _files(hub) == []


def test_a_stalled_download_times_out_and_leaves_no_file(hub, monkeypatch, checkpoint):
    _, body, digest = checkpoint
    path = f"/{NAME}-{digest[:8]}.pth"
    monkeypatch.setenv("PYEXPLAIN_DOWNLOAD_TIMEOUT", "0.5")
    with serve({path: (body, "stall")}) as server:
        _point_weights_at(monkeypatch, server.url(path))
        with pytest.raises(PyExplainError, match=r"the download failed \((TimeoutError|timeout)"):
            pyexplain.load_model(NAME)
    assert _files(hub) == []


def test_offline_switch_forbids_the_download(hub, monkeypatch, checkpoint, tmp_path, capsys):
    _, body, digest = checkpoint
    path = f"/{NAME}-{digest[:8]}.pth"
    with serve({path: (body, "full")}) as server:
        _point_weights_at(monkeypatch, server.url(path))
        with pytest.raises(PyExplainError, match="downloads are off"):
            pyexplain.load_model(NAME, offline=True)
        monkeypatch.setenv(OFFLINE_ENV, "1")
        with pytest.raises(PyExplainError, match="downloads are off"):
            pyexplain.load_model(NAME)
        assert weights_status(NAME).startswith("not cached, downloads are off")
        monkeypatch.setenv(OFFLINE_ENV, "0")
        code, out, err = run_cli(["explain", "builtin:chelsea", "--model", NAME, "--offline", "--device", "cpu",
                                  "--out", tmp_path / "out"], capsys)
        assert server.requests == []
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: no pretrained weights")
    assert server.url(path) in err and not (tmp_path / "out").exists()
    assert _files(hub) == []


def test_weights_file_and_random_weights_need_no_download(hub, monkeypatch, checkpoint, tmp_path):
    reference, body, _ = checkpoint
    monkeypatch.setenv(OFFLINE_ENV, "1")
    (tmp_path / "w.pth").write_bytes(body)
    model, _ = pyexplain.load_model(NAME, weights=tmp_path / "w.pth")
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(x), reference(x))
    pyexplain.load_model(NAME, random_weights=True)
    assert _files(hub) == []


def test_models_command_lists_every_torchvision_classifier_and_how_its_weights_come(hub, capsys):
    code, out, _ = run_cli(["models"], capsys)
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert code == 0 and "embedded" in lines["efficientnet_lite0"]
    assert set(torchvision_names()) <= set(lines)
    assert "will download on first use (https://download.pytorch.org/models/vgg16-397923af.pth" in lines["vgg16"]
