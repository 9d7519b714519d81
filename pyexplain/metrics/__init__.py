"""Metrics that judge attribution maps (SPEC §6): pixel flipping (MoRF/LeRF), insertion/deletion,
cIM, ROAR, model-randomization sanity checks, pointing game and relevance mass."""
from .pixel_flipping import Curve, lerf, morf, pixel_flipping

__all__ = ["Curve", "pixel_flipping", "morf", "lerf"]
