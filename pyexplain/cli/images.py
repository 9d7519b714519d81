"""The image arguments of the commands: files and ``builtin:NAME`` photos as given, folders and
``.txt`` list files expanded into the image files they name."""
from __future__ import annotations

from pathlib import Path

from ..errors import PyExplainError

#: Suffixes of list files (one image path per line, relative to the list's folder, ``#`` comments).
LIST_SUFFIXES = frozenset({".txt", ".lst"})


def expand_images(arguments: list[str]) -> list[str]:
    """Each argument in order: a folder → its image files (recursively, sorted), a list file → the paths
    it lists, anything else (a file, ``builtin:NAME``, ``test:N``) → itself."""
    from ..dataset.sources import collect_sources
    from ..io import IMAGE_SUFFIXES

    images: list[str] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = [str(s.path) for s in collect_sources(path) if s.path.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise PyExplainError(f"{argument}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            images.extend(found)
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            images.extend(str(s.path) for s in collect_sources(path))
        elif not argument.startswith(("builtin:", "test:")) and not path.exists():
            raise PyExplainError(f"{argument}: no such image file, folder or list file")
        else:
            images.append(argument)
    return images


def output_stems(sources: list[str], suffix: str) -> list[str]:
    """``<stem>_<suffix>`` per source (``builtin:chelsea`` → ``chelsea``, ``test:3`` → ``test_3``), made
    unique with ``_2``, ``_3``, ... in order."""
    stems, seen = [], set()
    for source in sources:
        name = source.split(":", 1)[-1] if source.startswith("builtin:") else source
        name = name.replace(":", "_") if source.startswith("test:") else name
        stem = f"{Path(name).stem}_{suffix}"
        candidate, k = stem, 1
        while candidate in seen:
            k += 1
            candidate = f"{stem}_{k}"
        seen.add(candidate)
        stems.append(candidate)
    return stems
