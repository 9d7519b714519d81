"""Canonicalization: rewrite a model into an equivalent form that rules handle more simply.

:func:`fold_batchnorm` merges every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` (and
has no other reader of the convolution's output) into the convolution:
``W' = W · γ/√(var+ε)``, ``b' = (b − μ) · γ/√(var+ε) + β``. The result is a new module; the original
model is left untouched. Only the folded convolutions are new: every other layer of the result *is*
the original's layer (shared, not copied), so folding costs a trace (milliseconds) instead of a
copy of the weights. :class:`BatchNormFold` keeps the trace and recomputes the folded weights on
demand, for callers that fold the same model many times.
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..errors import PyExplainError


def _folded_parameters(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """``(W · γ/√(var+ε), (b − μ) · γ/√(var+ε) + β)`` from the live tensors of ``conv`` and ``bn``."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.detach()
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return conv.weight.detach() * scale.reshape(-1, 1, 1, 1), (bias - bn.running_mean) * scale + shift


def _empty_like_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A Conv2d with ``conv``'s configuration and a bias, its parameters on the meta device (filled by
    :meth:`BatchNormFold.refresh`)."""
    return nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode, device="meta")


class BatchNormFold:
    """``model`` traced once by ``torch.fx``, each Conv2d→BatchNorm2d pair replaced by one new Conv2d.

    :attr:`module` is the folded ``fx.GraphModule``; every unfolded layer in it *is* the model's own.
    :meth:`refresh` recomputes the folded weights from the live Conv/BN tensors, so one fold serves
    every later state of those tensors; a change of the model's structure (modules, their settings
    and train flags, :func:`pyexplain.core.model_state.model_structure`) needs a new fold."""

    def __init__(self, model: nn.Module) -> None:
        try:
            traced = fx.symbolic_trace(model)
        except Exception as exc:  # fx raises many types for untraceable control flow
            raise PyExplainError(f"cannot fold BatchNorm: the model is not traceable by torch.fx ({exc})") from None
        modules = dict(traced.named_modules())
        self._pairs: list[tuple[nn.Conv2d, nn.Conv2d, nn.BatchNorm2d]] = []
        for node in list(traced.graph.nodes):
            if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
                continue
            source = node.args[0]
            if not (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1):
                continue
            conv, bn = modules[source.target], modules[node.target]
            if not isinstance(conv, nn.Conv2d) or bn.training or not bn.track_running_stats:
                continue
            folded = _empty_like_conv(conv)
            self._pairs.append((folded, conv, bn))
            traced.add_submodule(source.target, folded)
            node.replace_all_uses_with(source)
            traced.graph.erase_node(node)
        traced.graph.lint()
        traced.delete_all_unused_submodules()
        traced.recompile()
        self.module: fx.GraphModule = traced
        self.refresh()

    def refresh(self) -> None:
        """Set every folded convolution's weight and bias from its Conv2d and BatchNorm2d as they are now."""
        for folded, conv, bn in self._pairs:
            weight, bias = _folded_parameters(conv, bn)
            folded.weight = nn.Parameter(weight, requires_grad=False)
            folded.bias = nn.Parameter(bias, requires_grad=False)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` as an ``fx.GraphModule`` with each Conv2d→BatchNorm2d pair folded into one new conv;
    all other layers are shared with ``model``. The folded weights are those of the model now."""
    return BatchNormFold(model).module
