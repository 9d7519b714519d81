"""Activation-call interception: every method's single entry point to a model's nonlinearities.

A :class:`torch.overrides.TorchFunctionMode` sees each call of an elementwise nonlinearity made
during a forward pass, whether it comes from a module (``nn.ReLU``, ``nn.SiLU``, ``nn.GELU``, ...,
whose ``forward`` calls the functional form), a module reused several times (ResNet's
``self.relu``, EfficientNet-Lite's per-block ``ReLU6``) or a functional call inside ``forward``
(Inception-v3's ``F.relu(x, inplace=True)``). Three families:

- :data:`PIECEWISE_LINEAR`: ``F.relu``, ``F.relu6``, ``F.hardtanh``, ``F.leaky_relu``,
  ``torch.relu``, ``Tensor.relu`` (and in-place forms);
- :data:`SMOOTH_ACTIVATIONS`: ``F.silu``, ``F.gelu``, ``F.hardswish``, ``F.mish``, ``F.elu``,
  ``F.selu``, ``F.celu``, ``F.softplus`` — activations of the feature path that are not
  piecewise linear;
- :data:`GATES`: ``sigmoid``, ``hardsigmoid`` and ``tanh``, which in image classifiers scale
  another tensor (squeeze-excitation, gated units) rather than transform the features; they are
  not *activation calls* in SPEC §2's sense.

The calls whose kind is in ``kinds`` (default: the piecewise-linear family) become
:class:`ActivationCall` objects numbered in call order, and a *rule* decides what each returns —
usually the activation's value with a replaced backward (see :mod:`pyexplain.core.rules`). The
other nonlinearities run unchanged and are listed in :attr:`ActivationTracker.others` (with the
module that called them), so that a method can refuse a model it has no rule for. Calls nested
inside another intercepted function (e.g. inside ``F.multi_head_attention_forward``) are not seen.

The model itself is never modified. An in-place activation returns the rule's result as a new
tensor (so a tensor captured before the activation keeps its place in the graph) and also writes
the values into its input, unrecorded: code that calls ``x.relu_()`` as a statement and ignores
the result gets the right forward values, but its backward bypasses the rule (all common
architectures use the return value). No hooks are installed: the name of the module running a call
is read off the Python call stack (the innermost ``Module.__call__`` of one of the model's modules).
"""
from __future__ import annotations

import contextlib
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import PyExplainError


PIECEWISE_LINEAR = frozenset({"relu", "hardtanh", "leaky_relu"})
SMOOTH_ACTIVATIONS = frozenset({"silu", "gelu", "hardswish", "mish", "elu", "selu", "celu", "softplus"})
GATES = frozenset({"sigmoid", "hardsigmoid", "tanh"})
#: Every elementwise activation of the feature path (gates excluded).
ACTIVATIONS = PIECEWISE_LINEAR | SMOOTH_ACTIVATIONS

_SMOOTH_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "silu": F.silu, "gelu": F.gelu, "hardswish": F.hardswish, "mish": F.mish, "elu": F.elu, "selu": F.selu,
    "celu": F.celu, "softplus": F.softplus, "sigmoid": torch.sigmoid, "hardsigmoid": F.hardsigmoid,
    "tanh": torch.tanh,
}


@dataclass(frozen=True)
class ActivationCall:
    """One execution of a nonlinearity.

    ``kind`` is ``"relu"``, ``"hardtanh"`` (ReLU6 is ``hardtanh`` with ``low=0, high=6``),
    ``"leaky_relu"``, or one of :data:`SMOOTH_ACTIVATIONS` / :data:`GATES` (their keyword options,
    e.g. GELU's ``approximate``, in ``options``); ``index`` counts calls in execution order from 0
    within one forward pass; ``module_name`` is the innermost named module running when the call
    happened ("" for the root model).
    """

    index: int
    kind: str
    module_name: str
    shape: tuple[int, ...]
    low: float = 0.0
    high: float = float("inf")
    negative_slope: float = 0.0
    options: tuple[tuple[str, object], ...] = ()

    @property
    def spatial(self) -> bool:
        """True for activations of the trunk — feature maps ``[B, C, H, W]`` (or channels-last) and
        token sequences ``[B, T, D]`` — False for the classifier head's ``[B, K]``."""
        return len(self.shape) >= 3

    @property
    def where(self) -> str:
        """The calling module's name, for messages."""
        return self.module_name or "the model's own forward"

    def forward(self, x: Tensor) -> Tensor:
        """The activation's own (out-of-place) value at ``x``."""
        if self.kind == "relu":
            return torch.clamp(x, min=0)
        if self.kind == "hardtanh":
            return torch.clamp(x, self.low, self.high)
        if self.kind == "leaky_relu":
            return torch.where(x > 0, x, x * self.negative_slope)
        return _SMOOTH_FUNCTIONS[self.kind](x, **dict(self.options))

    def derivative(self, x: Tensor) -> Tensor:
        """The activation's derivative at ``x`` (its "gate"): ``1[x>0]``, ``1[low<x<high]``, ``1 / slope``,
        or for smooth kinds ``φ'(x)`` by autograd (detached). The piecewise-linear ones are computed as
        the activation's backward of ones (float kernels only; comparisons producing boolean tensors
        are several times slower on CPU)."""
        if self.kind in PIECEWISE_LINEAR:
            return self.gate(torch.ones_like(x), x)
        with torch.enable_grad():
            t = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.forward(t).sum(), t)
        return grad

    def unsaturated_derivative(self, x: Tensor) -> Tensor:
        """:meth:`derivative` with a clamped activation's upper clamp lifted: ``1[x > low]`` for
        hardtanh/ReLU6 (its saturated inputs pass), the derivative itself for every other kind."""
        if self.kind == "hardtanh":
            return torch.ops.aten.threshold_backward(torch.ones_like(x), x, self.low)
        return self.derivative(x)

    def gate(self, g: Tensor, x: Tensor) -> Tensor:
        """``g ⊙ φ'(x)``: the activation's own backward of ``g`` at ``x`` (one kernel for the
        piecewise-linear kinds)."""
        if self.kind == "relu":
            return torch.ops.aten.threshold_backward(g, x, 0)
        if self.kind == "hardtanh":
            return torch.ops.aten.hardtanh_backward(g, x, self.low, self.high)
        if self.kind == "leaky_relu":
            return torch.ops.aten.leaky_relu_backward(g, x, self.negative_slope, False)
        return g * self.derivative(x)


class ActivationRule(Protocol):
    """Decides what an activation call returns, given the call and its input."""

    def __call__(self, call: ActivationCall, x: Tensor) -> Tensor: ...


def inplace_safe(rule: ActivationRule) -> ActivationRule:
    """Mark ``rule`` as keeping no reference to its input's values for the backward pass (it reads
    them only during the call): an in-place activation then hands it its input without a copy."""
    rule.inplace_safe = True
    return rule


def identity_rule(call: ActivationCall, x: Tensor) -> Tensor:
    """The activation unchanged, with its ordinary gradient."""
    return call.forward(x)


def _flag(args, kwargs, position: int) -> bool:
    """The ``inplace`` argument, given by keyword or at ``position``."""
    return bool(kwargs.get("inplace", args[position] if len(args) > position else False))


def _parse_relu(args, kwargs):
    return args[0], {}, _flag(args, kwargs, 1)


def _parse_hardtanh(args, kwargs):
    low = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
    high = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
    return args[0], {"low": float(low), "high": float(high)}, _flag(args, kwargs, 3)


def _parse_relu6(args, kwargs):
    return args[0], {"low": 0.0, "high": 6.0}, _flag(args, kwargs, 1)


def _parse_leaky(args, kwargs):
    slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
    return args[0], {"negative_slope": float(slope)}, _flag(args, kwargs, 2)


def _parse_options(*names: tuple[str, object], inplace_at: int | None = None):
    """A parser for ``f(input, *options, inplace)``: the options (positional or keyword, with defaults)
    and the ``inplace`` flag at position ``inplace_at`` (None: the function has none)."""
    def parse(args, kwargs):
        options = tuple((name, args[i] if len(args) > i else kwargs.get(name, default))
                        for i, (name, default) in enumerate(names, start=1))
        inplace = _flag(args, kwargs, inplace_at) if inplace_at is not None else False
        return args[0], {"options": options}, inplace

    return parse


def _always_inplace(parse):
    def parse_inplace(args, kwargs):
        x, params, _ = parse(args, kwargs)
        return x, params, True

    return parse_inplace


_ACTIVATION_FUNCTIONS: dict[Callable, tuple[str, Callable]] = {
    F.relu: ("relu", _parse_relu),
    F.relu_: ("relu", _always_inplace(_parse_relu)),
    torch.relu: ("relu", _parse_relu),
    torch.relu_: ("relu", _always_inplace(_parse_relu)),
    torch.Tensor.relu: ("relu", _parse_relu),
    torch.Tensor.relu_: ("relu", _always_inplace(_parse_relu)),
    F.relu6: ("hardtanh", _parse_relu6),
    F.hardtanh: ("hardtanh", _parse_hardtanh),
    F.hardtanh_: ("hardtanh", _always_inplace(_parse_hardtanh)),
    F.leaky_relu: ("leaky_relu", _parse_leaky),
    F.leaky_relu_: ("leaky_relu", _always_inplace(_parse_leaky)),
    F.silu: ("silu", _parse_options(inplace_at=1)),
    F.gelu: ("gelu", _parse_options(("approximate", "none"))),
    F.hardswish: ("hardswish", _parse_options(inplace_at=1)),
    F.mish: ("mish", _parse_options(inplace_at=1)),
    F.elu: ("elu", _parse_options(("alpha", 1.0), inplace_at=2)),
    F.elu_: ("elu", _always_inplace(_parse_options(("alpha", 1.0)))),
    F.selu: ("selu", _parse_options(inplace_at=1)),
    F.selu_: ("selu", _always_inplace(_parse_options())),
    F.celu: ("celu", _parse_options(("alpha", 1.0), inplace_at=2)),
    F.celu_: ("celu", _always_inplace(_parse_options(("alpha", 1.0)))),
    F.softplus: ("softplus", _parse_options(("beta", 1.0), ("threshold", 20.0))),
    torch.sigmoid: ("sigmoid", _parse_options()),
    torch.Tensor.sigmoid: ("sigmoid", _parse_options()),
    F.sigmoid: ("sigmoid", _parse_options()),
    torch.sigmoid_: ("sigmoid", _always_inplace(_parse_options())),
    torch.Tensor.sigmoid_: ("sigmoid", _always_inplace(_parse_options())),
    F.hardsigmoid: ("hardsigmoid", _parse_options(inplace_at=1)),
    torch.tanh: ("tanh", _parse_options()),
    torch.Tensor.tanh: ("tanh", _parse_options()),
    F.tanh: ("tanh", _parse_options()),
    torch.tanh_: ("tanh", _always_inplace(_parse_options())),
    torch.Tensor.tanh_: ("tanh", _always_inplace(_parse_options())),
}


def activation_functions(kinds: frozenset[str]) -> dict[Callable, tuple[str, Callable]]:
    """The functions the interception recognizes as activations of ``kinds``, each with its kind and
    argument parser ``parse(args, kwargs) -> (input, params, inplace)`` (e.g. to take them over in
    ``op_handlers``)."""
    return {func: entry for func, entry in _ACTIVATION_FUNCTIONS.items() if entry[0] in kinds}


#: Extra operations a method may intercept (e.g. max-pooling to freeze its indices).
OpHandler = Callable[[Callable, tuple, dict], Tensor]


class _Interceptor(TorchFunctionMode):
    def __init__(self, tracker: "ActivationTracker") -> None:
        super().__init__()
        self.tracker = tracker

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tracker = self.tracker
        entry = _ACTIVATION_FUNCTIONS.get(func)
        if entry is not None and entry[0] in tracker.kinds:
            kind, parse = entry
            x, params, inplace = parse(args, kwargs)
            call = ActivationCall(
                index=len(tracker.calls), kind=kind, module_name=tracker.current_module(),
                shape=tuple(x.shape), **params,
            )
            tracker.calls.append(call)
            if not inplace:
                return tracker.rule(call, x)
            # In-place form: the rule runs on a copy (on x itself for an inplace_safe rule) and its
            # result is returned (so tensors captured before the activation, e.g. a BN output, keep
            # their place in the graph), and the values are also written into x, unrecorded, so a
            # caller that ignores the return value still sees the activation's values in the
            # forward pass.
            result = tracker.rule(call, x if tracker.rule_inplace_safe else x.clone())
            with torch.no_grad():
                x.copy_(result)
            return result
        handler = tracker.op_handlers.get(func)
        if handler is not None:
            return handler(func, args, kwargs)
        if entry is not None:
            kind, parse = entry
            x, params, _ = parse(args, kwargs)
            tracker.others.append(ActivationCall(index=len(tracker.others), kind=kind,
                                                 module_name=tracker.current_module(), shape=tuple(x.shape), **params))
        return func(*args, **kwargs)


@dataclass
class ActivationTracker:
    """What one forward pass under :func:`intercept_activations` saw: ``calls`` (the nonlinearities of
    the routed ``kinds``, given to the rule) and ``others`` (every other nonlinearity, run unchanged)."""

    rule: ActivationRule
    op_handlers: dict[Callable, OpHandler] = field(default_factory=dict)
    kinds: frozenset[str] = PIECEWISE_LINEAR
    calls: list[ActivationCall] = field(default_factory=list)
    others: list[ActivationCall] = field(default_factory=list)
    module_names: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rule_inplace_safe = getattr(self.rule, "inplace_safe", False)

    def current_module(self) -> str:
        """Name of the innermost of the model's modules whose ``__call__`` is running ("" for the root
        model or outside any)."""
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code is _MODULE_CALL:
                name = self.module_names.get(id(frame.f_locals.get("self")))
                if name is not None:
                    return name
            frame = frame.f_back
        return ""

    @property
    def other_nonlinearities(self) -> Counter:
        """How many calls of each kind ``others`` holds."""
        return Counter(call.kind for call in self.others)

    def first_other(self, allowed: frozenset[str] = frozenset()) -> ActivationCall | None:
        """The first call in ``others`` whose kind is not in ``allowed``."""
        return next((call for call in self.others if call.kind not in allowed), None)


#: The code object every ``nn.Module.__call__`` runs in (once per module call, hooks or not).
_MODULE_CALL = nn.Module._call_impl.__code__


@contextlib.contextmanager
def intercept_activations(
    model: nn.Module,
    rule: ActivationRule = identity_rule,
    op_handlers: dict[Callable, OpHandler] | None = None,
    kinds: frozenset[str] = PIECEWISE_LINEAR,
) -> Iterator[ActivationTracker]:
    """Run forward passes of ``model`` with every activation call of ``kinds`` routed through ``rule``
    (an ``op_handlers`` entry takes a nonlinearity of another kind before it is listed in ``others``).

    Use one context per forward pass (call indices restart at 0 in each)::

        with intercept_activations(model, rule) as tracker:
            logits = model(x)
        tracker.calls  # the ActivationCall list, in call order
    """
    tracker = ActivationTracker(rule=rule, op_handlers=dict(op_handlers or {}), kinds=frozenset(kinds),
                                module_names={id(m): name for name, m in model.named_modules()})
    with _Interceptor(tracker):
        yield tracker


def list_activation_calls(model: nn.Module, x: Tensor, kinds: frozenset[str] = PIECEWISE_LINEAR) -> ActivationTracker:
    """Run one no-grad forward pass and return what it saw (calls of ``kinds`` and other nonlinearities)."""
    with torch.no_grad(), intercept_activations(model, kinds=kinds) as tracker:
        model(x)
    return tracker


def refuse_unsupported(tracker: ActivationTracker, method: str, needs: str,
                       allowed: frozenset[str] = frozenset()) -> None:
    """Raise ``"METHOD NEEDS; found KIND at MODULE"`` for the first nonlinearity in ``tracker.others``
    whose kind is not in ``allowed``."""
    found = tracker.first_other(allowed)
    if found is not None:
        raise PyExplainError(f"{method} {needs}; found {found.kind} at {found.where}")
