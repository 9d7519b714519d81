"""Canonicalization: rewrite a model into an equivalent form that rules handle more simply.

:func:`fold_batchnorm` merges every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` (and
has no other reader of the convolution's output) into the convolution:
``W' = W · γ/√(var+ε)``, ``b' = (b − μ) · γ/√(var+ε) + β``. The result is a new module; the original
model is left untouched. Only the folded convolutions are new: every other layer of the result *is*
the original's layer (shared, not copied), so folding costs a trace (milliseconds) instead of a
copy of the weights, and the result must be rebuilt whenever a folded Conv2d/BatchNorm2d changes.
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from ..errors import PyExplainError


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d (the original's configuration, no copy of its weights) computing ``bn(conv(x))``."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=False, padding_mode=conv.padding_mode, device="meta")
    folded.weight = nn.Parameter(conv.weight.detach() * scale.reshape(-1, 1, 1, 1))
    folded.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)
    return folded


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` as an ``fx.GraphModule`` with each Conv2d→BatchNorm2d pair folded into one new conv;
    all other layers are shared with ``model``."""
    try:
        traced = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for untraceable control flow
        raise PyExplainError(f"cannot fold BatchNorm: the model is not traceable by torch.fx ({exc})") from None
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source = node.args[0]
        if not (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        conv = modules[source.target]
        if not isinstance(conv, nn.Conv2d):
            continue
        bn = modules[node.target]
        if bn.training or not bn.track_running_stats:
            continue
        traced.add_submodule(source.target, _fold_into(conv, bn))
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced
