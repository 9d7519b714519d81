"""The explainer compiler: a model and a fixed-rule method → one forward-only ``nn.Module``.

``CompiledExplainer(x, target) -> (logits, attribution)`` runs the model's forward pass step by
step and then the rule-modified backward pass written out as ordinary ops (see
:mod:`pyexplain.export.steps`), so it contains no autograd and survives ONNX, ``torch.export``
and TorchScript. ``target`` is an int64 tensor ``[B]``; a negative entry means the row's top-1
class (the argmax of its logits). The score is the target logit. The batch size is dynamic; the
image size is the example's.

Methods (each equals pyexplain's eager method of the same name):

- ``saliency``: ``|∂F_t/∂x|`` (``absolute=False``: signed);  ``gradxinput``: ``∂F_t/∂x ⊙ x``;
- ``guided_backprop``: ``g_in = max(g_out, 0) ⊙ φ'(f)`` at every activation call;
- ``deconvnet``: ``g_in = max(g_out, 0)``;
- ``gradcam``: ``ReLU(Σ_k mean(∂F_t/∂A^k) A^k)`` at ``layer``, upsampled and spread over channels;
- ``guided_gradcam``: Guided Backprop ⊙ upsampled Grad-CAM;
- ``lpr`` (frozen amortized LPR): ``(∂_rule F_t/∂x) ⊙ x`` with ``g_in = g_out ⊙ tanh(W_c ⊙ (f − f_ref))``
  at each activation call given a channel rule ``W_c`` (the plain gradient at the others), where
  ``f_ref`` is the activation input of the all-zero reference image, baked in as a constant.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..api import eval_mode, model_device
from ..core.layers import capture_layer, default_cam_layer, get_layer, resolve_layout
from ..errors import PyExplainError
from ..registry import get_method
from . import steps as S
from .channel_rules import ChannelRules, load_channel_rules
from .graph import TracedModel, build

#: Methods the compiler can export, and the activation rule each one's backward pass uses.
EXPORTABLE_METHODS = {
    "saliency": "gradient", "gradxinput": "gradient", "guided_backprop": "guided", "deconvnet": "deconvnet",
    "gradcam": "gradient", "guided_gradcam": "guided", "lpr": "lpr",
}
_CAM_METHODS = ("gradcam", "guided_gradcam")


class CompiledExplainer(nn.Module):
    """``forward(x [B,C,H,W], target int64 [B]) -> (logits [B,K], attribution [B,C,H,W])``."""

    def __init__(self, traced: TracedModel, method: str, *, absolute: bool = True, cam_node: str = "",
                 interpolation: str = "bilinear") -> None:
        super().__init__()
        self.steps = nn.ModuleList(traced.steps)
        self.input_node, self.output_node = traced.input_node, traced.output_node
        self.method, self.rule = method, EXPORTABLE_METHODS[method]
        self.absolute, self.cam_node, self.interpolation = absolute, cam_node, interpolation
        self.input_shape, self.dtype = traced.input_shape, traced.dtype
        self.register_buffer("classes", torch.arange(traced.num_classes))

    def run_forward(self, x: Tensor) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Every step's output, and what each step saved for its backward."""
        values: dict[str, Tensor] = {self.input_node: x}
        saved: dict[str, Any] = {}
        for step in self.steps:
            out, ctx = step.run(*[values[name] for name in step.inputs])
            values[step.node] = out
            saved[step.node] = ctx
        return values, saved

    def backward(self, seed: Tensor, saved: dict[str, Any], rule: str, stop: str = "") -> Tensor:
        """The rule-modified gradient of ``Σ seed ⊙ logits`` at the input (or at node ``stop``)."""
        grads: dict[str, Tensor] = {self.output_node: seed}
        for step in reversed(self.steps):
            if step.node == stop:
                return grads[stop]
            if step.node not in grads:
                continue
            g = grads.pop(step.node)
            for name, contribution in zip(step.inputs, step.grad(g, saved[step.node], rule)):
                if contribution is not None:
                    grads[name] = grads[name] + contribution if name in grads else contribution
        return grads[self.input_node]

    def _upsampled_cam(self, values: dict[str, Tensor], saved: dict[str, Any], seed: Tensor) -> Tensor:
        activations = values[self.cam_node]
        grads = self.backward(seed, saved, "gradient", stop=self.cam_node)
        cam = (grads.mean(dim=(2, 3), keepdim=True) * activations).sum(1).clamp(min=0)
        c, h, w = self.input_shape
        if self.interpolation in ("bilinear", "bicubic"):
            up = F.interpolate(cam[:, None], size=(h, w), mode=self.interpolation, align_corners=False)
        else:
            up = F.interpolate(cam[:, None], size=(h, w), mode=self.interpolation)
        return up.expand(-1, c, -1, -1) / c

    def forward(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        values, saved = self.run_forward(x)
        return values[self.output_node], self.attribute(x, target, values, saved)

    def attribute(self, x: Tensor, target: Tensor, values: dict[str, Tensor], saved: dict[str, Any]) -> Tensor:
        """The attribution from a forward pass's ``values`` (logits included: they choose the top-1) and
        what it ``saved`` (the pre-activations and pooling argmaxes the backward pass branches on)."""
        logits = values[self.output_node]
        chosen = torch.where(target < 0, logits.argmax(1), target)
        seed = (self.classes[None, :] == chosen[:, None]).to(logits.dtype)
        if self.method in _CAM_METHODS:
            up = self._upsampled_cam(values, saved, seed)
            if self.method == "gradcam":
                return up
            return self.backward(seed, saved, "guided") * up * self.input_shape[0]
        grad = self.backward(seed, saved, self.rule)
        if self.method == "saliency":
            return grad.abs() if self.absolute else grad
        if self.method in ("gradxinput", "lpr"):
            return grad * x
        return grad


def _check_options(method: str, options: dict[str, Any]) -> None:
    if method not in EXPORTABLE_METHODS:
        raise PyExplainError(f"method {method!r} cannot be exported; exportable: {', '.join(EXPORTABLE_METHODS)}")
    allowed = {"rules"} if method == "lpr" else set(get_method(method).defaults)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise PyExplainError(f"method {method!r} has no export option {unknown[0]!r}; its options: "
                             f"{', '.join(sorted(allowed)) or 'none'}")
    if method == "lpr" and options.get("rules") is None:
        raise PyExplainError("method 'lpr' needs its frozen channel rules: --rules FILE / rules=FILE (from `pyexplain fit-rules`) "
                             "or a list of per-activation-call tensors")


def _cam_node(traced: TracedModel, model: nn.Module, example: Tensor, layer: str | None, reshape: str = "auto") -> str:
    """The step whose output is ``layer``'s output (the last step run inside that module)."""
    name = layer or default_cam_layer(model, example)
    module = get_layer(model, name)
    inside = [s.node for s in traced.steps if name in traced.module_stacks.get(s.node, ())]
    if not inside:
        raise PyExplainError(f"cannot export: layer {name!r} runs no traced operation")
    node = inside[-1]
    with torch.no_grad(), capture_layer(module) as captured:
        model(example)
    value = traced.values[node]
    if captured.output is None or value.ndim != 4 or not torch.equal(captured.output, value):
        raise PyExplainError(f"cannot export Grad-CAM at layer {name!r}: its output is not one spatial traced tensor")
    if resolve_layout(tuple(value.shape), reshape, tuple(example.shape[-2:])) != "nchw":
        raise PyExplainError(f"cannot export Grad-CAM at layer {name!r}: its output is channels-last; "
                             "exported Grad-CAM takes NCHW layers")
    return node


def _attach_rules(explainer: CompiledExplainer, rules: ChannelRules) -> None:
    activations = [s for s in explainer.steps if isinstance(s, S.Activation)]
    weights = rules.per_call([a.kind for a in activations])
    reference = explainer.classes.new_zeros((1, *explainer.input_shape), dtype=explainer.dtype)
    with torch.no_grad():
        _, saved = explainer.run_forward(reference)
    for step, weight in zip(activations, weights):
        if weight is None:
            continue
        f_ref = saved[step.node]
        if weight.numel() not in (f_ref.shape[1], f_ref[0].numel()):
            raise PyExplainError(f"{rules.source} do not match the model: {weight.numel()} channel weights for "
                                 f"activation call {step.index} of shape {tuple(f_ref.shape[1:])}")
        reference_input = f_ref if rules.reference else torch.zeros_like(f_ref)
        predictor = rules.predictors.get(step.index)
        if predictor is not None and weight.numel() != f_ref.shape[1]:
            raise PyExplainError(f"{rules.source} do not match the model: a predictor of {weight.numel()} channels for "
                                 f"activation call {step.index} of shape {tuple(f_ref.shape[1:])}")
        step.set_channel_rule(weight.to(f_ref.device), reference_input, rules.variant, rules.keep_activation_mask,
                              predictor, rules.pass_saturated)


def compile_explainer(model: nn.Module, method: str, example_input: Tensor, **options: Any) -> CompiledExplainer:
    """Compile ``model`` and a fixed-rule ``method`` into a :class:`CompiledExplainer` for inputs shaped
    like ``example_input`` ``[B, C, H, W]`` (any batch size at run time).

    ``options``: the method's own (``absolute`` for saliency; ``layer``, ``interpolation`` for the CAMs;
    ``rules`` for ``lpr``: a rules file or a list with one channel tensor ``[C]`` or ``None`` per
    activation call, in call order).
    """
    _check_options(method, options)
    if not isinstance(example_input, Tensor) or example_input.ndim != 4:
        raise PyExplainError("example_input must be an image batch [B, C, H, W]")
    with eval_mode(model):
        return _compile(model, method, example_input, options)


def _compile(model: nn.Module, method: str, example_input: Tensor, options: dict[str, Any]) -> CompiledExplainer:
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    example = example_input[:1].detach().to(model_device(model), dtype).expand(2, -1, -1, -1)
    example = example + torch.linspace(0, 1e-3, 2, device=example.device).reshape(2, 1, 1, 1)  # two distinct rows
    traced = build(model, example)
    cam_node = ""
    if method in _CAM_METHODS:
        cam_node = _cam_node(traced, model, example, options.get("layer"), options.get("reshape", "auto"))
    defaults = {} if method == "lpr" else get_method(method).defaults
    explainer = CompiledExplainer(
        traced, method, absolute=bool(options.get("absolute", defaults.get("absolute", True))), cam_node=cam_node,
        interpolation=str(options.get("interpolation", defaults.get("interpolation", "bilinear"))),
    )
    if method == "lpr":
        _attach_rules(explainer, load_channel_rules(options["rules"]))
    return explainer.eval()
