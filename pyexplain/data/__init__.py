"""Datasets and small models trained by the project's own code (SPEC §8), cached per user."""
