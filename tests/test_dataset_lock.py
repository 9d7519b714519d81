"""``explain-dataset`` runs on the same output folder: one at a time, a killed holder blocks nothing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from test_dataset import _env, _journaled, make_folder, manifest, outputs, run_dataset_cli

TINY = ["--model", "dataset_models:gated_tiny_cnn", "--input-size", "32", "--batch-size", "1", "--no-progress",
        "--device", "cpu"]


def _start(src: Path, out: Path, gate: Path) -> subprocess.Popen:
    """A run of TINY that stops after its first batch until ``gate`` is deleted."""
    gate.touch()
    return subprocess.Popen([sys.executable, "-m", "pyexplain", "explain-dataset", str(src), "--out", str(out), *TINY],
                            env={**_env(), "GATE_FILE": str(gate)}, cwd=gate.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_first_image(process: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 600  # a bound on a slow start (a loaded machine), not a speed check
    while not _journaled(out):
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "no image finished in time"
        time.sleep(0.01)


def _stamps(out: Path) -> dict[Path, int]:
    """Modification times of the files in ``out`` but the journal (the held run still journals its unreadable files)."""
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and not p.name.startswith("journal-")}


def test_second_run_is_refused_and_first_run_finishes_as_if_alone(tmp_path, capsys, one_thread):
    src, out = tmp_path / "src", tmp_path / "out"
    make_folder(src, good=8)
    gate = tmp_path / "gate"
    first = _start(src, out, gate)
    try:
        _wait_for_first_image(first, out)
        for extra in ([], ["--overwrite"], ["--method", "saliency", "--overwrite"], ["--method", "saliency"]):
            before = _stamps(out)
            assert first.poll() is None, "the first run must still be running"
            assert run_dataset_cli([src, "--out", out, *TINY, *extra]) == 2
            err = capsys.readouterr().err
            assert err == f"error: {out} is in use by another run (pid {first.pid})\n"
            now = _stamps(out)
            assert {p: now[p] for p in before} == before  # nothing of the first run's outputs was touched
    finally:
        gate.unlink()
        first.wait(timeout=300)
    assert first.returncode == 0, first.stderr.read()
    alone = tmp_path / "alone"
    assert run_dataset_cli([src, "--out", alone, *TINY]) == 0
    assert outputs(out) == outputs(alone)  # maps and manifest byte for byte
    assert {r["method"] for r in manifest(out)} == {"gradxinput"}


def test_killed_holder_does_not_block_the_next_run(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_folder(src, good=2)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pyexplain.dataset.store import FolderLock, Layout\n"
                               "FolderLock.acquire(Layout(sys.argv[1])); print('held', flush=True); time.sleep(120)",
         str(out)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert run_dataset_cli([src, "--out", out, *TINY]) == 2
        assert f"in use by another run (pid {holder.pid})" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert run_dataset_cli([src, "--out", out, *TINY]) == 0
    assert [r["status"] for r in manifest(out)].count("ok") == 2
    assert (out / ".pyexplain" / "lock").read_text() == f"{os.getpid()}\n"  # the last holder


def test_overwrite_keeps_the_lock_file_and_refuses_foreign_folders_untouched(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_folder(src, good=2)
    assert run_dataset_cli([src, "--out", out, *TINY]) == 0
    lock = out / ".pyexplain" / "lock"
    inode = lock.stat().st_ino
    assert run_dataset_cli([src, "--out", out, *TINY, "--method", "saliency", "--overwrite"]) == 0
    assert lock.stat().st_ino == inode  # the same file: a waiting run never locks a replaced one
    assert {r["method"] for r in manifest(out)} == {"saliency"}

    stopped = tmp_path / "stopped"  # a run killed after taking the lock, before writing run.json
    (stopped / ".pyexplain").mkdir(parents=True)
    (stopped / ".pyexplain" / "lock").write_text("12345\n")
    assert run_dataset_cli([src, "--out", stopped, *TINY]) == 0

    for foreign_content in ("file", "folder"):
        foreign = tmp_path / f"foreign-{foreign_content}"
        if foreign_content == "file":
            foreign.write_text("mine")
        else:
            foreign.mkdir()
            (foreign / "keep.txt").write_text("mine")
        capsys.readouterr()
        assert run_dataset_cli([src, "--out", foreign, *TINY, "--overwrite"]) == 2
        assert capsys.readouterr().err.count("\n") == 1
        assert foreign.read_text() == "mine" if foreign.is_file() else [p.name for p in foreign.iterdir()] == ["keep.txt"]
