"""A model's logits, whatever its ``forward`` returns: a tensor, a tuple or list (its first
element), a mapping with ``"logits"`` (e.g. Hugging Face outputs), or an object with a ``.logits``
tensor; or what a user's ``output=`` callable selects. :class:`LogitsModel` makes any such model
one that returns the logits tensor, so every method sees a plain classifier."""
from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from ..errors import PyExplainError

#: Selects the ``[N, K]`` logits from what the model returned.
OutputSelector = Callable[[Any], Tensor]
#: Tensors, and torch.fx's stand-ins for them (BatchNorm folding traces the model).
_TENSORS = (Tensor, torch.fx.Proxy)


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {', '.join(map(repr, list(value)[:6]))}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(type(v).__name__ for v in value[:4])})"
    return f"a {type(value).__name__}"


def select_logits(output: Any) -> Tensor:
    """The logits tensor in ``output`` (see the module docstring), else a one-line error."""
    if isinstance(output, _TENSORS):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("logits"), _TENSORS):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], _TENSORS):
        return output[0]
    if isinstance(getattr(output, "logits", None), _TENSORS):
        return output.logits
    raise PyExplainError(f"the model returned {_describe(output)}, not logits; pass output=callable that selects "
                         f"the [batch, classes] logits from it")


class LogitsModel(nn.Module):
    """``model`` whose ``forward`` returns ``select(model(x))``. Its modules, parameters and layer
    names are the wrapped model's (``"layer4"``, not ``"model.layer4"``), so layer options, hooks
    and activation interception address the user's model as written."""

    def __init__(self, model: nn.Module, select: OutputSelector) -> None:
        super().__init__()
        self.model = model
        self.select = select

    def forward(self, x: Tensor) -> Tensor:
        logits = self.select(self.model(x))
        if not isinstance(logits, _TENSORS):
            raise PyExplainError(f"output= returned {_describe(logits)}, not the logits tensor")
        return logits

    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Module]]:
        return self.model.named_modules(memo, prefix, remove_duplicate)

    def get_submodule(self, target: str) -> nn.Module:
        return self.model.get_submodule(target)

    def __getattr__(self, name: str) -> Any:
        """The wrapped model's attributes by their own names (``get_submodule("layer4")``, torch.fx)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)


_RETURNS_TENSOR: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def logits_model(model: nn.Module, x: Tensor, output: OutputSelector | None = None) -> nn.Module:
    """``model`` itself when it returns a logits tensor ``[N, K]``, else a :class:`LogitsModel`
    (``output`` given, or the model returns a tuple, mapping or object with logits). What it
    returns is learned with one no-grad forward pass on ``x[:1]``, once per model."""
    if output is not None:
        return LogitsModel(model, output)
    if model not in _RETURNS_TENSOR:
        with torch.no_grad():
            returned = model(x[:1])
        logits = select_logits(returned)
        if logits.ndim != 2:
            raise PyExplainError(f"the model's logits have shape {tuple(logits.shape)}; expected [batch, classes]")
        _RETURNS_TENSOR[model] = isinstance(returned, Tensor)
    return model if _RETURNS_TENSOR[model] else LogitsModel(model, select_logits)
