"""``pyexplain.explain``: one entry point for every method."""
from __future__ import annotations

import contextlib
import itertools
from typing import Any, Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .errors import PyExplainError
from .explanation import Explanation
from .method_options import check_options
from .preprocess import PREPROCESS_ATTRIBUTE, Preprocess, as_pil
from .registry import MethodResult, get_method
from .core.model_output import OutputSelector, logits_model
from .core.targets import ScoreSpec, TargetSpec, Targets, class_names_to_indices, expand_targets

#: A normalized batch ``[B, C, H, W]`` / ``[C, H, W]``, or PIL images / ``HxWxC`` numpy arrays (one or a list).
Images = Union[Tensor, Image.Image, np.ndarray, Sequence[Union[Image.Image, np.ndarray]]]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the duration, restoring every module's flag afterwards.

    Only modules in training mode are switched (and switched back): a model already in eval mode
    costs one walk over its modules."""
    training = [m for m in model.modules() if m.training]
    for module in training:
        module.training = False
    try:
        yield model
    finally:
        for module in training:
            module.training = True


def model_device(model: nn.Module) -> torch.device:
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of the model's first floating parameter or buffer (None if it has none)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def _input_channels(model: nn.Module) -> int | None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None


def validate_images(images: Tensor, model: nn.Module) -> Tensor:
    """Check an image batch: a float tensor ``[B, C, H, W]`` (or ``[C, H, W]``), finite, with the
    model's channel count. Returns it as a 4-D tensor on the model's device, cast to the model's
    floating dtype (float16/float64 input for a float32 model is computed in float32)."""
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
    # One reduction: the sum is finite when every value is (the full check runs only if it is not).
    if not torch.isfinite(images.sum()) and not torch.isfinite(images).all():
        raise PyExplainError("images contain NaN or infinite values")
    return images.to(model_device(model), model_dtype(model) or images.dtype)


def _is_picture(value: Any) -> bool:
    return isinstance(value, (Image.Image, np.ndarray))


def prepare_images(images: Images, preprocess: Preprocess | None) -> tuple[Tensor, list[Image.Image] | None]:
    """``(batch, pictures)``: a tensor batch as it is (``pictures`` None), or PIL images / numpy
    arrays preprocessed with ``preprocess`` (default: the one :func:`pyexplain.load_model` recorded
    on the model) and kept as ``pictures`` for maps at their own resolution."""
    many = isinstance(images, (list, tuple)) and len(images) > 0 and all(_is_picture(i) for i in images)
    if not (_is_picture(images) or many):
        return images, None
    if preprocess is None:
        raise PyExplainError("PIL or numpy images need the model's preprocessing: load the model with "
                             "pyexplain.load_model, or pass preprocess=")
    pictures = [as_pil(i) for i in (images if many else [images])]
    return torch.cat([preprocess(p) for p in pictures]), pictures


def check_batch_size(batch_size: Any) -> None:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0):
        raise PyExplainError(f"batch_size must be a positive integer or None, got {batch_size!r}")


@contextlib.contextmanager
def gradients_on(model: nn.Module) -> Iterator[None]:
    """Autograd on for the methods, also when the caller is in ``torch.no_grad()`` or
    ``torch.inference_mode()`` (inputs made there are cloned into ordinary tensors). A model whose
    weights were made in inference mode cannot be differentiated and is refused."""
    if any(t.is_inference() for t in list(model.parameters()) + list(model.buffers())):
        raise PyExplainError("the model's weights were created under torch.inference_mode() and cannot be "
                             "differentiated; create or load the model outside inference_mode")
    with torch.inference_mode(False), torch.enable_grad():
        yield


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
    images: Images,
    method: str = "gradxinput",
    target: TargetSpec = None,
    *,
    score: ScoreSpec = "logit",
    batch_size: int | None = None,
    progress: bool = False,
    output: OutputSelector | None = None,
    preprocess: Preprocess | None = None,
    **options: Any,
) -> Explanation:
    """Explain ``model``'s decision on ``images`` with ``method``.

    ``images``: a normalized tensor ``[B, C, H, W]``, or PIL images / ``HxWxC`` numpy arrays
    (``uint8``, or float in ``[0, 1]``), one or a list, preprocessed by ``preprocess`` (default: the
    model's, when it came from :func:`pyexplain.load_model`); their maps are then also had at each
    image's own resolution (:meth:`Explanation.numpy`, :meth:`Explanation.overlay`).
    ``target``: ``None`` for each image's top-1 class, a class for all, one per image, or a list
    of classes per image (each image is then explained once per class); a class is an index or,
    when the class names are known (``preprocess``), a name. ``score`` is what is
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
    options = check_options(info, options)
    check_batch_size(batch_size)
    preprocess = preprocess or getattr(model, PREPROCESS_ATTRIBUTE, None)
    images, pictures = prepare_images(images, preprocess)
    target = class_names_to_indices(target, preprocess.labels if preprocess is not None else None)
    parts: list[tuple[Tensor, dict[str, Tensor], Targets]] = []
    with gradients_on(model), eval_mode(model):
        x = validate_images(images.clone() if isinstance(images, Tensor) and images.is_inference() else images, model)
        rows, image_index, explicit = expand_targets(x, target)
        step = batch_size or rows.shape[0]
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
        extras=extras, images=pictures, preprocess=preprocess if pictures is not None else None,
    )
