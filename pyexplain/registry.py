"""The method registry: each method module registers its function with a description, its paper
and its cost, and :func:`pyexplain.explain` dispatches on the name.

:func:`describe_methods` and :func:`check_method_names` answer from the static catalogue
(:mod:`pyexplain.method_catalog`) without importing any method, torch or torchvision."""
from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, NamedTuple, Union

from .errors import PyExplainError
from .method_catalog import METHODS, MethodEntry

if TYPE_CHECKING:
    from torch import Tensor


class MethodResult(NamedTuple):
    """What a method returns when it has more than the attribution: per-row extra tensors."""

    attribution: Tensor
    extras: dict[str, Tensor]


#: What a method's map holds: ``signed`` (evidence for and against the target, drawn on a diverging
#: scale centred at zero) or ``nonnegative`` (relevance only, drawn on a sequential scale).
MapSign = Literal["signed", "nonnegative"]
#: A method's map sign, fixed or a function of its options (e.g. saliency's ``absolute``).
SignDeclaration = Union[MapSign, Callable[[dict[str, Any]], MapSign]]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    fn: Callable[..., Tensor | MethodResult]
    description: str
    paper: str
    cost: str
    iterative: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    sign: SignDeclaration = "signed"

    def map_sign(self, options: dict[str, Any] | None = None) -> MapSign:
        """The sign of the map this method gives with ``options`` (defaults filled in)."""
        return self.sign({**self.defaults, **(options or {})}) if callable(self.sign) else self.sign


_METHODS: dict[str, MethodInfo] = {}


def register_method(name: str, *, description: str, paper: str, cost: str, iterative: bool = False,
                    sign: SignDeclaration = "signed"):
    """Decorator registering ``fn(model, x, targets, **options)`` as method ``name``.

    ``targets`` is a :class:`pyexplain.core.targets.Targets`; iterative methods also receive
    ``progress: bool``. The keyword-only parameters of ``fn`` are the method's options, and their
    defaults are its documented defaults. ``sign`` declares what the map holds (see :data:`MapSign`),
    fixed or as a function of the options.
    """

    def decorate(fn):
        params = inspect.signature(fn).parameters.values()
        defaults = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name != "progress"}
        _METHODS[name] = MethodInfo(name, fn, description, paper, cost, iterative, defaults, sign)
        return fn

    return decorate


def _load_all() -> None:
    from . import methods

    for module in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"{methods.__name__}.{module.name}")


def get_method(name: str) -> MethodInfo:
    _load_all()
    if name not in _METHODS:
        raise PyExplainError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def list_methods() -> list[MethodInfo]:
    _load_all()
    return [_METHODS[n] for n in sorted(_METHODS)]


def describe_methods() -> list[MethodEntry]:
    """Every method's name, description, paper, cost and option defaults, sorted by name (no method imported)."""
    return [METHODS[name] for name in sorted(METHODS)]


def check_method_names(names: Iterable[str]) -> None:
    """Raise :class:`PyExplainError` for the first name that is not a method, naming the closest ones."""
    for name in names:
        if name not in METHODS:
            close = difflib.get_close_matches(name, list(METHODS), n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise PyExplainError(f"unknown method {name!r}; {hint}available: {', '.join(sorted(METHODS))}")
