"""A key that changes whenever a model does, for caches of work derived from the model.

DeepLIFT reuses a constant reference's forward pass and ε-LRP reuses its BatchNorm-folded graph while
:func:`model_state` is unchanged. The key covers what either can depend on:

- every module: its name, identity, type, train flag and every other attribute of its own (``eps``,
  ``stride``, ``inplace``, ``negative_slope``, a user's flag that steers ``forward``, a replaced
  ``forward`` method): plain values by value, other objects by identity;
- every parameter and buffer: identity, version counter, storage, dtype, device, shape and two
  sums of its values, so ``load_state_dict``, in-place edits with or without ``torch.no_grad()``,
  writes into and assignments to ``p.data`` all change the key.

Not covered: a class whose code is redefined after the model was built, and objects mutated in place
that are neither modules nor tensors (a list attribute edited in place).
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor, nn

from .. import ops

#: Attributes every ``nn.Module`` has (parameter/buffer/submodule tables, hook tables, the train flag).
_MODULE_INTERNALS = frozenset(nn.Module().__dict__)
_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


def tensor_state(t: Tensor, checksums: tuple[float, float] | None = None) -> tuple:
    """Identity, version counter, storage, dtype, device, shape and the two sums of ``t``'s values
    (:func:`pyexplain.ops.checksums`: ``Σᵢ tᵢ`` and ``Σᵢ (i + 1)·tᵢ``, which change with any edit of the values,
    including writes that bypass autograd's version counter); pass ``checksums`` when already computed."""
    if checksums is None:
        checksums = ops.checksums([t])[0]
    return id(t), t._version, t.data_ptr(), t.dtype, t.device, tuple(t.shape), checksums


def _value_key(value: Any) -> Any:
    """``value`` itself when it is a plain value (NaN as a string, so the key still equals itself),
    containers element by element, tensors by :func:`tensor_state`, anything else by type and identity."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (tuple, list)):
        return type(value), tuple(_value_key(v) for v in value)
    if isinstance(value, dict):
        return dict, tuple((repr(k), _value_key(v)) for k, v in value.items())
    if isinstance(value, Tensor):
        return tensor_state(value)
    return type(value), id(value)


def module_settings(module: nn.Module) -> tuple:
    """The module's own attributes beyond what every ``nn.Module`` has, as ``(name, key)`` pairs."""
    return tuple((name, _value_key(value)) for name, value in module.__dict__.items() if name not in _MODULE_INTERNALS)


def _model_tensors(model: nn.Module) -> tuple[list[tuple], list[tuple[str, Tensor]]]:
    """One walk over ``model``: each module's ``(name, id, type, train flag, settings)`` and each of its
    parameters and buffers once, with its qualified name."""
    modules, tensors, seen = [], [], set()
    for name, m in model.named_modules():
        modules.append((name, id(m), type(m), m.training, module_settings(m)))
        for tensor_name, t in itertools.chain(m._parameters.items(), m._buffers.items()):
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                tensors.append((f"{name}.{tensor_name}" if name else tensor_name, t))
    return modules, tensors


def model_structure(model: nn.Module) -> tuple:
    """What a graph traced from ``model`` depends on besides tensor values: every module's name,
    identity, type, train flag and :func:`module_settings`, and which parameter and buffer objects
    it holds (names and identities; their values are read live)."""
    modules, tensors = _model_tensors(model)
    return tuple(modules), tuple((name, id(t)) for name, t in tensors)


def model_state(model: nn.Module) -> tuple:
    """The key described in the module docstring: :func:`model_structure` and every parameter's and
    buffer's :func:`tensor_state`, the value sums in one fused call over all of them."""
    modules, tensors = _model_tensors(model)
    sums = ops.checksums([t for _, t in tensors])
    structure = tuple(modules), tuple((name, id(t)) for name, t in tensors)
    return structure, tuple(tensor_state(t, pair) for (_, t), pair in zip(tensors, sums))
