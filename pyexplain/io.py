"""Reading images safely and writing outputs atomically."""
from __future__ import annotations

import io
import json
import math
import os
import stat
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import PyExplainError

#: Decompression-bomb guard: images with more pixels are refused (override with PYEXPLAIN_MAX_PIXELS).
DEFAULT_MAX_PIXELS = 64_000_000


#: Largest image file read, in bytes (override with PYEXPLAIN_MAX_IMAGE_BYTES).
DEFAULT_MAX_IMAGE_BYTES = 256 * 2**20


def _limit_from_env(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        limit = int(value)
    except ValueError:
        raise PyExplainError(f"{name} must be a positive integer, got {value!r}") from None
    if limit < 1:
        raise PyExplainError(f"{name} must be a positive integer, got {value!r}")
    return limit


def max_pixels() -> int:
    return _limit_from_env("PYEXPLAIN_MAX_PIXELS", DEFAULT_MAX_PIXELS)


def max_image_bytes() -> int:
    return _limit_from_env("PYEXPLAIN_MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES)


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _check_regular(path: Path, mode: int, size: int, limit: int) -> None:
    for test, kind in _KINDS:
        if test(mode):
            raise PyExplainError(f"{path}: is {kind}, not an image file")
    if not stat.S_ISREG(mode):
        raise PyExplainError(f"{path}: not a regular file")
    if size > limit:
        raise PyExplainError(f"{path}: {size:,}-byte file exceeds the {limit:,}-byte limit (PYEXPLAIN_MAX_IMAGE_BYTES)")


def open_regular(path: str | os.PathLike, limit: int | None = None) -> int:
    """A read-only descriptor on ``path`` if it is a regular file of at most ``limit`` bytes (default
    :func:`max_image_bytes`). The file is opened with ``O_NONBLOCK`` and checked with ``fstat``, so
    a FIFO, a device or a socket is refused at once instead of blocking or reading forever."""
    path = Path(path)
    limit = max_image_bytes() if limit is None else limit
    try:
        info = os.stat(path)
        _check_regular(path, info.st_mode, info.st_size, limit)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PyExplainError(f"{path}: no such file") from None
    except OSError as exc:
        raise PyExplainError(f"{path}: cannot read ({exc.strerror})") from None
    try:  # the path may have been replaced between stat and open
        info = os.fstat(fd)
        _check_regular(path, info.st_mode, info.st_size, limit)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them (see :func:`open_regular`)."""
    limit = max_image_bytes() if limit is None else limit
    fd = open_regular(path, limit)
    try:
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise PyExplainError(f"{path}: cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > limit:  # grew after the check
        raise PyExplainError(f"{path}: file exceeds the {limit:,}-byte limit (PYEXPLAIN_MAX_IMAGE_BYTES)")
    return data


def _to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """Convert any PIL mode to 8-bit RGB without clipping; returns the image and a note if converted."""
    mode = image.mode
    if mode == "RGB":
        return image, None
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, "L").convert("RGB"), f"{mode} (high bit depth) scaled to 8-bit RGB"
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB"), f"{mode} composited on white"
    return image.convert("RGB"), f"{mode} converted to RGB"


def load_image(path: str | os.PathLike, on_note: Callable[[str], None] | None = None) -> Image.Image:
    """Open an image file as 8-bit RGB, refusing anything that is not a complete, sane image.

    Grayscale, palette, CMYK, RGBA and 16-bit images are converted (reported through ``on_note``);
    empty, truncated, corrupt, non-image files, directories, FIFOs, devices, sockets, files over
    :func:`max_image_bytes` and images over :func:`max_pixels` raise :class:`PyExplainError` with a
    one-line message.
    """
    path = Path(path)
    data = read_bounded(path)
    if not data:
        raise PyExplainError(f"{path}: empty file")
    limit = max_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                if width * height > limit:
                    raise PyExplainError(f"{path}: {width}x{height} image exceeds the {limit:,}-pixel limit (PYEXPLAIN_MAX_PIXELS)")
                probe.load()
                image = probe.copy()
    except PyExplainError:
        raise
    except UnidentifiedImageError:
        raise PyExplainError(f"{path}: not an image file (or an unsupported format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PyExplainError(f"{path}: image too large (decompression-bomb guard)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise PyExplainError(f"{path}: corrupt or truncated image ({str(exc).splitlines()[0]})") from None
    if image.width < 1 or image.height < 1:
        raise PyExplainError(f"{path}: image has no pixels")
    image, note = _to_rgb(image)
    if note and on_note:
        on_note(f"{path}: {note}")
    return image


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``),
    else set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path`` and rename it over ``path``.

    Readers never see a partial file; on any error the temporary file is removed. The file gets the
    mode a plain ``open`` would give it: ``0o666`` less the umask.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise PyExplainError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinite float (in nested dicts, lists and tuples) replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def json_text(value: Any, **options: Any) -> str:
    """Strict JSON (no bare ``NaN``/``Infinity``): non-finite numbers become ``null``."""
    return json.dumps(finite_or_none(value), allow_nan=False, **options)


def _check_writable_folder(folder: Path, option: str, path: Path) -> None:
    """``folder`` (or, if missing, its nearest existing parent, where it would be made) must be a
    folder this process may write in."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PyExplainError(f"{option} {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PyExplainError(f"{option} {path}: cannot write in {existing} (permission denied)")


def check_output_folder(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse, before any work, an output folder that is an existing file or cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PyExplainError(f"{option} {path} exists and is not a folder")
    _check_writable_folder(path, option, path)


def check_output_file(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse, before any work, an output file that is a folder or whose folder cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise PyExplainError(f"{option} {path} is a folder, not a file")
    _check_writable_folder(path.parent, option, path)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    return atomic_write(path, write)


def save_png(path: str | os.PathLike, image: Image.Image) -> Path:
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


#: File suffixes taken as images when a folder is searched for images.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
#: Photos bundled with scikit-image, usable as ``builtin:NAME`` wherever an image path is accepted;
#: each name is a different photo.
BUILTIN_IMAGES = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle", "camera", "clock", "hubble_deep_field",
                  "immunohistochemistry")
#: Other names scikit-image gives the same photos (``cat`` is chelsea).
BUILTIN_ALIASES = {"cat": "chelsea"}
#: The scikit-image loader of each photo whose name is not scikit-image's own.
_SKIMAGE_LOADERS = {"motorcycle": lambda data: data.stereo_motorcycle()[0]}


def builtin_image(name: str) -> Image.Image:
    """One of scikit-image's bundled photos (no download) as an RGB image."""
    name = BUILTIN_ALIASES.get(name, name)
    if name not in BUILTIN_IMAGES:
        raise PyExplainError(f"unknown builtin image {name!r}; available: {', '.join(BUILTIN_IMAGES)}")
    from skimage import data

    loader = _SKIMAGE_LOADERS.get(name, lambda data: getattr(data, name)())
    return _to_rgb(Image.fromarray(loader(data)))[0]


def open_image(source: str | os.PathLike, on_note: Callable[[str], None] | None = None) -> Image.Image:
    """``builtin:NAME`` for a bundled photo, else a file path (see :func:`load_image`)."""
    text = str(source)
    if text.startswith("builtin:"):
        return builtin_image(text.split(":", 1)[1])
    return load_image(text, on_note)
