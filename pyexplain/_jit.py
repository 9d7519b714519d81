"""The fused kernels compiled at first use, when no ahead-of-time build ships with the package.

A plain ``pip install .`` builds in isolation, without torch, so ``setup.py`` cannot compile
``pyexplain/csrc``; the package then compiles it here the first time a fused op is asked for, with
``torch.utils.cpp_extension.load`` and ninja, and caches the result per torch version, Python,
CPU-or-CUDA and source hash under ``<pyexplain cache>/kernels/`` (``$PYEXPLAIN_CACHE``, else
``$XDG_CACHE_HOME/pyexplain``, else ``~/.cache/pyexplain``). Later processes import the cached
module directly, without ninja.

Two processes starting at once: the build holds an exclusive ``flock`` on a lock file that is never
deleted, so the second waits (with a note, at most :data:`LOCK_TIMEOUT_S`) and then loads what the
first built. The kernel releases the lock when its holder dies, even by SIGKILL; a stale lock file
of torch's own (left by a killed build) is removed while the lock is held. A failed build is
remembered (``build-error.log`` beside it) so that later processes use the fallback at once;
delete that folder to retry. ``PYEXPLAIN_NO_EXTENSION=1`` turns the build off.
"""
from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

from . import _build

MODULE_NAME = "pyexplain_fused_kernels"
LOCK_TIMEOUT_S = 900.0
_FAILED = "build-error.log"


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def _cache_root() -> Path:
    from .data.cache import cache_dir

    return cache_dir() / "kernels"


def _with_cuda() -> bool:
    import torch

    return (bool(torch.version.cuda) and torch.cuda.is_available() and os.environ.get("PYEXPLAIN_NO_CUDA") != "1"
            and bool(_build.cuda_sources()) and _build.cuda_toolkit() is not None)


def build_folder(with_cuda: bool) -> Path:
    """The cache folder of this torch, Python, CPU-or-CUDA build and source hash."""
    import torch

    flavour = f"cuda{torch.version.cuda}" if with_cuda else "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return _cache_root() / f"torch{torch.__version__.replace('+', '_')}-{python}-{flavour}-{_build.sources_digest()}"


def _ninja_folder() -> str | None:
    """The folder of the ``ninja`` program: on the PATH, else the one the ``ninja`` package ships
    (a virtual environment's ``bin/`` is not on the PATH unless it is activated)."""
    found = shutil.which("ninja")
    if found:
        return str(Path(found).parent)
    try:
        import ninja
    except ImportError:
        return None
    return ninja.BIN_DIR if (Path(ninja.BIN_DIR) / "ninja").is_file() else None


def _import_built(folder: Path) -> ModuleType | None:
    library = next(iter(sorted(folder.glob(f"{MODULE_NAME}*.so"))), None)
    if library is None:
        return None
    spec = importlib.util.spec_from_file_location(MODULE_NAME, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _acquire(lock_path: Path):
    """An exclusive ``flock`` on ``lock_path`` (created, never deleted), waiting at most LOCK_TIMEOUT_S."""
    handle = open(lock_path, "a+")
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    waited = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if not waited:
                _note("waiting for another process that is compiling pyexplain's fused kernels")
                waited = True
            if time.monotonic() > deadline:
                handle.close()
                raise TimeoutError(f"another process held {lock_path} for over {LOCK_TIMEOUT_S:.0f} s")
            time.sleep(0.5)


def _compile(folder: Path, with_cuda: bool) -> ModuleType:
    import torch

    # torch logs a warning about a missing CUDA toolkit on import, irrelevant to a CPU-only build.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    sources = [str(p) for p in _build.cpp_sources()]
    cflags, cuda_flags, includes = list(_build.CXX_FLAGS), list(_build.NVCC_FLAGS), []
    if with_cuda:
        cpp_extension.CUDA_HOME = _build.cuda_toolkit()
        major, minor = torch.cuda.get_device_capability()
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or f"{major}.{minor}"
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", archs)
        includes.append(str(_build.write_config_header(folder / "config", archs)))
        sources += [str(p) for p in _build.cuda_sources()]
        cflags.append(_build.CUDA_DEFINE)
        cuda_flags.append(_build.CUDA_DEFINE)
    os.environ["PATH"] = os.pathsep.join(filter(None, [_ninja_folder(), os.environ.get("PATH")]))
    stale_baton = folder / "lock"  # torch's own build lock; ours is held, so any left over is stale
    stale_baton.unlink(missing_ok=True)
    return cpp_extension.load(
        name=MODULE_NAME, sources=sources, extra_cflags=cflags, extra_cuda_cflags=cuda_flags,
        extra_ldflags=list(_build.LINK_FLAGS), extra_include_paths=includes, build_directory=str(folder),
        with_cuda=with_cuda, verbose=False,
    )


def load() -> tuple[ModuleType | None, str | None]:
    """``(module, None)`` from the cache or a fresh build, or ``(None, why not)``."""
    if os.environ.get("PYEXPLAIN_NO_EXTENSION") == "1":
        return None, "not built: PYEXPLAIN_NO_EXTENSION=1"
    if not _build.cpp_sources():
        return None, "not built: the package ships no kernel sources"
    with_cuda = _with_cuda()
    folder = build_folder(with_cuda)
    try:
        module = _import_built(folder)
        if module is not None:
            return module, None
        if (folder / _FAILED).is_file():
            return None, f"the build at first use failed earlier (see {folder / _FAILED}; delete that folder to retry)"
        if _build.cxx_compiler() is None:
            return None, "not built: no C++ compiler found (set CXX or install g++ and ninja)"
        if _ninja_folder() is None:
            return None, "not built: ninja is not installed (pip install ninja)"
        folder.mkdir(parents=True, exist_ok=True)
        handle = _acquire(folder.parent / f"{folder.name}.lock")
    except (OSError, ImportError, TimeoutError) as exc:
        return None, f"not built: {exc}"
    try:
        module = _import_built(folder)  # built by another process while this one waited
        if module is not None:
            return module, None
        kind = "CPU and CUDA" if with_cuda else "CPU"
        _note(f"compiling pyexplain's fused {kind} kernels once for this torch (a minute or two); cached in {folder}")
        return _compile(folder, with_cuda), None
    except Exception as exc:  # a compiler, linker or toolkit error: remembered, the fallback is used
        (folder / _FAILED).write_text(f"{type(exc).__name__}: {exc}\n", encoding="utf-8")
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return None, f"the build at first use failed ({first_line[:200]}; log: {folder / _FAILED})"
    finally:
        handle.close()
