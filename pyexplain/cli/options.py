"""Parsing shared by the commands: devices, method options, model loading flags."""
from __future__ import annotations

import ast
from typing import Any

import torch

from ..errors import PyExplainError


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PyExplainError(f"device {device!r} asked for, but no CUDA GPU is available here")
    if device != "cpu" and not device.startswith("cuda"):
        raise PyExplainError(f"unknown device {device!r}; use auto, cpu or cuda")
    return device


def parse_method_options(pairs: list[str]) -> dict[str, Any]:
    """``["steps=20", "layer=features"]`` → ``{"steps": 20, "layer": "features"}`` (Python literals or strings)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise PyExplainError(f"method option {pair!r} is not KEY=VALUE")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        options[key.strip().replace("-", "_")] = value
    return options


def parse_floats(text: str | None, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise PyExplainError(f"{name} must be comma-separated numbers, got {text!r}") from None
    return values
