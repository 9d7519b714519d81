"""Datasets and small models trained by the project's own code (SPEC §8); seed 0's weights ship with the package."""

from ..model_catalog import SMALL_MODELS  # noqa: F401  (the small models: trained by pyexplain, weights shipped)
