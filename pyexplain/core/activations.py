"""Activation-call interception: every method's single entry point to a model's nonlinearities.

A :class:`torch.overrides.TorchFunctionMode` sees each call of ``F.relu``, ``F.relu6``,
``F.hardtanh``, ``F.leaky_relu``, ``torch.relu`` and ``Tensor.relu`` (and their in-place forms)
made during a forward pass, whether it comes from an ``nn.ReLU``/``nn.ReLU6`` module, a module
reused several times (ResNet's ``self.relu``, EfficientNet-Lite's per-block ``ReLU6``) or a
functional call inside ``forward`` (Inception-v3's ``F.relu(x, inplace=True)``). Each call becomes
an :class:`ActivationCall` numbered in call order, and a *rule* decides what the call returns —
usually the activation's value with a replaced backward (see :mod:`pyexplain.core.rules`).

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


@dataclass(frozen=True)
class ActivationCall:
    """One execution of a nonlinearity.

    ``kind`` is ``"relu"``, ``"hardtanh"`` (ReLU6 is ``hardtanh`` with ``low=0, high=6``) or
    ``"leaky_relu"``; ``index`` counts calls in execution order from 0 within one forward pass;
    ``module_name`` is the innermost named module running when the call happened ("" for the
    root model).
    """

    index: int
    kind: str
    module_name: str
    shape: tuple[int, ...]
    low: float = 0.0
    high: float = float("inf")
    negative_slope: float = 0.0

    @property
    def spatial(self) -> bool:
        """True for activations of the convolutional trunk (``[B, C, H, W]``), False for the head."""
        return len(self.shape) == 4

    def forward(self, x: Tensor) -> Tensor:
        """The activation's own (out-of-place) value at ``x``."""
        if self.kind == "relu":
            return torch.clamp(x, min=0)
        if self.kind == "hardtanh":
            return torch.clamp(x, self.low, self.high)
        return torch.where(x > 0, x, x * self.negative_slope)

    def derivative(self, x: Tensor) -> Tensor:
        """The activation's derivative at ``x`` (its "gate"): ``1[x>0]``, ``1[low<x<high]`` or ``1 / slope``.

        Computed as the activation's backward of ones (float kernels only; comparisons producing
        boolean tensors are several times slower on CPU)."""
        return self.gate(torch.ones_like(x), x)

    def gate(self, g: Tensor, x: Tensor) -> Tensor:
        """``g ⊙ φ'(x)``: the activation's own backward of ``g`` at ``x``, in one kernel."""
        if self.kind == "relu":
            return torch.ops.aten.threshold_backward(g, x, 0)
        if self.kind == "hardtanh":
            return torch.ops.aten.hardtanh_backward(g, x, self.low, self.high)
        return torch.ops.aten.leaky_relu_backward(g, x, self.negative_slope, False)


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
}

#: Nonlinearities that are not piecewise linear: seen and reported, never replaced.
_OTHER_NONLINEARITIES: dict[Callable, str] = {
    F.silu: "silu",
    F.gelu: "gelu",
    F.elu: "elu",
    F.selu: "selu",
    F.mish: "mish",
    F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid",
    F.softplus: "softplus",
    torch.sigmoid: "sigmoid",
    torch.Tensor.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    torch.tanh: "tanh",
    torch.Tensor.tanh: "tanh",
    F.tanh: "tanh",
}

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
        if entry is not None:
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
        other = _OTHER_NONLINEARITIES.get(func)
        if other is not None:
            tracker.other_nonlinearities[other] += 1
        return func(*args, **kwargs)


@dataclass
class ActivationTracker:
    """What one forward pass under :func:`intercept_activations` saw."""

    rule: ActivationRule
    op_handlers: dict[Callable, OpHandler] = field(default_factory=dict)
    calls: list[ActivationCall] = field(default_factory=list)
    other_nonlinearities: Counter = field(default_factory=Counter)
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


#: The code object every ``nn.Module.__call__`` runs in (once per module call, hooks or not).
_MODULE_CALL = nn.Module._call_impl.__code__


@contextlib.contextmanager
def intercept_activations(
    model: nn.Module,
    rule: ActivationRule = identity_rule,
    op_handlers: dict[Callable, OpHandler] | None = None,
) -> Iterator[ActivationTracker]:
    """Run forward passes of ``model`` with every activation call routed through ``rule``.

    Use one context per forward pass (call indices restart at 0 in each)::

        with intercept_activations(model, rule) as tracker:
            logits = model(x)
        tracker.calls  # the ActivationCall list, in call order
    """
    tracker = ActivationTracker(rule=rule, op_handlers=dict(op_handlers or {}),
                                module_names={id(m): name for name, m in model.named_modules()})
    with _Interceptor(tracker):
        yield tracker


def list_activation_calls(model: nn.Module, x: Tensor) -> ActivationTracker:
    """Run one no-grad forward pass and return what it saw (calls and other nonlinearities)."""
    with torch.no_grad(), intercept_activations(model) as tracker:
        model(x)
    return tracker
