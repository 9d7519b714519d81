"""``python -m pyexplain.data.ship_weights``: retrain the small models (seed 0) with the project's own
recipes and write them to ``pyexplain/data/weights/``; prints the SHA-256 table to paste into
:data:`pyexplain.data.cache.SHIPPED_SHA256`. The files it replaces are what every machine uses, so
every figure computed on the small models changes with them."""
from __future__ import annotations

import hashlib
import io

import torch

from ..io import atomic_write
from . import SMALL_MODELS
from .cache import SHIPPED_DIR
from .small_models import trained_small_model


def main() -> None:
    for name in SMALL_MODELS:
        model, _, file = trained_small_model(name, seed=0, retrain=True)
        buffer = io.BytesIO()  # saved in memory, so the archive is not named after atomic_write's temporary file
        torch.save(model.state_dict(), buffer)
        atomic_write(SHIPPED_DIR / file, lambda tmp: tmp.write_bytes(buffer.getvalue()))
        print(f'    "{file}": "{hashlib.sha256(buffer.getvalue()).hexdigest()}",', flush=True)


if __name__ == "__main__":
    main()
