"""The output folder of a dataset run: where each output goes, the run's identity, the journals.

Layout (``key`` is the source's path relative to SRC)::

    OUT/maps/<key>.npy            the map [H, W] (float32)
    OUT/extras/<name>/<key>.npy   per-row extras of the method (e.g. DMBP's positive/negative maps)
    OUT/png/<key>.png             heatmap overlay (with --png)
    OUT/manifest.jsonl            one record per source, sorted by key (written at the end by rank 0)
    OUT/.pyexplain/run.json       the run's configuration and its digest
    OUT/.pyexplain/journal-<rank>.jsonl   append-only, fsync'd record per finished image
    OUT/.pyexplain/lock           flock'd by the run using the folder (holds its pid)

One run at a time: a run locks the folder before it deletes, repairs or writes anything in it, and a
second run on the same folder is refused (:class:`FolderLock`).

Crash safety: every output is written to a temporary file, fsync'd and renamed into place; only then
is the image's record appended to its rank's journal and fsync'd. A record therefore always
describes complete outputs; a kill can leave at most a torn last journal line (dropped and
truncated on the next start) and stray temporary files (deleted on the next start).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from ..errors import PyExplainError
from ..io import atomic_write, json_text
from .config import RunConfig, describe_difference

STATE_DIR = ".pyexplain"
MANIFEST = "manifest.jsonl"
#: The lock file in STATE_DIR (see :class:`FolderLock`).
LOCK = "lock"
#: What ``--overwrite`` deletes; STATE_DIR is emptied but for its lock file, run.json last.
OUTPUTS = ("maps", "extras", "png", MANIFEST)


class Layout:
    """Paths inside the output folder."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.state = self.root / STATE_DIR
        self.run_file = self.state / "run.json"
        self.manifest = self.root / MANIFEST
        self.lock = self.state / LOCK

    def output(self, kind: str, key: str) -> str:
        """Relative path of output ``kind`` ("map", "png" or an extra's name) for source ``key``."""
        if kind == "map":
            return f"maps/{key}.npy"
        if kind == "png":
            return f"png/{key}.png"
        return f"extras/{kind}/{key}.npy"

    def journal(self, rank: int) -> Path:
        return self.state / f"journal-{rank}.jsonl"

    def journals(self) -> list[Path]:
        return sorted(self.state.glob("journal-*.jsonl"))


def _fsynced(write):
    def run(tmp: Path) -> None:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())

    return run


def write_npy(path: Path, array: np.ndarray) -> int:
    """Atomically and durably write ``array``; returns the file size."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    return atomic_write(path, _fsynced(write)).stat().st_size


def write_png(path: Path, image: Image.Image) -> int:
    return atomic_write(path, _fsynced(lambda tmp: image.save(tmp, format="PNG"))).stat().st_size


class FolderLock:
    """Exclusive ``flock`` on ``OUT/.pyexplain/lock``, held by one process of a run from before it
    touches the folder until it has written the manifest.

    The lock file is never deleted or replaced (not even by ``--overwrite``), so every run locks the
    same inode; it holds the holder's pid for the refusal message. The kernel drops the lock when its
    holder dies, even by SIGKILL, so a killed run never blocks the next one.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def acquire(cls, layout: Layout) -> "FolderLock":
        """Lock ``layout.root`` (created if missing), or refuse with one line if another run holds it.

        A folder that exists but is not a folder, or is not empty and holds no run, is refused
        before anything is created in it."""
        root = layout.root
        if root.exists() and not root.is_dir():
            raise PyExplainError(f"--out {root} exists and is not a folder")
        if root.is_dir() and not layout.state.is_dir() and any(root.iterdir()):
            raise PyExplainError(f"--out {root} is not empty and holds no pyexplain dataset run; choose an empty or new folder")
        try:
            layout.state.mkdir(parents=True, exist_ok=True)
            fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise PyExplainError(f"--out {root}: cannot write there ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise PyExplainError(f"{root} is in use by another run (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd)

    def release(self) -> None:
        """Unlock (the file stays, so that the next run locks the same inode)."""
        os.close(self.fd)


def _repair_tail(path: Path) -> None:
    """Drop a torn last line (a write cut short by a kill) so the next append starts on a new line."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size:
            data = os.pread(fd, size, 0)
            if not data.endswith(b"\n"):
                os.ftruncate(fd, data.rfind(b"\n") + 1)
                os.fsync(fd)
    finally:
        os.close(fd)


def _remove_temporaries(layout: Layout) -> None:
    """Delete temporary files that a killed run left behind (``atomic_write`` names them ``.NAME.*.tmp``)."""
    for name in ("maps", "extras", "png", STATE_DIR):
        for tmp in (layout.root / name).rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    for tmp in layout.root.glob(f".{MANIFEST}.*.tmp"):
        tmp.unlink(missing_ok=True)


def _clear(layout: Layout) -> None:
    """Delete a previous run's outputs and state, keeping the lock file; run.json goes last, so an
    interrupted clearing still leaves a folder recognised as a run."""
    for name in OUTPUTS:
        path = layout.root / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for path in layout.state.iterdir():
        if path.name not in (LOCK, layout.run_file.name):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    layout.run_file.unlink(missing_ok=True)


def prepare(layout: Layout, config: RunConfig, overwrite: bool) -> None:
    """Make ``layout.root`` ready for ``config``; the caller holds its :class:`FolderLock`.

    A folder holding a run with another configuration is refused unless ``overwrite``, which
    deletes that run's outputs first; a non-empty folder that holds no run is always refused.
    """
    root = layout.root
    if layout.run_file.is_file():
        try:
            previous = json.loads(layout.run_file.read_text())
        except (OSError, ValueError) as exc:
            raise PyExplainError(f"{layout.run_file} is unreadable ({exc}); remove {layout.state} to start over") from None
        if previous.get("digest") != config.digest:
            if not overwrite:
                change = describe_difference(previous.get("config", {}), config.as_json())
                raise PyExplainError(f"{root} holds outputs of a different run ({change}); pass --overwrite to "
                                     f"replace them or choose another --out")
            _clear(layout)
    elif any(path.name != STATE_DIR for path in root.iterdir()):
        raise PyExplainError(f"--out {root} is not empty and holds no pyexplain dataset run; choose an empty or new folder")
    else:  # a run stopped before it wrote run.json: nothing of it is kept
        _clear(layout)
    _remove_temporaries(layout)
    for journal in layout.journals():
        _repair_tail(journal)
    if not layout.run_file.is_file():
        text = json.dumps({"digest": config.digest, "config": config.as_json()}, indent=2, sort_keys=True) + "\n"
        atomic_write(layout.run_file, _fsynced(lambda tmp: tmp.write_text(text)))


class Journal:
    """One rank's append-only record file: each :meth:`append` is one ``write`` followed by ``fsync``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        new = not path.exists()
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        if new:  # make the new directory entry durable too
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def append(self, record: dict[str, Any]) -> None:
        os.write(self.fd, (json_text(record, sort_keys=True) + "\n").encode())
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def read_records(layout: Layout) -> dict[str, list[dict[str, Any]]]:
    """Every journal record, grouped by source key (unparseable lines are skipped)."""
    records: dict[str, list[dict[str, Any]]] = {}
    for journal in layout.journals():
        for line in journal.read_bytes().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("source"), str):
                records.setdefault(record["source"], []).append(record)
    return records


def same_source(record: dict[str, Any], digest: str, sha256: str | None) -> bool:
    """Whether ``record`` was made by this configuration from these exact source bytes."""
    return sha256 is not None and record.get("config") == digest and record.get("sha256") == sha256


def is_complete(record: dict[str, Any], layout: Layout, digest: str, sha256: str | None, want_png: bool) -> bool:
    """Whether ``record`` is a finished image of this run: same configuration and source bytes, and
    all its outputs present at their recorded size (PNG included when asked for)."""
    if not same_source(record, digest, sha256) or record.get("status") != "ok":
        return False
    outputs, sizes = record.get("outputs") or {}, record.get("bytes") or {}
    if "map" not in outputs or (want_png and "png" not in outputs):
        return False
    for kind, relative in outputs.items():
        try:
            if (layout.root / relative).stat().st_size != sizes.get(kind):
                return False
        except OSError:
            return False
    return True


def write_manifest(layout: Layout, records: Iterable[dict[str, Any]]) -> Path:
    """Write the merged manifest (JSON lines, sorted by source) atomically."""
    text = "".join(json_text(r, sort_keys=True) + "\n" for r in sorted(records, key=lambda r: r["source"]))
    return atomic_write(layout.manifest, _fsynced(lambda tmp: tmp.write_text(text)))
