"""Pretrained weights the way torchvision and timm find them: their cache first, else their own
download (hash-checked, with a progress bar), unless downloads are off.

Downloads are off with ``--offline`` or ``PYEXPLAIN_OFFLINE=1`` (for timm also Hugging Face's
``HF_HUB_OFFLINE=1``). A download that is off or fails is one :class:`PyExplainError` line naming
the URL, the cache path and the three ways out; the libraries' own downloaders write to a
temporary file and rename it only when complete, so a failure leaves no partial file behind.
"""
from __future__ import annotations

import contextlib
import http.client
import os
import socket
from pathlib import Path
from typing import Iterator

import torch

from ..errors import PyExplainError
from ..model_catalog import OFFLINE_ENV
#: Seconds a stalled download may wait for data before it fails (``PYEXPLAIN_DOWNLOAD_TIMEOUT``).
DEFAULT_DOWNLOAD_TIMEOUT = 60.0
_TRUE = ("1", "true", "yes", "on")


def offline() -> bool:
    """Whether downloads are off: ``PYEXPLAIN_OFFLINE=1`` (set by ``--offline``)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def hf_offline() -> bool:
    """Whether Hugging Face Hub downloads are off (``PYEXPLAIN_OFFLINE``, ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``)."""
    return offline() or any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_checkpoint(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url(url)`` keeps its file (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def unavailable(name: str, url: str, cache_path: Path | str, reason: str) -> PyExplainError:
    """The one-line error for pretrained weights that cannot be had."""
    return PyExplainError(
        f"no pretrained weights for {name!r}: {reason}; they come from {url} and are kept in {cache_path}; "
        f"go online, or pass --weights FILE, or copy the file to {cache_path}")


def _download_timeout() -> float:
    try:
        return float(os.environ.get("PYEXPLAIN_DOWNLOAD_TIMEOUT", DEFAULT_DOWNLOAD_TIMEOUT))
    except ValueError:
        raise PyExplainError("PYEXPLAIN_DOWNLOAD_TIMEOUT must be a number of seconds") from None


@contextlib.contextmanager
def download_guard(name: str, url: str, cache_path: Path, allowed: bool, extra_errors: tuple = ()) -> Iterator[None]:
    """Run a library's own download of ``url`` into ``cache_path``: refused when ``allowed`` is false
    and the file is not cached; a stalled socket times out; a failure becomes :func:`unavailable`."""
    cached = cache_path.is_file()
    if not cached and not allowed:
        raise unavailable(name, url, cache_path, f"downloads are off (--offline, {OFFLINE_ENV}=1 or HF_HUB_OFFLINE=1) "
                                                 "and the file is not in the cache")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_download_timeout())
    try:
        yield
    except (OSError, http.client.HTTPException, RuntimeError, *extra_errors) as exc:
        if cached:
            raise PyExplainError(f"cached weights {str(cache_path)!r} for {name!r} cannot be read "
                                 f"({_first_line(exc)}): delete the file to download it again, or pass --weights FILE") from None
        raise unavailable(name, url, cache_path, f"the download failed ({_first_line(exc)})") from None
    finally:
        socket.setdefaulttimeout(previous)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"
