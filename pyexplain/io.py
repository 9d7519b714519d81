"""Reading images safely and writing outputs atomically."""
from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import PyExplainError

#: Decompression-bomb guard: images with more pixels are refused (override with PYEXPLAIN_MAX_PIXELS).
DEFAULT_MAX_PIXELS = 64_000_000


def max_pixels() -> int:
    value = os.environ.get("PYEXPLAIN_MAX_PIXELS")
    return int(value) if value else DEFAULT_MAX_PIXELS


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
    empty, truncated, corrupt, non-image files, directories and images over :func:`max_pixels`
    raise :class:`PyExplainError` with a one-line message.
    """
    path = Path(path)
    if path.is_dir():
        raise PyExplainError(f"{path}: is a directory, not an image")
    if not path.exists():
        raise PyExplainError(f"{path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PyExplainError(f"{path}: cannot read ({exc.strerror})") from None
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


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path`` and rename it over ``path``.

    Readers never see a partial file; on any error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    return atomic_write(path, write)


def save_png(path: str | os.PathLike, image: Image.Image) -> Path:
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


#: File suffixes taken as images when a folder is searched for images.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
#: Photos bundled with scikit-image, usable as ``builtin:NAME`` wherever an image path is accepted.
BUILTIN_IMAGES = ("chelsea", "coffee", "astronaut", "rocket", "cat", "hubble_deep_field", "immunohistochemistry")


def builtin_image(name: str) -> Image.Image:
    """One of scikit-image's bundled photos (no download) as an RGB image."""
    if name not in BUILTIN_IMAGES:
        raise PyExplainError(f"unknown builtin image {name!r}; available: {', '.join(BUILTIN_IMAGES)}")
    from skimage import data

    return _to_rgb(Image.fromarray(getattr(data, name)()))[0]


def open_image(source: str | os.PathLike, on_note: Callable[[str], None] | None = None) -> Image.Image:
    """``builtin:NAME`` for a bundled photo, else a file path (see :func:`load_image`)."""
    text = str(source)
    if text.startswith("builtin:"):
        return builtin_image(text.split(":", 1)[1])
    return load_image(text, on_note)
