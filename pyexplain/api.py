"""``pyexplain.explain``: one entry point for every method."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from .errors import PyExplainError
from .explanation import Explanation
from .registry import MethodResult, get_method
from .core.model_output import OutputSelector, logits_model
from .core.targets import ScoreSpec, TargetSpec, Targets, expand_targets


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the duration, restoring every module's flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def model_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _input_channels(model: nn.Module) -> int | None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None


def validate_images(images: Tensor, model: nn.Module) -> Tensor:
    """Check an image batch: a float tensor ``[B, C, H, W]`` (or ``[C, H, W]``), finite, with the
    model's channel count. Returns it as a 4-D tensor on the model's device."""
    if not isinstance(images, Tensor):
        raise PyExplainError(f"images must be a torch.Tensor [B, C, H, W], got {type(images).__name__}")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise PyExplainError(f"images must have shape [B, C, H, W], got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise PyExplainError("images is an empty batch")
    if not images.is_floating_point():
        raise PyExplainError(f"images must be floating point (normalized), got {images.dtype}")
    channels = _input_channels(model)
    if channels is not None and images.shape[1] != channels:
        raise PyExplainError(f"images have {images.shape[1]} channels but the model expects {channels}")
    if not torch.isfinite(images).all():
        raise PyExplainError("images contain NaN or infinite values")
    return images.to(model_device(model))


def _run_method(info, model: nn.Module, x: Tensor, explicit: Tensor | None, score: ScoreSpec,
                options: dict[str, Any], progress: bool) -> tuple[Tensor, dict[str, Tensor], Targets]:
    targets = Targets(explicit, score)
    kwargs = dict(options)
    if info.iterative:
        kwargs["progress"] = progress
    result = info.fn(model, x, targets, **kwargs)
    attribution, extras = (result.attribution, result.extras) if isinstance(result, MethodResult) else (result, {})
    targets.resolve_with(model, x)
    return attribution.detach(), {k: v.detach() for k, v in extras.items()}, targets


def explain(
    model: nn.Module,
    images: Tensor,
    method: str = "gradxinput",
    target: TargetSpec = None,
    *,
    score: ScoreSpec = "logit",
    batch_size: int | None = None,
    progress: bool = False,
    output: OutputSelector | None = None,
    **options: Any,
) -> Explanation:
    """Explain ``model``'s decision on ``images`` with ``method``.

    ``target``: ``None`` for each image's top-1 class, an int for all, one int per image, or a list
    of classes per image (each image is then explained once per class). ``score`` is what is
    differentiated (logit by default). ``batch_size`` bounds how many rows run at once.
    The model may return a tensor, a tuple (first element), a mapping with ``"logits"`` or an object
    with ``.logits``; ``output`` is a callable selecting the ``[N, K]`` logits from anything else.
    ``options`` are the method's own (see ``pyexplain methods``); unknown ones are an error.
    """
    info = get_method(method)
    unknown = sorted(set(options) - set(info.defaults))
    if unknown:
        valid = ", ".join(sorted(info.defaults)) or "none"
        raise PyExplainError(f"method {method!r} has no option {unknown[0]!r}; its options: {valid}")
    x = validate_images(images, model)
    rows, image_index, explicit = expand_targets(x, target)
    step = batch_size or rows.shape[0]
    parts: list[tuple[Tensor, dict[str, Tensor], Targets]] = []
    with eval_mode(model):
        model = logits_model(model, x, output)
        for start in range(0, rows.shape[0], step):
            chunk_targets = None if explicit is None else explicit[start:start + step]
            parts.append(_run_method(info, model, rows[start:start + step], chunk_targets, score, options, progress))
    attribution = torch.cat([p[0] for p in parts])
    extras = {key: torch.cat([p[1][key] for p in parts]) for key in parts[0][1]}
    logits = torch.cat([p[2].logits for p in parts])
    targets = torch.cat([p[2].indices for p in parts])
    scores = logits.gather(1, targets[:, None])[:, 0]
    return Explanation(
        attribution=attribution, targets=targets, scores=scores, logits=logits,
        image_index=image_index.to(attribution.device), method=method,
        options={**info.defaults, **options, "score": score if isinstance(score, str) else "callable"},
        extras=extras,
    )
