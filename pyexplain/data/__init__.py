"""Datasets and small models trained by the project's own code (SPEC §8), cached per user."""

#: The small models by name (``pyexplain.load_model`` trains and caches them on first use).
SMALL_MODELS = ("digits_cnn", "synthetic_vgg", "synthetic_resnet")
