"""The result of every method."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class Explanation:
    """Attributions for a batch of rows (one row per image and target).

    - ``attribution``: ``[N, C, H, W]``, positive = evidence for the target, negative = against.
    - ``targets``: ``[N]`` class indices explained; ``scores``: ``[N]`` their logits on the clean input.
    - ``logits``: ``[N, K]`` the model's clean logits.
    - ``image_index``: ``[N]`` which input image each row explains (rows repeat an image when
      several targets per image were asked for).
    - ``extras``: method-specific per-row tensors (e.g. DMBP's ``positive``/``negative`` parts,
      LPR's ``loss_history`` ``[N, iterations]``).
    """

    attribution: Tensor
    targets: Tensor
    scores: Tensor
    logits: Tensor
    image_index: Tensor
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def map(self) -> Tensor:
        """The attribution map ``[N, H, W]``: the attribution summed over channels."""
        return self.attribution.sum(1)

    def __len__(self) -> int:
        return self.attribution.shape[0]
