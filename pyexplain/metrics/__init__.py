"""Metrics that judge attribution maps (SPEC §6): pixel flipping (MoRF/LeRF), insertion/deletion,
cIM, ROAR, model-randomization sanity checks, pointing game and relevance mass. All take maps
``[N, C, H, W]`` or ``[N, H, W]`` and run batched on the model's device."""
from .cim import complementary_insertion
from .imputation import linear_imputation
from .insertion import deletion, insertion
from .localization import pointing_game, relevance_mass
from .pixel_flipping import Curve, lerf, morf, pixel_flipping
from .roar import remove_top, roar
from .sanity import model_randomization, spearman

__all__ = [
    "Curve", "pixel_flipping", "morf", "lerf", "insertion", "deletion", "complementary_insertion",
    "pointing_game", "relevance_mass", "roar", "remove_top", "linear_imputation", "model_randomization", "spearman",
]
