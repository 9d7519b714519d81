"""Datasets and small models trained by the project's own code (SPEC §8), cached per user."""

from ..model_catalog import SMALL_MODELS  # noqa: F401  (the small models: trained and cached on first use)
