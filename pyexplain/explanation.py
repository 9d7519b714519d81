"""The result of every method."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from torch import Tensor

from .errors import PyExplainError

if TYPE_CHECKING:
    from .preprocess import Preprocess


@dataclass(repr=False)
class Explanation:
    """Attributions for a batch of rows (one row per image and target).

    - ``attribution``: ``[N, C, H, W]``, positive = evidence for the target, negative = against.
    - ``targets``: ``[N]`` class indices explained; ``scores``: ``[N]`` their logits on the clean input.
    - ``logits``: ``[N, K]`` the model's clean logits.
    - ``image_index``: ``[N]`` which input image each row explains (rows repeat an image when
      several targets per image were asked for).
    - ``extras``: method-specific per-row tensors (e.g. DMBP's ``positive``/``negative`` parts,
      LPR's ``loss_history`` ``[N, iterations]``).
    - ``images``, ``preprocess``: the input pictures and their preprocessing, when PIL or numpy
      images were explained (for :meth:`numpy` and :meth:`overlay` at each image's resolution).
    """

    attribution: Tensor
    targets: Tensor
    scores: Tensor
    logits: Tensor
    image_index: Tensor
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)
    images: list[Image.Image] | None = None
    preprocess: "Preprocess | None" = None

    @property
    def map(self) -> Tensor:
        """The attribution map ``[N, H, W]``: the attribution summed over channels."""
        return self.attribution.sum(1)

    def __len__(self) -> int:
        return self.attribution.shape[0]

    def numpy(self, row: int = 0) -> np.ndarray:
        """Row ``row``'s map as float32 numpy: at its image's own resolution ``[height, width]`` for
        PIL/numpy inputs (the center crop's margins are 0), else at the model input's ``[H, W]``."""
        attribution_map = self.map[row]
        if self.images is None or self.preprocess is None:
            return attribution_map.detach().float().cpu().numpy()
        image = self.images[int(self.image_index[row])]
        return self.preprocess.to_image(attribution_map, image.width, image.height).astype(np.float32)

    def overlay(self, row: int = 0) -> Image.Image:
        """Row ``row``'s image beside its heatmap over it (red = for, blue = against), at the
        image's own resolution (:func:`pyexplain.visualize.overlay`); PIL/numpy inputs only."""
        from .visualize import overlay

        if self.images is None:
            raise PyExplainError("overlay needs the input image: explain PIL or numpy images, or draw the tensor "
                                 "input with pyexplain.visualize.overlay")
        return overlay(self.images[int(self.image_index[row])], self.numpy(row))

    def __repr__(self) -> str:
        targets = self.targets.tolist()
        shown = ", ".join(map(str, targets[:8])) + (", ..." if len(targets) > 8 else "")
        return (f"Explanation(method={self.method!r}, rows={len(self)}, map={list(self.map.shape)}, "
                f"targets=[{shown}], images={'none' if self.images is None else len(self.images)})")
