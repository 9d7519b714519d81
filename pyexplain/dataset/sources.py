"""The images of a dataset run: a folder tree or a list file, in a fixed order with stable keys.

Each source gets a *key*, a relative POSIX path that the outputs mirror (``cats/a.jpg`` →
``maps/cats/a.jpg.npy``). Keys are unique and sorted, so every process of a run sees the same list.
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import PyExplainError
from ..io import open_regular, read_bounded


@dataclass(frozen=True)
class Source:
    key: str  #: relative POSIX path, mirrored by the outputs
    path: Path  #: where the bytes are read from


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_output_folder(path: Path) -> bool:
    """A dataset run's output folder (never taken as images)."""
    return (path / ".pyexplain" / "run.json").is_file()


def _walk(root: Path, exclude: Path | None) -> list[Source]:
    sources = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not _is_hidden(d) and not _is_output_folder(here / d)
                   and (exclude is None or (here / d).resolve() != exclude)]
        for name in files:
            if not _is_hidden(name):
                path = here / name
                sources.append(Source(path.relative_to(root).as_posix(), path))
    return sources


def _list_key(entry: Path, base: Path) -> str:
    resolved = Path(os.path.normpath(base / entry))
    try:
        return resolved.relative_to(base).as_posix()
    except ValueError:
        return resolved.as_posix().lstrip("/")  # outside the list's folder: the absolute path, rootless


def _read_list(list_file: Path) -> list[Source]:
    data = read_bounded(list_file)
    if b"\0" in data:
        raise PyExplainError(f"{list_file}: SRC is a file but not a list of image paths (one per line)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PyExplainError(f"{list_file}: SRC is a file but not a UTF-8 list of image paths (one per line)") from None
    base = Path(os.path.abspath(list_file.parent))
    sources = []
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            path = Path(entry) if os.path.isabs(entry) else base / entry
            sources.append(Source(_list_key(Path(entry), base), path))
    return sources


def collect_sources(src: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Source]:
    """Every image source under ``src``, sorted by key.

    ``src`` is a folder (all regular files below it, recursively; hidden names, ``exclude`` and other
    runs' output folders skipped; non-images are kept so that they are reported) or a UTF-8 list file with one path per
    line (relative paths are relative to the list's folder; blank lines and ``#`` comments skipped).
    """
    src = Path(src)
    if src.is_dir():
        sources = _walk(src, Path(exclude).resolve() if exclude is not None else None)
    elif src.is_file():
        sources = _read_list(src)
    else:
        raise PyExplainError(f"{src}: no such folder or list file")
    unique: dict[str, Source] = {}
    for source in sources:
        seen = unique.setdefault(source.key, source)
        if os.path.abspath(seen.path) != os.path.abspath(source.path):
            raise PyExplainError(f"{seen.path} and {source.path} would both be written as {source.key!r}; rename one")
    if not unique:
        raise PyExplainError(f"{src}: no files to explain")
    return [unique[key] for key in sorted(unique)]


def file_sha256(path: str | os.PathLike, limit: int = sys.maxsize) -> str:
    """Hex SHA-256 of a regular file's bytes; :class:`PyExplainError` for a missing file, a folder, a
    FIFO, a device or a socket, or a file of more than ``limit`` bytes (:func:`pyexplain.io.open_regular`)."""
    digest = hashlib.sha256()
    with os.fdopen(open_regular(path, limit), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
