"""From a model to the compiler's steps: ``torch.fx`` symbolic trace, static shapes from one
example pass, and one :mod:`~pyexplain.export.steps` module per traced operation.

Only the batch dimension stays dynamic; every other size is fixed by the example input. A traced
operation outside :data:`SUPPORTED` stops the compilation with a one-line error naming it.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.activations import list_activation_calls
from ..errors import PyExplainError
from . import steps as S

#: What the compiler turns into explicit forward and backward ops (the README lists the same).
SUPPORTED = (
    "Conv2d (zero padding), Linear, BatchNorm1d/2d (eval), ReLU/ReLU6/Hardtanh/LeakyReLU (modules, "
    "F.relu/relu6/hardtanh/leaky_relu, torch.relu, Tensor.relu), MaxPool2d, AvgPool2d, AdaptiveAvgPool2d (modules "
    "or F.*), "
    "ZeroPad2d/ConstantPad2d/F.pad(constant), Flatten/torch.flatten/view/reshape (batch kept), Dropout, "
    "Identity, tensor + tensor (residual add), torch.cat"
)

_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU)
_ACTIVATION_FUNCTIONS = {
    F.relu: "relu", F.relu_: "relu", torch.relu: "relu", torch.relu_: "relu",
    F.relu6: "relu6", F.hardtanh: "hardtanh", F.hardtanh_: "hardtanh",
    F.leaky_relu: "leaky_relu", F.leaky_relu_: "leaky_relu",
}
_ACTIVATION_METHODS = {"relu": "relu", "relu_": "relu"}
_RESHAPE_FUNCTIONS = (torch.flatten, torch.reshape)
_RESHAPE_METHODS = ("flatten", "view", "reshape")
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)


@dataclass
class TracedModel:
    """The steps of a model's forward pass, in execution order, and what the compiler needs around them."""

    steps: list[S.Step]
    input_node: str
    output_node: str
    input_shape: tuple[int, ...]
    dtype: torch.dtype
    num_classes: int
    module_stacks: dict[str, tuple[str, ...]]
    values: dict[str, Tensor]


class _Recorder(fx.Interpreter):
    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        self.values[n.name] = value
        return value


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"layer '{node.target}' ({type(modules[node.target]).__name__})"
    stack = node.meta.get("nn_module_stack") or {}
    where = f" in layer '{list(stack.values())[-1][0]}'" if stack else ""
    name = getattr(node.target, "__name__", str(node.target))
    kind = "method" if node.op == "call_method" else "operation"
    return f"{kind} '{name}'{where}"


def unsupported(node: fx.Node, modules: dict[str, nn.Module], why: str = "") -> PyExplainError:
    detail = f" ({why})" if why else ""
    return PyExplainError(f"cannot export {_describe(node, modules)}{detail}; the explainer compiler supports: {SUPPORTED}")


def trace(model: nn.Module) -> fx.GraphModule:
    """An fx trace of ``model`` (sharing its modules; the model is not changed)."""
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for untraceable control flow
        message = " ".join(str(exc).split())[:200]
        raise PyExplainError(f"cannot export: the model is not traceable by torch.fx ({type(exc).__name__}: {message})") from None


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return None if any(t % 2 for t in totals) else (totals[0] // 2, totals[1] // 2)
    return _pair(conv.padding)


def _module_step(node: fx.Node, module: nn.Module, modules, inputs, in_shape, out_shape, index: int,
                 like: Tensor) -> S.Step:
    name = node.name
    if isinstance(module, nn.Conv2d):
        padding = _conv_padding(module)
        if module.padding_mode != "zeros" or padding is None:
            raise unsupported(node, modules, "only zero, symmetric padding")
        return S.Conv(name, inputs, module, padding, in_shape[-2:], out_shape[-2:])
    if isinstance(module, nn.Linear):
        return S.Linear(name, inputs, module)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if module.training or not module.track_running_stats:
            raise unsupported(node, modules, "batch norm must use running statistics")
        return S.BatchNorm(name, inputs, module, len(out_shape) + 1)
    if isinstance(module, _ACTIVATION_MODULES):
        if isinstance(module, nn.LeakyReLU):
            return S.Activation(name, inputs, index, "leaky_relu", negative_slope=float(module.negative_slope))
        if isinstance(module, nn.Hardtanh):  # ReLU6 included
            return S.Activation(name, inputs, index, "hardtanh", float(module.min_val), float(module.max_val))
        return S.Activation(name, inputs, index, "relu")
    if isinstance(module, nn.MaxPool2d):
        if module.return_indices:
            raise unsupported(node, modules, "return_indices=True")
        return S.MaxPool(name, inputs, module.kernel_size, module.stride, module.padding, module.dilation,
                         module.ceil_mode, in_shape)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return _adaptive_pool(name, inputs, in_shape, out_shape, like)
    if isinstance(module, nn.AvgPool2d):
        if module.divisor_override is not None:
            raise unsupported(node, modules, "divisor_override")
        return _avg_pool(name, inputs, module.kernel_size, module.stride, module.padding, module.count_include_pad,
                         in_shape, out_shape, like)
    if isinstance(module, nn.ConstantPad2d):  # ZeroPad2d included
        return _pad(node, modules, inputs, module.padding, float(module.value), in_shape)
    if isinstance(module, nn.Flatten):
        return _reshape(node, modules, inputs, in_shape, out_shape)
    if isinstance(module, (nn.Dropout, nn.Identity)):
        return S.Identity(name, inputs)
    raise unsupported(node, modules)


def _adaptive_pool(name, inputs, in_shape, out_shape, like) -> S.Step:
    (h, w), (oh, ow) = in_shape[-2:], out_shape[-2:]
    return S.AvgPool(name, inputs, S.pool_matrix(h, oh, S.adaptive_windows(h, oh)),
                     S.pool_matrix(w, ow, S.adaptive_windows(w, ow)), like)


def _avg_pool(name, inputs, kernel, stride, padding, count_include_pad, in_shape, out_shape, like) -> S.Step:
    kernel, padding = _pair(kernel), _pair(padding)
    stride = kernel if stride is None or stride == [] else _pair(stride)
    mats = [S.pool_matrix(in_shape[-2 + a], out_shape[-2 + a],
                           S.avg_windows(in_shape[-2 + a], out_shape[-2 + a], kernel[a], stride[a], padding[a],
                                         count_include_pad))
            for a in range(2)]
    return S.AvgPool(name, inputs, *mats, like)


def _pad(node, modules, inputs, pads, value, in_shape) -> S.Step:
    pads = tuple(pads)
    if len(pads) != 4 or min(pads) < 0:
        raise unsupported(node, modules, "only non-negative 2-D padding")
    return S.Pad(node.name, inputs, pads, value, in_shape[-2:])


def _reshape(node, modules, inputs, in_shape, out_shape) -> S.Step:
    return S.Reshape(node.name, inputs, in_shape, out_shape)


def _function_step(node: fx.Node, modules, inputs, in_shapes, out_shape, index: int, like: Tensor) -> S.Step:
    target, name = node.target, node.name
    args, kwargs = node.args, node.kwargs
    kind = _ACTIVATION_FUNCTIONS.get(target) if node.op == "call_function" else _ACTIVATION_METHODS.get(target)
    if kind == "relu":
        return S.Activation(name, inputs, index, "relu")
    if kind == "relu6":
        return S.Activation(name, inputs, index, "hardtanh", 0.0, 6.0)
    if kind == "hardtanh":
        low = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        high = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
        return S.Activation(name, inputs, index, "hardtanh", float(low), float(high))
    if kind == "leaky_relu":
        slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
        return S.Activation(name, inputs, index, "leaky_relu", negative_slope=float(slope))
    is_function = node.op == "call_function"
    if (is_function and target in _RESHAPE_FUNCTIONS) or (not is_function and target in _RESHAPE_METHODS):
        return _reshape(node, modules, inputs, in_shapes[0], out_shape)
    if (is_function and target in _ADD_FUNCTIONS) or (not is_function and target in ("add", "add_", "__add__")):
        if kwargs.get("alpha", 1) != 1:
            raise unsupported(node, modules, "add with alpha")
        constants = [a for a in args if not isinstance(a, fx.Node)]
        if any(not isinstance(c, (int, float)) for c in constants):
            raise unsupported(node, modules)
        if any(tuple(s) != tuple(out_shape) for s in in_shapes):
            raise unsupported(node, modules, "broadcasting add")
        return S.Add(name, inputs, float(sum(constants)))
    if is_function and target is torch.cat:
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        dim = dim % (len(out_shape) + 1)
        if dim == 0:
            raise unsupported(node, modules, "concatenation along the batch")
        return S.Concat(name, inputs, dim, [s[dim - 1] for s in in_shapes])
    if is_function and target is F.dropout:
        return S.Identity(name, inputs)
    if is_function and target is F.pad:
        mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
        value = args[3] if len(args) > 3 else kwargs.get("value", 0.0)
        if mode != "constant":
            raise unsupported(node, modules, f"{mode} padding")
        return _pad(node, modules, inputs, args[1] if len(args) > 1 else kwargs["pad"], float(value or 0.0), in_shapes[0])
    if is_function and target is F.adaptive_avg_pool2d:
        return _adaptive_pool(name, inputs, in_shapes[0], out_shape, like)
    if is_function and target in (F.max_pool2d, F.avg_pool2d):
        return _functional_pool(node, modules, inputs, in_shapes[0], out_shape, like)
    raise unsupported(node, modules)


def _functional_pool(node: fx.Node, modules, inputs, in_shape, out_shape, like: Tensor) -> S.Step:
    """``F.max_pool2d`` / ``F.avg_pool2d`` with their positional or keyword arguments."""
    if node.target is F.max_pool2d:
        names, defaults = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"), (None, None, 0, 1, False, False)
    else:
        names, defaults = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"), (None, None, 0, False, True, None)
    given = dict(zip(names, node.args[1:]))
    given.update({k: v for k, v in node.kwargs.items() if k in names})
    a = {name: given.get(name, default) for name, default in zip(names, defaults)}
    stride = a["stride"] if a["stride"] not in (None, []) else a["kernel_size"]
    if node.target is F.max_pool2d:
        if a["return_indices"]:
            raise unsupported(node, modules, "return_indices=True")
        return S.MaxPool(node.name, inputs, a["kernel_size"], stride, a["padding"], a["dilation"], a["ceil_mode"], in_shape)
    if a["divisor_override"] is not None:
        raise unsupported(node, modules, "divisor_override")
    return _avg_pool(node.name, inputs, a["kernel_size"], stride, a["padding"], a["count_include_pad"], in_shape,
                     out_shape, like)


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
    return found


def build(model: nn.Module, example: Tensor) -> TracedModel:
    """Trace ``model`` and convert each operation into a step, with shapes from ``example`` ``[B, C, H, W]``
    (B ≥ 2, so that an operation mixing the batch is caught)."""
    batch = example.shape[0]
    gm = trace(model)
    modules = dict(gm.named_modules())
    recorder = _Recorder(gm)
    with torch.no_grad():
        recorder.run(example)
    values = recorder.values
    is_tensor = {name: isinstance(v, Tensor) for name, v in values.items()}
    steps: list[S.Step] = []
    input_node = output_node = None
    activations = 0
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if input_node is not None:
                raise PyExplainError("cannot export: the model takes more than one input")
            input_node = node.name
            continue
        if node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node) or not is_tensor.get(out.name):
                raise PyExplainError("cannot export: the model must return one logits tensor [B, K]")
            output_node = out.name
            continue
        if not is_tensor[node.name]:
            continue  # shape arithmetic (x.size(0) ...): every size but the batch is static here
        if node.op == "get_attr":
            raise unsupported(node, modules, "a parameter used outside its module")
        if values[node.name].shape[0] != batch:
            raise unsupported(node, modules, "changes the batch dimension")
        args = [n for n in _tensor_inputs(node) if is_tensor[n.name]]
        inputs = [n.name for n in args]
        in_shapes = [tuple(values[n].shape[1:]) for n in inputs]
        out_shape = tuple(values[node.name].shape[1:])
        if node.op == "call_module":
            step = _module_step(node, modules[node.target], modules, inputs, in_shapes[0], out_shape, activations, example)
        else:
            step = _function_step(node, modules, inputs, in_shapes, out_shape, activations, example)
        activations += isinstance(step, S.Activation)
        steps.append(step)
    logits = values[output_node]
    if logits.ndim != 2:
        raise PyExplainError(f"cannot export: the model returns shape {tuple(logits.shape)}, not logits [B, K]")
    _check_activation_order(model, example, [s for s in steps if isinstance(s, S.Activation)], values)
    stacks = {n.name: tuple(v[0] for v in (n.meta.get("nn_module_stack") or {}).values()) for n in gm.graph.nodes}
    return TracedModel(steps, input_node, output_node, tuple(example.shape[1:]), example.dtype, logits.shape[1], stacks,
                       values)


def _check_activation_order(model: nn.Module, example: Tensor, acts: list[S.Activation], values) -> None:
    """The traced activations must be the eager activation calls, one for one, in call order
    (per-call rules are indexed by it)."""
    calls = list_activation_calls(model, example[:1]).calls
    traced = [(a.kind, tuple(values[a.inputs[0]].shape[1:])) for a in acts]
    eager = [(c.kind, c.shape[1:]) for c in calls]
    if traced != eager:
        raise PyExplainError(
            f"cannot export: the traced graph has {len(traced)} activation calls but the eager forward makes "
            f"{len(eager)} (or in another order)")
