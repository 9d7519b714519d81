"""ε-LRP: layer-wise relevance propagation with the epsilon rule.

Relevance travels backwards through autograd in place of the gradient; each layer type has one rule:

- convolutions, linear layers (BatchNorm folded into the preceding convolution first), BatchNorm
  left unfolded, average pooling (``avg_pool``, ``adaptive_avg_pool``): the ε-rule
  ``R_j = x_j Σ_k w_jk R_k / (z_k + ε·sign(z_k))`` with ``z_k = Σ_j x_j w_jk + b_k``
  (``sign(0) = +1``; for pooling ``w_jk`` are the pooling weights and ``b = 0``);
- ReLU-family activations and the self-gated ``φ(f) = f·g(f)`` ones (SiLU, GELU, Hardswish, Mish)
  and ELU/SELU/CELU/softplus: pass-through (``R_in = R_out``), as Zennit's ``Pass`` rule;
- sums of two tensors of the same shape (residual adds): ``R_a = a/(z + ε·sign z)·R_z`` and
  ``R_b = b/(z + ε·sign z)·R_z``, split in proportion to the summands;
- max pooling: winner takes all (the relevance of each window goes to its maximum);
- everything else (padding, flatten, reshape, concatenation, dropout in eval): its own
  vector-Jacobian product, which moves relevance without changing it.

Refused, with a one-line error naming the function and its module: sigmoid/hard-sigmoid/tanh gates
(squeeze-excitation: the product of two activations has no ε-rule), layer/group norm, softmax and
attention (their LRP rules, e.g. AttnLRP, are not implemented here).

The output relevance is the target's logit ``z_t`` (``z ⊙ ∂score/∂z`` for other scores), so
``ΣA ≈ z_t`` minus what the biases absorb.
"""
from __future__ import annotations

import weakref
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..core import canonize
from ..core.activations import ACTIVATIONS, ActivationCall, intercept_activations, refuse_unsupported
from ..core.model_state import model_structure
from ..core.rules import replace_backward
from ..core.targets import Targets
from ..errors import PyExplainError
from ..registry import register_method
from ._perturb import check_positive

class _EpsilonRule(torch.autograd.Function):
    """``fn`` (affine in ``x``) in the forward pass; the ε-rule ``x ⊙ Jᵀ(R / (z + ε·s(z)))`` backwards."""

    @staticmethod
    def forward(ctx, x: Tensor, fn: Callable[[Tensor], Tensor], epsilon: float) -> Tensor:
        with torch.enable_grad():
            ctx.x = x.detach().requires_grad_(True)
            ctx.z = fn(ctx.x)
        ctx.epsilon = epsilon
        # A copy of z, kept apart from the returned output, which a later in-place operation may overwrite.
        ctx.z_value = ctx.z.detach().clone()
        return ctx.z.detach()

    @staticmethod
    def backward(ctx, relevance: Tensor):
        ratio = ops.epsilon_divide(relevance.contiguous(), ctx.z_value, ctx.epsilon)
        (contribution,) = torch.autograd.grad(ctx.z, ctx.x, ratio)
        return ctx.x.detach() * contribution, None, None


class _ProportionalSum(torch.autograd.Function):
    """``a + b`` whose backward splits the relevance of the sum in proportion to ``a`` and ``b``."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, epsilon: float) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.epsilon = epsilon
        return a + b

    @staticmethod
    def backward(ctx, relevance: Tensor):
        a, b = ctx.saved_tensors
        share_a, share_b = ops.proportional_split(relevance.contiguous(), a.contiguous(), b.contiguous(), ctx.epsilon)
        return share_a, share_b, None


def _carries_relevance(t: object) -> bool:
    return isinstance(t, Tensor) and t.requires_grad and torch.is_grad_enabled()


#: Operations without an ε-LRP rule here: refused, never given their gradient.
_NO_RULE = {F.layer_norm: "layer_norm", F.group_norm: "group_norm", F.softmax: "softmax", torch.softmax: "softmax",
            Tensor.softmax: "softmax", F.scaled_dot_product_attention: "scaled_dot_product_attention",
            F.multi_head_attention_forward: "multi_head_attention"}
_NEEDS = "has rules for conv/linear/BN/pooling, residual sums and elementwise activations only"


def _handlers(epsilon: float, where=lambda: "") -> dict:
    def epsilon_rule(func, args, kwargs):
        x = args[0]
        if not _carries_relevance(x):
            return func(*args, **kwargs)
        return _EpsilonRule.apply(x, lambda t: func(t, *args[1:], **kwargs), epsilon)

    def residual_sum(func, args, kwargs):
        a, b = (args + (None, None))[:2]
        if not (kwargs.get("alpha", 1) == 1 and _carries_relevance(a) and _carries_relevance(b)
                and a.shape == b.shape):
            return func(*args, **kwargs)
        if func is Tensor.add_:  # ``a += b`` keeps its in-place semantics
            return a.copy_(_ProportionalSum.apply(a.clone(), b, epsilon))
        return _ProportionalSum.apply(a, b, epsilon)

    linear_ops = (F.conv1d, F.conv2d, F.conv3d, F.linear, F.batch_norm, F.avg_pool1d, F.avg_pool2d,
                  F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
    sums = (torch.add, Tensor.add, Tensor.add_)  # ``a + b`` and ``a += b`` arrive as Tensor.add(_)

    def refuse(func, args, kwargs):
        module = where() or "the model's own forward"
        raise PyExplainError(f"lrp_epsilon {_NEEDS}; found {_NO_RULE[func]} at {module}")

    return {**{op: epsilon_rule for op in linear_ops}, **{op: residual_sum for op in sums},
            **{op: refuse for op in _NO_RULE}}


def pass_through_rule(call: ActivationCall, x: Tensor) -> Tensor:
    """The activation's value, with relevance passed through unchanged: ``R_in = R_out``."""
    return replace_backward(call, x, lambda r: r)


#: Each model's BatchNorm fold, with the :func:`model_structure` it was traced for.
_FOLDS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, canonize.BatchNormFold]]" = weakref.WeakKeyDictionary()


def folded(model: nn.Module) -> nn.Module:
    """``model`` with BatchNorm folded into the preceding convolutions.

    The trace is kept per model and reused while :func:`model_structure` (modules, their settings and
    train flags, which tensors they hold) is unchanged; the folded weights are recomputed from the
    live Conv/BN tensors on every call, so no edit of a weight or running statistic can leave a stale
    fold. The kept fold holds one copy of the folded convolutions' weights while the model lives."""
    key = model_structure(model)
    cached = _FOLDS.get(model)
    if cached is not None and cached[0] == key:
        cached[1].refresh()
        return cached[1].module
    try:
        fold = canonize.BatchNormFold(model)
    except PyExplainError as exc:
        raise PyExplainError(
            f"{exc}; pass fold_batchnorm=False to apply the ε-rule to BatchNorm as its own layer") from None
    _FOLDS[model] = (key, fold)
    return fold.module


@register_method(
    "lrp_epsilon",
    description="layer-wise relevance propagation: ε-rule on conv/linear (BatchNorm folded), proportional residual sums",
    paper="Bach et al.: On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise Relevance "
          "Propagation (PLoS ONE 2015)",
    cost="1 forward + 1 backward",
)
def lrp_epsilon(
    model: nn.Module, x: Tensor, targets: Targets, *, epsilon: float = 1e-6, fold_batchnorm: bool = True,
) -> Tensor:
    """Relevance ``R`` at the input: ``R_out = z_t`` at the target logit, propagated with the rules
    listed in :mod:`pyexplain.methods.lrp` (ε-rule ``R_j = x_j Σ_k w_jk R_k / (z_k + ε·sign z_k)``)."""
    check_positive("epsilon", epsilon)
    net = folded(model) if fold_batchnorm else model
    inputs = x.detach().requires_grad_(True)
    with torch.enable_grad():
        holder: dict = {}
        handlers = _handlers(epsilon, lambda: holder["tracker"].current_module())
        with intercept_activations(net, pass_through_rule, handlers, kinds=ACTIVATIONS) as tracker:
            holder["tracker"] = tracker
            logits = net(inputs)
        refuse_unsupported(tracker, "lrp_epsilon", f"{_NEEDS} (a sigmoid/tanh gate multiplies two activations)")
        targets.resolve(logits)
        probe = logits.detach().requires_grad_(True)
        (seed,) = torch.autograd.grad(targets.scores(probe).sum(), probe)
        (relevance,) = torch.autograd.grad(logits, inputs, seed * logits.detach())
    return relevance
