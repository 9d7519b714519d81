"""timm's image classifiers as ``timm:NAME`` (``pip install 'pyexplain[timm]'``), with timm's own
pretrained-weights resolution, its data config for preprocessing and ImageNet class names.

Pretrained weights come as ``timm.create_model(NAME, pretrained=True)`` gets them (the Hugging Face
Hub, or a URL into the torch hub cache). A cached file is loaded from the cache without any network
access; a missing one is downloaded by timm unless downloads are off (``--offline``,
``PYEXPLAIN_OFFLINE=1``, ``HF_HUB_OFFLINE=1``), see :mod:`pyexplain.models.hub`.
"""
from __future__ import annotations

import difflib
import math
from pathlib import Path

from torch import nn

from ..errors import PyExplainError
from ..preprocess import INTERPOLATIONS, Preprocess
from ..state_dicts import load_state_dict_file, load_weights
from .hub import download_guard, hub_checkpoint

PREFIX = "timm:"
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _timm():
    try:
        import timm
    except ImportError:
        raise PyExplainError("timm models need timm: pip install 'pyexplain[timm]'") from None
    return timm


def check_timm_name(name: str) -> None:
    """One-line error unless ``name`` (``arch`` or ``arch.tag``) is a timm model."""
    timm = _timm()
    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
        raise PyExplainError(f"timm has no model {arch!r}{hint}")


def weights_source(name: str) -> tuple[str, Path, str | None]:
    """``(url, cache_path, cached_file)`` of ``name``'s pretrained weights as timm resolves them
    (Hugging Face Hub first, else a URL); ``cached_file`` is None when they are not cached."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise PyExplainError(f"timm has no pretrained weights for {name!r}; pass --weights FILE or --random-weights")
    if cfg.hf_hub_id:
        import huggingface_hub

        repo, _, revision = cfg.hf_hub_id.partition("@")
        folder = Path(huggingface_hub.constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        for filename in ((cfg.hf_hub_filename,) if getattr(cfg, "hf_hub_filename", None) else _HF_WEIGHT_FILES):
            found = huggingface_hub.try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return f"https://huggingface.co/{repo}", folder, found
        return f"https://huggingface.co/{repo}", folder, None
    path = hub_checkpoint(cfg.url)
    return cfg.url, path, str(path) if path.is_file() else None


def _download_errors() -> tuple[type[BaseException], ...]:
    """The Hub client's HTTP error base classes (they are not all ``OSError``)."""
    from huggingface_hub.errors import HfHubHTTPError

    return tuple(c for c in HfHubHTTPError.__mro__ if c not in (OSError, Exception, BaseException, object))


def timm_preprocess(model: nn.Module) -> Preprocess:
    """The :class:`Preprocess` of timm's data config for ``model`` (``resolve_model_data_config``):
    resize the shorter side to ``floor(size / crop_pct)``, center-crop ``size``; ImageNet class names
    (timm's descriptions, e.g. ``"tabby, tabby cat"``) when timm knows the label set."""
    import timm.data

    config = timm.data.resolve_model_data_config(model)
    size = config["input_size"][-1]
    interpolation = config.get("interpolation", "bicubic")
    resize = math.floor(size / config.get("crop_pct", 1.0))
    subset = timm.data.infer_imagenet_subset(model)
    classes = getattr(model, "num_classes", 0)
    if subset:
        info = timm.data.ImageNetInfo(subset)
        labels = tuple(info.index_to_description(i) for i in range(classes))
    else:
        labels = tuple(str(i) for i in range(classes))
    return Preprocess(size, tuple(config["mean"]), tuple(config["std"]), labels, resize,
                      interpolation if interpolation in INTERPOLATIONS else "bicubic")


def load_timm(name: str, weights_file: str | None, random_weights: bool,
              allow_download: bool = True) -> tuple[nn.Module, Preprocess]:
    """``(model, preprocess)`` for timm's ``name``: pretrained (cache, else timm's download unless
    ``allow_download`` is false), from ``weights_file`` (a state dict in timm's layout), or random."""
    timm = _timm()
    check_timm_name(name)
    if weights_file is not None or random_weights:
        model = timm.create_model(name, pretrained=False)
        if weights_file is not None:
            load_weights(model, load_state_dict_file(weights_file), weights_file, PREFIX + name)
        return model, timm_preprocess(model)
    url, cache_path, cached = weights_source(name)
    if cached is not None:  # straight from the cache: no request at all
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cached})
        return model, timm_preprocess(model)
    before = _partial_files(cache_path)
    try:
        with download_guard(PREFIX + name, url, cache_path, allowed=allow_download, extra_errors=_download_errors()):
            model = timm.create_model(name, pretrained=True)
    except PyExplainError:
        for path in _partial_files(cache_path) - before:  # the Hub keeps them to resume; no partial file stays
            path.unlink(missing_ok=True)
        raise
    return model, timm_preprocess(model)


def _partial_files(folder: Path) -> set[Path]:
    """The Hub's unfinished downloads (``*.incomplete``) under ``folder``."""
    return set(folder.rglob("*.incomplete")) if folder.is_dir() else set()
