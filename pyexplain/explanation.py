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

    def overlay(self, row: int = 0, layout: str = "side-by-side") -> Image.Image:
        """Row ``row``'s figure as ``pyexplain explain`` draws it: its image at its own resolution and
        the map with a colour bar, titled with the target and its probability (``layout``:
        ``"side-by-side"`` or ``"overlay"``, the map over a faded copy); PIL/numpy inputs only."""
        from .registry import get_method
        from .visualize import explanation_image, model_picture, title_line

        if self.images is None or self.preprocess is None:
            raise PyExplainError("overlay needs the input image: explain PIL or numpy images, or draw the tensor "
                                 "input with pyexplain.visualize.overlay")
        target = int(self.targets[row])
        probability = float(self.logits[row].float().softmax(0)[target])
        title = title_line("", self.method, target, self.preprocess.label(target), probability)
        picture = model_picture(self.images[int(self.image_index[row])], self.preprocess)
        sign = get_method(self.method).map_sign(self.options)
        return explanation_image(picture, self.map[row].detach().float().cpu().numpy(), sign, title, layout)

    def __repr__(self) -> str:
        targets = self.targets.tolist()
        shown = ", ".join(map(str, targets[:8])) + (", ..." if len(targets) > 8 else "")
        return (f"Explanation(method={self.method!r}, rows={len(self)}, map={list(self.map.shape)}, "
                f"targets=[{shown}], images={'none' if self.images is None else len(self.images)})")
