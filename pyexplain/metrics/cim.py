"""Complementary insertion metric, cIM (Ruiz, Agudo, Moreno-Noguer: DMBP, ICCV 2021, §4.1).

For an image holding several classes, explained for target ``t``: insert pixels into the blurred
image *lowest attribution first* (the RISE insertion protocol otherwise) and record the softmax
probability of every *other* true class. The AUC per other class is averaged; a high cIM means the
negative attributions sit on the evidence of the other classes.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..errors import PyExplainError
from ._common import trapezoid_auc
from .insertion import insertion_curve
from .pixel_flipping import Curve


def complementary_insertion(
    model: nn.Module, x: Tensor, attribution: Tensor, targets: Tensor, other_classes: Tensor, *,
    pixels_per_step: int | None = None, batch_size: int = 64,
) -> Curve:
    """cIM of maps explaining ``targets [N]``; ``other_classes [N, M]`` are each image's other true
    classes. ``curve`` is the probability averaged over the ``M`` classes, ``auc`` the mean AUC."""
    if other_classes.ndim != 2 or other_classes.shape[0] != x.shape[0] or other_classes.shape[1] < 1:
        raise PyExplainError(f"other_classes must be [N, M] with M >= 1 for {x.shape[0]} images, got {tuple(other_classes.shape)}")
    if (other_classes == targets.reshape(-1, 1).to(other_classes.device)).any():
        raise PyExplainError("other_classes must not contain the explained target")
    curve, fractions = insertion_curve(model, x, attribution, other_classes, descending=False,
                                       pixels_per_step=pixels_per_step, batch_size=batch_size)
    mean_curve = curve.mean(-1)
    return Curve(mean_curve.cpu(), fractions, trapezoid_auc(mean_curve).cpu(), targets.cpu())
