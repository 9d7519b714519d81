"""What a dataset run computes: the model, the method and its options, the target, the precision.

Two runs may share an output folder only when their :class:`RunConfig` digests are equal; the
digest is stored in ``OUT/.pyexplain/run.json`` and in every manifest record.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..errors import PyExplainError
from ..models import Preprocess, load_model
from ..method_options import check_options
from ..registry import get_method
from .sources import file_sha256

PRECISIONS = ("float32", "tf32", "bfloat16")


def canonical(value: Any) -> Any:
    """``value`` as plain JSON data (tuples → lists, anything else → its ``str``)."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


@dataclass(frozen=True)
class ModelSpec:
    """How to load the model (the same flags as ``pyexplain explain``)."""

    name: str
    weights: str | None = None
    random_weights: bool = False
    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    labels: tuple[str, ...] | None = None

    def load(self, device: str) -> tuple[nn.Module, Preprocess]:
        return load_model(self.name, self.weights, device, random_weights=self.random_weights,
                          input_size=self.input_size, mean=self.mean, std=self.std, labels=self.labels)

    def identity(self) -> dict[str, Any]:
        """The spec with the weights file replaced by its content hash (its path may differ between nodes)."""
        data = asdict(self)
        weights = data.pop("weights")
        data["weights_sha256"] = file_sha256(weights) if weights else None
        data["labels_sha256"] = hashlib.sha256("\n".join(self.labels).encode()).hexdigest() if self.labels else None
        del data["labels"]
        return canonical(data)


@dataclass(frozen=True)
class RunConfig:
    model: dict[str, Any]
    method: str
    options: dict[str, Any]
    target: int | None
    precision: str = "float32"
    seed: int = 0

    def as_json(self) -> dict[str, Any]:
        return canonical(asdict(self))

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_json(), sort_keys=True).encode()).hexdigest()[:16]


def resolve_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The method's defaults updated with ``options``; unknown options and bad values are an error
    (:func:`pyexplain.method_options.check_options`)."""
    info = get_method(method)
    return {**info.defaults, **check_options(info, options)}


def check_precision(precision: str, device: str) -> str:
    """``precision`` if it is known and exists on ``device`` (TensorFloat-32 is a CUDA-only format)."""
    if precision not in PRECISIONS:
        raise PyExplainError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision == "tf32" and not device.startswith("cuda"):
        raise PyExplainError("--precision tf32 needs a CUDA device (TensorFloat-32 exists on NVIDIA GPUs only); "
                             "on the CPU use float32 or bfloat16")
    return precision


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``"method: 'a' → 'b'; options: ..."`` for the keys whose values differ."""
    keys = sorted(set(old) | set(new))
    parts = [f"{k}: {json.dumps(old.get(k))} → {json.dumps(new.get(k))}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(parts)[:400] or "same settings, different digest"
