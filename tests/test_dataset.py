"""``pyexplain explain-dataset``: bad files, resuming after SIGKILL, torchrun sharding, OOM back-off."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyexplain.dataset import runner
from pyexplain.dataset.execution import BackoffBatcher, fitting_batch_size, measured_batch_size
from pyexplain.errors import PyExplainError
from pyexplain.visualize import panel_size

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))
from cli_support import exit_code  # noqa: E402
from dataset_models import tiny_cnn  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
TINY = ["--model", "dataset_models:tiny_cnn", "--input-size", "32", "--no-progress"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "OMP_NUM_THREADS": "1"}


def make_folder(root: Path, good: int = 4) -> dict[str, str]:
    """Good images (RGB PNG/JPEG, grayscale, in subfolders) and bad files; returns {key: kind}."""
    rng = np.random.default_rng(0)
    kinds = {}
    for i in range(good):
        key = f"{'sub/' if i % 2 else ''}{'deep/' if i % 3 == 2 else ''}img{i:02d}.{'jpg' if i % 2 else 'png'}"
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        size = (40 + i, 30 + 2 * i)
        if i == 0:
            Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8), "L").save(path)
        else:
            Image.fromarray(rng.integers(0, 256, size[::-1] + (3,), dtype=np.uint8), "RGB").save(path)
        kinds[key] = "good"
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image\n")
    good_png = (root / "img00.png").read_bytes()
    (root / "sub" / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (root / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    kinds.update({"empty.jpg": "empty file", "notes.txt": "not an image", "sub/truncated.png": "truncated",
                  "fake.png": "corrupt"})
    return kinds


def run_dataset_cli(args: list) -> int:
    return exit_code(["explain-dataset", *args])


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".pyexplain" not in p.parts}


def reference_gradxinput(path: Path) -> tuple[np.ndarray, int, float]:
    """∂logit_t/∂x ⊙ x summed over channels, top-1 t, by hand: PIL resize, ImageNet normalization, autograd."""
    image = Image.open(path).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
    array = (np.asarray(image, dtype=np.float64) / 255.0 - MEAN) / STD
    x = torch.tensor(array.transpose(2, 0, 1)[None], dtype=torch.float32, requires_grad=True)
    logits = tiny_cnn().eval()(x)
    t = int(logits.argmax())
    logits[0, t].backward()
    return (x.grad * x).sum(1)[0].detach().numpy(), t, logits[0, t].item()


def test_bad_files_are_reported_and_good_ones_complete(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    kinds = make_folder(src, good=5)
    assert run_dataset_cli([src, "--out", out, "--png", "--batch-size", "3", *TINY]) == 0
    records = {r["source"]: r for r in manifest(out)}
    assert sorted(records) == sorted(kinds)
    for key, kind in kinds.items():
        record = records[key]
        if kind != "good":
            assert record["status"] == "unreadable" and record["outputs"] == {}
            assert kind.split()[0] in record["reason"] or (kind == "corrupt" and "not an image" in record["reason"]), record
            assert not (out / "maps" / f"{key}.npy").exists()
            continue
        expected, target, score = reference_gradxinput(src / key)
        assert record["status"] == "ok" and record["reason"] is None
        assert record["outputs"] == {"map": f"maps/{key}.npy", "png": f"png/{key}.png"}
        assert record["target"] == target and record["score"] == pytest.approx(score, rel=1e-5)
        assert record["method"] == "gradxinput" and record["options"] == {}
        got = np.load(out / record["outputs"]["map"])
        assert got.dtype == np.float32 and got.shape == (32, 32)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
        with Image.open(out / record["outputs"]["png"]) as png, Image.open(src / key) as source:
            panel_width, panel_height = panel_size(*source.size)  # the image at its own resolution, twice
            assert png.width > 2 * panel_width and png.height > panel_height
    assert "converted" in records["img00.png"]["notes"][0]  # the grayscale image


def test_rerun_skips_finished_images_and_refuses_other_settings(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_folder(src, good=4)
    assert run_dataset_cli([src, "--out", out, "--batch-size", "2", *TINY]) == 0
    first = manifest(out)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "maps").rglob("*.npy")}
    summary = tmp_path / "summary.json"
    assert run_dataset_cli([src, "--out", out, "--batch-size", "2", "--summary", summary, *TINY]) == 0
    assert json.loads(summary.read_text())["explained"] == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "maps").rglob("*.npy")} == stamps
    assert manifest(out) == first

    changed = src / "sub" / "img01.jpg"  # new bytes: only this image is explained again
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(changed)
    assert run_dataset_cli([src, "--out", out, "--batch-size", "2", "--summary", summary, *TINY]) == 0
    assert json.loads(summary.read_text())["explained"] == 1
    new = {r["source"]: r for r in manifest(out)}
    assert new["sub/img01.jpg"]["sha256"] != {r["source"]: r for r in first}["sub/img01.jpg"]["sha256"]
    np.testing.assert_allclose(np.load(out / "maps/sub/img01.jpg.npy"), reference_gradxinput(changed)[0], rtol=1e-4, atol=1e-6)

    capsys.readouterr()
    for other in (["--method", "saliency"], ["-O", "absolute=False", "--method", "saliency"], ["--precision", "bfloat16"],
                  ["--target", "3"]):
        assert run_dataset_cli([src, "--out", out, *TINY, *other]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and "--overwrite" in err and err.count("\n") == 1
    assert manifest(out) == [r for r in manifest(out) if r["method"] == "gradxinput"]
    assert run_dataset_cli([src, "--out", out, "--method", "saliency", "--overwrite", *TINY]) == 0
    assert {r["method"] for r in manifest(out)} == {"saliency"}
    assert len(list((out / ".pyexplain").glob("journal-*"))) == 1

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert run_dataset_cli([src, "--out", foreign, "--overwrite", *TINY]) == 2
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]


def test_torn_journal_stray_temporaries_and_missing_output_are_repaired(tmp_path, one_thread):
    src, out = tmp_path / "src", tmp_path / "out"
    make_folder(src, good=4)
    assert run_dataset_cli([src, "--out", out, "--batch-size", "2", *TINY]) == 0
    complete = outputs(out)
    journal = out / ".pyexplain" / "journal-0.jsonl"
    with open(journal, "ab") as handle:
        handle.write(b'{"source": "img02.png", "status": "ok", "outp')  # a write cut short by a kill
    (out / "maps" / ".img00.png.npy.x1y2.tmp").write_bytes(b"\x93NUMPY half")  # atomic_write's temporary
    (out / "maps" / "sub" / "img03.jpg.npy").unlink()
    summary = tmp_path / "summary.json"
    assert run_dataset_cli([src, "--out", out, "--batch-size", "2", "--summary", summary, *TINY]) == 0
    assert json.loads(summary.read_text())["explained"] == 1
    assert outputs(out) == complete
    lines = journal.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])


def _journaled(out: Path) -> list[str]:
    """Sources with a complete journal line (their outputs are finished)."""
    journal = out / ".pyexplain" / "journal-0.jsonl"
    lines = journal.read_bytes().split(b"\n")[:-1] if journal.exists() else []
    return [json.loads(line)["source"] for line in lines if json.loads(line)["status"] == "ok"]


@pytest.mark.slow
def test_sigkill_midway_then_rerun_equals_uninterrupted_run(tmp_path, one_thread):
    src = tmp_path / "src"
    kinds = make_folder(src, good=14)
    good = [k for k, v in kinds.items() if v == "good"]
    args = ["--model", "dataset_models:slow_tiny_cnn", "--input-size", "32", "--batch-size", "2", "--png", "--no-progress"]
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "pyexplain", "explain-dataset", str(src), "--out", str(killed), *args],
                               env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not _journaled(killed):  # the first finished image
            assert time.monotonic() < deadline and process.poll() is None, "no image finished in time"
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    finished = _journaled(killed)
    maps = list((killed / "maps").rglob("*.npy"))
    assert 0 < len(finished) < len(good) and len(maps) < len(good), "the kill must land mid-way"
    for path in maps + list((killed / "png").rglob("*.png")):  # whatever exists is complete
        if path.suffix == ".npy":
            assert np.load(path).shape == (32, 32)
        else:
            with Image.open(path) as image:
                image.load()
    assert not (killed / "manifest.jsonl").exists()
    stamps = {key: (killed / "maps" / f"{key}.npy").stat().st_mtime_ns for key in finished}

    summary = tmp_path / "summary.json"
    assert run_dataset_cli([src, "--out", killed, "--summary", summary, *args]) == 0
    assert json.loads(summary.read_text())["already_complete"] == len(finished)
    assert {key: (killed / "maps" / f"{key}.npy").stat().st_mtime_ns for key in finished} == stamps  # kept, not redone
    assert not list(killed.rglob("*.tmp"))
    reference = tmp_path / "reference"
    assert run_dataset_cli([src, "--out", reference, *args]) == 0
    assert outputs(killed) == outputs(reference)
    assert len(manifest(reference)) == len(kinds)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tmp_path, one_thread):
    src = tmp_path / "src"
    kinds = make_folder(src, good=9)
    args = [*TINY, "--batch-size", "2", "--png"]
    two = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "pyexplain", "explain-dataset", str(src), "--out", str(two), *args]
    done = subprocess.run(command, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 processes" in done.stderr
    assert sorted(p.name for p in (two / ".pyexplain").glob("journal-*")) == ["journal-0.jsonl", "journal-1.jsonl"]
    for journal in (two / ".pyexplain").glob("journal-*"):
        assert journal.read_text().strip(), "each rank did part of the work"
    one = tmp_path / "one"
    assert run_dataset_cli([src, "--out", one, *args]) == 0
    assert len(manifest(one)) == len(kinds)
    assert outputs(two) == outputs(one)  # maps, PNGs and manifest, byte for byte


def test_out_of_memory_backs_off_to_a_batch_that_fits(tmp_path):
    src = tmp_path / "src"
    make_folder(src, good=7)
    summary = tmp_path / "summary.json"
    common = ["--input-size", "32", "--no-progress", "--batch-size", "8"]
    assert run_dataset_cli([src, "--out", tmp_path / "oom", "--model", "dataset_models:oom_above_3", "--summary", summary, *common]) == 0
    assert json.loads(summary.read_text())["micro_batch"] == [2]  # 8 → 4 → 2 rows per step
    assert run_dataset_cli([src, "--out", tmp_path / "plain", "--model", "dataset_models:tiny_cnn", *common]) == 0
    for path in (tmp_path / "plain" / "maps").rglob("*.npy"):
        np.testing.assert_allclose(np.load(tmp_path / "oom" / path.relative_to(tmp_path / "plain")), np.load(path),
                                   rtol=1e-5, atol=1e-7)


def test_backoff_batcher_halves_on_out_of_memory_only():
    calls = []

    def compute(start, stop):
        calls.append((start, stop))
        if stop - start > 3:
            raise torch.OutOfMemoryError("fake")
        return list(range(start, stop))

    batcher = BackoffBatcher(8)
    parts = batcher.run(10, compute)
    assert sum(parts, []) == list(range(10)) and batcher.size == 2
    assert calls[:3] == [(0, 8), (0, 4), (0, 2)]
    assert batcher.run(3, compute) == [[0, 1], [2]]  # the smaller size is kept

    def always(start, stop):
        raise torch.OutOfMemoryError("fake")

    with pytest.raises(PyExplainError, match="single image"):
        BackoffBatcher(4).run(4, always)

    def other(start, stop):
        raise RuntimeError("not memory")

    with pytest.raises(RuntimeError, match="not memory"):
        BackoffBatcher(4).run(4, other)


MIB = 2**20


def test_fitting_batch_size_by_hand():
    # 2-image probe peaking 300 MiB → 150 MiB per image; 0.8 · 10000 MiB = 8000 MiB → ⌊8000/150⌋ = 53
    assert fitting_batch_size(300 * MIB, 2, 10_000 * MIB, limit=256) == 53
    assert fitting_batch_size(300 * MIB, 2, 10_000 * MIB, limit=20) == 20  # capped (images, maximum)
    assert fitting_batch_size(1024 * MIB, 1, 40 * 1024 * MIB, limit=256, safety=0.5) == 20  # 20 GiB / 1 GiB
    assert fitting_batch_size(300 * MIB, 2, 100 * MIB, limit=256) == 1  # ⌊80/150⌋ = 0 → never below 1
    assert fitting_batch_size(0, 2, 100 * MIB, limit=7) == 7  # nothing measurable per image: the cap
    with pytest.raises(ValueError):
        fitting_batch_size(MIB, 0, MIB, limit=4)


class FakeCudaMemory:
    """Stands in for torch.cuda's memory functions: ``allocated`` before the probe, ``allocated + peak``
    as the peak after it, ``free`` from ``mem_get_info``; every call is logged in order."""

    def __init__(self, monkeypatch, allocated: int, peak: int, free: int) -> None:
        self.log: list[str] = []
        logged = lambda name, value=None: lambda *a, **k: (self.log.append(name), value)[1]  # noqa: E731
        for name, value in (("synchronize", None), ("reset_peak_memory_stats", None), ("empty_cache", None),
                            ("memory_allocated", allocated), ("max_memory_allocated", allocated + peak),
                            ("mem_get_info", (free, 80_000 * MIB))):
            monkeypatch.setattr(torch.cuda, name, logged(name, value))


def test_measured_batch_size_reads_peak_around_the_probe_then_free_memory(monkeypatch):
    fake = FakeCudaMemory(monkeypatch, allocated=500 * MIB, peak=300 * MIB, free=10_000 * MIB)
    choice = measured_batch_size(lambda: fake.log.append("probe"), 2, 256, torch.device("cuda"))
    assert choice.size == 53 and "300 MiB" in choice.how and "10000 MiB free" in choice.how
    order = [fake.log.index(name) for name in ("reset_peak_memory_stats", "memory_allocated", "probe",
                                                "max_memory_allocated", "empty_cache", "mem_get_info")]
    assert order == sorted(order)  # peak read around the probe; free memory read after the cache is emptied

    def out_of_memory():
        raise torch.OutOfMemoryError("fake")

    assert measured_batch_size(out_of_memory, 2, 256, torch.device("cuda")).size == 1

    def broken():
        raise RuntimeError("not memory")

    with pytest.raises(RuntimeError, match="not memory"):
        measured_batch_size(broken, 2, 256, torch.device("cuda"))


def test_batch_size_is_measured_when_memory_is_measurable_else_the_cpu_default(tmp_path, monkeypatch):
    src = tmp_path / "src"
    kinds = make_folder(src, good=7)  # 11 files, 4 of them unreadable
    summary = tmp_path / "summary.json"
    assert run_dataset_cli([src, "--out", tmp_path / "cpu", "--summary", summary, *TINY]) == 0
    assert json.loads(summary.read_text())["batch_size"] == 8  # CPU: the default, no probe

    monkeypatch.setattr(runner, "measures_memory", lambda device: True)  # the CUDA path, memory faked
    fake = FakeCudaMemory(monkeypatch, allocated=0, peak=2 * MIB, free=5 * MIB)  # ⌊0.8 · 5 · 2 / 2⌋ = 4
    assert run_dataset_cli([src, "--out", tmp_path / "auto", "--summary", summary, *TINY]) == 0
    result = json.loads(summary.read_text())
    assert result["batch_size"] == 4 and result["micro_batch"] == [4] and "2-image probe" in result["batch_choice"]
    assert fake.log.count("reset_peak_memory_stats") == 1 and fake.log.count("mem_get_info") == 1
    assert run_dataset_cli([src, "--out", tmp_path / "given", "--batch-size", "4", *TINY]) == 0
    assert outputs(tmp_path / "auto") == outputs(tmp_path / "given")  # the probe leaves no trace in the maps

    FakeCudaMemory(monkeypatch, allocated=0, peak=MIB, free=10**6 * MIB)
    assert run_dataset_cli([src, "--out", tmp_path / "capped", "--summary", summary, *TINY]) == 0
    assert json.loads(summary.read_text())["batch_size"] == len(kinds)  # capped by the number of images


def test_tf32_is_refused_on_the_cpu(tmp_path, capsys):
    src = tmp_path / "src"
    make_folder(src, good=2)
    assert run_dataset_cli([src, "--out", tmp_path / "out", "--precision", "tf32", "--device", "cpu", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "CUDA" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_list_file_mirrors_entries_and_reports_missing_ones(tmp_path):
    images = tmp_path / "data"
    make_folder(images, good=3)
    elsewhere = tmp_path / "elsewhere" / "x.png"
    elsewhere.parent.mkdir()
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(elsewhere)
    listing = images / "list.txt"
    listing.write_text(f"# images\nimg00.png\n\nsub/img01.jpg\n./img02.png\n{elsewhere}\nmissing.png\n")
    out = images / "out"  # inside SRC's folder: never taken as a source
    assert run_dataset_cli([listing, "--out", out, *TINY]) == 0
    records = {r["source"]: r for r in manifest(out)}
    absolute_key = elsewhere.as_posix().lstrip("/")
    assert sorted(records) == sorted(["img00.png", "sub/img01.jpg", "img02.png", absolute_key, "missing.png"])
    assert records["missing.png"]["status"] == "unreadable" and records["missing.png"]["reason"] == "no such file"
    assert (out / "maps" / f"{absolute_key}.npy").is_file() and (out / "maps/sub/img01.jpg.npy").is_file()

    folder_out = tmp_path / "data" / "out2"
    assert run_dataset_cli([images, "--out", folder_out, *TINY]) == 0
    assert run_dataset_cli([images, "--out", folder_out, *TINY]) == 0
    sources = [r["source"] for r in manifest(folder_out)]
    assert "list.txt" in sources and not any(s.startswith("out") for s in sources)  # no run's outputs


def test_bfloat16_changes_maps_slightly_and_is_a_different_run(tmp_path):
    from scipy.stats import spearmanr

    src = tmp_path / "src"
    make_folder(src, good=4)
    assert run_dataset_cli([src, "--out", tmp_path / "f32", *TINY]) == 0
    assert run_dataset_cli([src, "--out", tmp_path / "bf16", "--precision", "bfloat16", *TINY]) == 0
    f32, bf16 = manifest(tmp_path / "f32"), manifest(tmp_path / "bf16")
    assert f32[0]["config"] != bf16[0]["config"] and {r["precision"] for r in bf16} == {"bfloat16"}
    for a, b in zip(f32, bf16):
        if a["status"] == "ok":
            x, y = np.load(tmp_path / "f32" / a["outputs"]["map"]), np.load(tmp_path / "bf16" / b["outputs"]["map"])
            assert not np.array_equal(x, y)  # autocast really ran in bfloat16
            assert spearmanr(x.ravel(), y.ravel())[0] > 0.9


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_matches_cpu_and_reduced_precision_stays_rank_correlated(tmp_path):
    from scipy.stats import spearmanr

    src = tmp_path / "src"
    make_folder(src, good=4)
    assert run_dataset_cli([src, "--out", tmp_path / "cpu", "--device", "cpu", *TINY]) == 0
    for name, extra in (("cuda", []), ("tf32", ["--precision", "tf32"]), ("bf16", ["--precision", "bfloat16", "--channels-last"])):
        assert run_dataset_cli([src, "--out", tmp_path / name, "--device", "cuda", *TINY, *extra]) == 0
        for path in (tmp_path / "cpu" / "maps").rglob("*.npy"):
            expected, got = np.load(path), np.load(tmp_path / name / path.relative_to(tmp_path / "cpu"))
            if name == "cuda":
                np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
            else:
                assert spearmanr(expected.ravel(), got.ravel())[0] > 0.9


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_size_is_measured_and_fits(tmp_path):
    src = tmp_path / "src"
    make_folder(src, good=6)
    summary = tmp_path / "summary.json"
    assert run_dataset_cli([src, "--out", tmp_path / "cuda", "--device", "cuda", "--summary", summary, *TINY]) == 0
    result = json.loads(summary.read_text())
    assert "probe" in result["batch_choice"] and 1 <= result["batch_size"] <= 10
    assert result["micro_batch"] == [result["batch_size"]]  # no out-of-memory back-off was needed
