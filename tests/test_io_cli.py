"""Image reading, atomic outputs, heatmap colors, and the CLI's behaviour on good and bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pyexplain import PyExplainError
from pyexplain.io import atomic_write, load_image

from cli_support import run_cli


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path, quality=95)
    return path


def _bad_files(tmp_path, photo):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photo.read_bytes()[: len(photo.read_bytes()) // 2])
    folder = tmp_path / "folder.png"
    folder.mkdir()
    return {"not an image": text, "empty": empty, "truncated": truncated, "directory": folder,
            "no such file": tmp_path / "missing.png"}


def test_bad_files_are_refused_with_one_line(tmp_path, photo):
    for expected, path in _bad_files(tmp_path, photo).items():
        with pytest.raises(PyExplainError, match=expected.split()[0]) as info:
            load_image(path)
        assert "\n" not in str(info.value), expected


def test_decompression_bomb_guard(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (200, 100)).save(path)
    monkeypatch.setenv("PYEXPLAIN_MAX_PIXELS", "10000")
    with pytest.raises(PyExplainError, match="pixel limit"):
        load_image(path)


def test_mode_conversions_keep_values(tmp_path):
    notes: list[str] = []
    sixteen = np.array([[0, 65535], [32896, 257 * 100]], dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    rgb = np.asarray(load_image(tmp_path / "deep.png", notes.append))
    assert rgb.shape == (2, 2, 3) and rgb[..., 0].tolist() == [[0, 255], [128, 100]]
    Image.new("LA", (2, 2), (100, 0)).save(tmp_path / "clear.png")  # fully transparent → white
    assert np.asarray(load_image(tmp_path / "clear.png", notes.append)).min() == 255
    Image.new("L", (3, 3), 77).save(tmp_path / "gray.png")
    assert np.asarray(load_image(tmp_path / "gray.png", notes.append)).tolist() == [[[77] * 3] * 3] * 3
    Image.new("CMYK", (2, 2), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    assert np.asarray(load_image(tmp_path / "cmyk.jpg", notes.append)).min() > 245
    assert len(notes) == 4


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def broken(tmp):
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "out.npy", broken)
    assert list(tmp_path.iterdir()) == []


def test_cli_explain_writes_png_and_npy(tmp_path, photo, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(["explain", str(photo), "builtin:chelsea", "--out", str(out), "--json",
                               "--method", "saliency", "--device", "cpu"], capsys)
    assert code == 0
    records = json.loads(stdout)
    assert records[1]["top5"][0]["index"] == 285 and records[1]["target"]["label"] == "Egyptian cat"
    assert len(records[0]["top5"]) == 5
    saved = np.load(out / "chelsea_saliency.npy")
    assert saved.shape == (224, 224) and saved.dtype == np.float32 and (saved >= 0).all()
    assert Image.open(out / "photo_saliency.png").width > 2 * Image.open(photo).width  # image, map, colour bar
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["photo_saliency.npy", "photo_saliency.png", "chelsea_saliency.npy", "chelsea_saliency.png"])


def test_cli_target_by_name_matches_api(tmp_path, capsys, lite0, chelsea):
    import pyexplain

    code, stdout, _ = run_cli(["explain", "builtin:chelsea", "--out", str(tmp_path), "--json",
                               "--target", "tiger cat"], capsys)
    assert code == 0 and json.loads(stdout)[0]["target"]["index"] == 282
    expected = pyexplain.explain(lite0[0], chelsea, "gradxinput", target=282).map[0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "chelsea_gradxinput.npy"), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("args,message", [
    (["--target", "1000"], "outside the model's classes"),
    (["--target", "not a class"], "unknown class name"),
    (["--model", "nope"], "unknown model"),
    (["--method", "nope"], "unknown method"),
    (["--weights", "/nonexistent.pth"], "does not exist"),
    (["-O", "steps"], "KEY=VALUE"),
    (["--bogus"], "No such option"),
])
def test_cli_bad_arguments(tmp_path, photo, capsys, args, message):
    out = tmp_path / "out"
    code, _, err = run_cli(["explain", str(photo), "--out", str(out), *args], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not out.exists()


def test_cli_bad_image_among_good_ones_writes_nothing(tmp_path, photo, capsys):
    for path in _bad_files(tmp_path, photo).values():
        out = tmp_path / "out"
        code, _, err = run_cli(["explain", str(photo), str(path), "--out", str(out)], capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert not out.exists()


def test_cli_subprocess_exit_code_and_single_line(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = subprocess.run([sys.executable, "-m", "pyexplain", "explain", str(tmp_path / "bad.png"),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_cli_models_and_methods(capsys):
    code, stdout, _ = run_cli(["models"], capsys)
    assert code == 0 and "efficientnet_lite0" in stdout and "resnet18" in stdout
    code, stdout, _ = run_cli(["methods"], capsys)
    assert code == 0 and "integrated_gradients" in stdout and "Sundararajan" in stdout
    lines = stdout.splitlines()
    assert lines[lines.index("gradcam") + 5] == "    map: nonnegative"
    assert lines[lines.index("gradxinput") + 5] == "    map: signed"


def test_every_builtin_image_opens():
    from pyexplain.io import BUILTIN_IMAGES, open_image

    pixels = {}
    for name in BUILTIN_IMAGES:
        image = open_image(f"builtin:{name}")
        assert image.mode == "RGB" and min(image.size) >= 64, name
        pixels[name] = image.tobytes()
    assert len(set(pixels.values())) == len(BUILTIN_IMAGES), "two builtin names give the same photo"
    assert open_image("builtin:cat").tobytes() == pixels["chelsea"]  # scikit-image's other name for chelsea
    with pytest.raises(PyExplainError, match="unknown builtin image"):
        open_image("builtin:nope")
