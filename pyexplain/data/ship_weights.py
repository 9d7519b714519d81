"""``python -m pyexplain.data.ship_weights``: retrain the small models (seed 0) with the project's own
recipes and write them to ``pyexplain/data/weights/``; prints the SHA-256 table to paste into
:data:`pyexplain.data.cache.SHIPPED_SHA256`. The files it replaces are what every machine uses, so
every figure computed on the small models changes with them."""
from __future__ import annotations

import hashlib

import torch

from ..io import atomic_write
from .cache import SHIPPED_DIR, detached_copy, weights_name
from .digits import VERSION as DIGITS_VERSION, digits_splits, train_digits_cnn
from .synthetic_models import ARCHITECTURES, VERSION as SYNTHETIC_VERSION, synthetic_train_set, train_synthetic_model


def main() -> None:
    trained = {weights_name("digits_cnn", DIGITS_VERSION, 0): lambda: train_digits_cnn(digits_splits(0)[0], 0)}
    for name in ARCHITECTURES:
        trained[weights_name(name, SYNTHETIC_VERSION, 0)] = lambda name=name: train_synthetic_model(name, synthetic_train_set(0), 0)
    for file, train in trained.items():
        state = detached_copy(train().state_dict())
        path = atomic_write(SHIPPED_DIR / file, lambda tmp: torch.save(state, tmp))
        print(f'    "{file}": "{hashlib.sha256(path.read_bytes()).hexdigest()}",', flush=True)


if __name__ == "__main__":
    main()
