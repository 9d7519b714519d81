"""An explainer's branch decisions as extra outputs, and its attribution recomputed on given decisions.

The backward pass of a compiled explainer branches on its forward pass at two kinds of step: an
activation's gate ``φ'(f)`` reads the pre-activation ``f`` and a max-pool scatters into its argmax
indices. Another runtime (ONNX Runtime) rounds the forward pass differently and may put a ``f`` that
lies within rounding of a threshold, or a near-tie of pooled values, on the other side. An explainer
written with ``branches=True`` also outputs its pre-activations ``pre_activation_<i>`` and pooling
indices ``pool_indices_<j>``; :func:`attribution_on_branches` then gives torch's attribution on that
runtime's own decisions, which the runtime's attribution must equal to rounding.
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from . import steps as S
from .compiler import CompiledExplainer


def branch_steps(explainer: CompiledExplainer) -> tuple[list[S.Activation], list[S.MaxPool]]:
    """The activation and max-pool steps, in execution order."""
    return ([s for s in explainer.steps if isinstance(s, S.Activation)],
            [s for s in explainer.steps if isinstance(s, S.MaxPool)])


def branch_names(explainer: CompiledExplainer) -> list[str]:
    """Names of the extra outputs: ``pre_activation_<i>`` per activation, ``pool_indices_<j>`` per max-pool."""
    activations, pools = branch_steps(explainer)
    return [f"pre_activation_{i}" for i in range(len(activations))] + [f"pool_indices_{j}" for j in range(len(pools))]


class WithBranches(nn.Module):
    """``forward(x, target) -> (logits, attribution, *pre_activations, *pool_indices)``."""

    def __init__(self, explainer: CompiledExplainer) -> None:
        super().__init__()
        self.explainer = explainer

    def forward(self, x: Tensor, target: Tensor) -> tuple[Tensor, ...]:
        explainer = self.explainer
        values, saved = explainer.run_forward(x)
        activations, pools = branch_steps(explainer)
        attribution = explainer.attribute(x, target, values, saved)
        return (values[explainer.output_node], attribution, *[saved[s.node] for s in activations],
                *[saved[s.node] for s in pools])


def attribution_on_branches(explainer: CompiledExplainer, x: Tensor, target: Tensor, logits: Tensor,
                            branches: Sequence[Tensor]) -> Tensor:
    """The explainer's attribution with its forward pass's branch decisions replaced by ``branches``
    (pre-activations, then pooling indices, as :class:`WithBranches` outputs them) and its top-1 chosen
    from ``logits``; every other value is torch's own forward pass on ``x``."""
    values, saved = explainer.run_forward(x)
    activations, pools = branch_steps(explainer)
    given: dict[str, Any] = dict(saved)
    for step, value in zip([*activations, *pools], branches, strict=True):
        given[step.node] = value.to(saved[step.node].dtype)
    return explainer.attribute(x, target, {**values, explainer.output_node: logits}, given)
