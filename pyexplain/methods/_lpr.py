"""LPR's machinery (SPEC §3): rule sites on a retained clean forward pass, masks, the sign-aware loss.

Yang, Qiu, Song, Tao, Wang: Learning Propagation Rules for Attribution Map Generation (ECCV 2020):
each activation call's backward becomes
``g_in = g_out ⊙ tanh(W ⊙ (f − f_ref))`` with a learned ``W``; ``A = ∂_rule F_t/∂I ⊙ I``.

The forward values never depend on ``W``: only the backward does. :class:`RuleGraph` therefore runs
the clean forward once, keeps its graph, and every iteration's ``create_graph`` backward reads the
current ``W`` through the sites' closures (Adam updates ``W`` in place).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..core.activations import ACTIVATIONS, ActivationCall, intercept_activations
from ..core.rules import replace_backward
from ..core.targets import Targets, target_scores
from ..errors import PyExplainError
from ..ops import plugin_rule

ARCHS = ("position", "channel")
VARIANTS = ("feature", "gradient")
MASKS = ("sigmoid", "smooth")
NORMALIZATIONS = ("minmax", "symmetric")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PyExplainError(f"lpr option {name}={value!r} is not one of {', '.join(choices)}")


#: The activation calls that get a rule: the ReLU family and every other elementwise activation of the
#: feature path (SiLU, GELU, Hardswish, Mish, ELU, SELU, CELU, softplus), since the rule replaces the
#: derivative whatever it is; ``f − f_ref`` is taken at the activation's input. Sigmoid/tanh gates
#: (squeeze-excitation) scale another tensor and keep their plain gradient.
RULED_KINDS = ACTIVATIONS


def plugged(call: ActivationCall, head: bool) -> bool:
    """Whether a rule goes on ``call``: every trunk activation (feature maps, token sequences), head
    (``[B, K]``) ones only with ``head``."""
    return call.spatial or head


def describe_unreachable(calls: list[ActivationCall], others: dict[str, int], head: bool) -> str:
    """The one-line error for a model on which LPR finds no activation call to place a rule on."""
    seen = ", ".join(f"{n} {name}" for name, n in sorted(others.items())) or "none"
    if calls and not head:
        return (f"LPR found only classifier-head activations ({len(calls)} non-spatial call(s)) and no "
                f"convolutional-trunk ones; pass head=True to put rules on them")
    return (f"LPR found no activation call to place rules on (ReLU family, SiLU, GELU, Hardswish, Mish, ELU, "
            f"SELU, CELU, softplus); other nonlinearities seen: {seen}")


def reference_activations(model: nn.Module, x: Tensor, head: bool) -> list[Tensor]:
    """Inputs ``f_ref`` of every activation call for the all-zero reference image ``[1, C, H, W]``."""
    recorded: list[Tensor] = []

    def record(call: ActivationCall, f: Tensor) -> Tensor:
        recorded.append(f.detach())
        return call.forward(f)

    with torch.no_grad(), intercept_activations(model, record, kinds=RULED_KINDS) as tracker:
        model(x.new_zeros((1, *x.shape[1:])))
    if not any(plugged(c, head) for c in tracker.calls):
        raise PyExplainError(describe_unreachable(tracker.calls, tracker.other_nonlinearities, head))
    return recorded


class _Conv2dInputGrad(torch.autograd.Function):
    """``conv2d`` whose backward is the transposed convolution of ``g`` alone (weights are constants).

    Its ``create_graph`` backward is then an ordinary convolution, and the second-order pass never
    computes the convolution weights' gradient (which the generic double backward of ``conv2d``
    does, group by group for depthwise convolutions)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups) -> Tensor:
        out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(weight)
        ctx.config = (stride, padding, dilation, groups)
        ctx.output_padding = tuple(
            x.shape[d] - ((out.shape[d] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (weight.shape[d] - 1) + 1)
            for i, d in enumerate((2, 3)))
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        (weight,) = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.config
        grad = F.conv_transpose2d(g, weight, None, stride, padding, ctx.output_padding, groups, dilation)
        return grad, None, None, None, None, None, None


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _conv2d_handler(func, args, kwargs):
    """``op_handlers`` entry routing 4-D ``conv2d`` calls with numeric padding through :class:`_Conv2dInputGrad`."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    bound = {**dict(zip(names, args)), **kwargs}
    x, weight = bound["input"], bound["weight"]
    padding = bound.get("padding", 0)
    if isinstance(padding, str) or x.ndim != 4 or not torch.is_grad_enabled():
        return func(*args, **kwargs)
    bias = bound.get("bias")
    return _Conv2dInputGrad.apply(x, weight.detach(), None if bias is None else bias.detach(),
                                  _pair(bound.get("stride", 1)), _pair(padding), _pair(bound.get("dilation", 1)),
                                  bound.get("groups", 1))


def _batch_norm_handler(func, args, kwargs):
    """``op_handlers`` entry computing eval-mode ``batch_norm`` as the affine map ``x·s + b`` with constant
    ``s, b``: the same values, and a backward (and double backward) that is a single multiplication."""
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    bound = {**dict(zip(names, args)), **kwargs}
    x, mean, var = bound["input"], bound["running_mean"], bound["running_var"]
    if bound.get("training", False) or mean is None or var is None:
        return func(*args, **kwargs)
    scale = torch.rsqrt(var.detach() + bound.get("eps", 1e-5))
    if bound.get("weight") is not None:
        scale = scale * bound["weight"].detach()
    shift = -mean.detach() * scale
    if bound.get("bias") is not None:
        shift = shift + bound["bias"].detach()
    view = (1, -1) + (1,) * (x.ndim - 2)
    return torch.addcmul(shift.reshape(view), x, scale.reshape(view))


#: Operations whose backward the ruled forward pass replaces by a cheaper one with the same values.
FAST_BACKWARD_OPS = {F.conv2d: _conv2d_handler, F.batch_norm: _batch_norm_handler}


def _hardsigmoid_handler(func, args, kwargs):
    """``F.hardsigmoid`` (MobileNetV3's squeeze-excitation gate) as ``clamp(x/6 + 1/2, 0, 1)``: the same
    values, and a backward that is itself differentiable (``hardsigmoid_backward`` is not)."""
    x = args[0]
    out = torch.clamp(x / 6 + 0.5, 0, 1)
    if kwargs.get("inplace", args[1] if len(args) > 1 else False):
        with torch.no_grad():
            x.copy_(out)
    return out


#: Operations the ruled forward pass computes in a form that supports the second-order backward.
TWICE_DIFFERENTIABLE_OPS = {F.hardsigmoid: _hardsigmoid_handler}


@dataclass
class RuleSite:
    """One activation call with a learnable rule. ``shift = f − f_ref`` (``f`` when there is no reference)
    is computed once: it is the same for every iteration, so the rule reads one activation-sized
    constant instead of two. ``weight`` is bound after the forward pass and may change (in place or by
    rebinding) between backward passes."""

    call: ActivationCall
    shift: Tensor
    variant: str
    gate: Tensor | None
    weight: Tensor | None = None

    def shape(self, arch: str, rows: int) -> tuple[int, ...]:
        """``W``'s shape: the activation's (``position``) or one value per channel (``channel``)."""
        per_row = tuple(self.call.shape[1:])
        if arch == "channel" and len(per_row) > 1:
            per_row = (per_row[0],) + (1,) * (len(per_row) - 1)
        return (rows,) + per_row

    def backward(self, g_out: Tensor) -> Tensor:
        if self.variant == "gradient":
            g_in = torch.tanh(self.weight * g_out)
        else:
            g_in = plugin_rule(g_out, self.shift, None, self.weight)
        return g_in * self.gate if self.gate is not None else g_in


@dataclass
class RuleGraph:
    """The clean forward pass of ``x`` with a rule site at every plugged activation call, kept alive
    so :meth:`attribution` can run the ruled backward pass again for new weights."""

    x: Tensor
    logits: Tensor
    target_sum: Tensor
    sites: list[RuleSite] = field(default_factory=list)

    @classmethod
    def build(cls, model: nn.Module, x: Tensor, targets: Targets, *, variant: str, f_ref: list[Tensor] | None,
              keep_activation_mask: bool, head: bool, pass_saturated: bool = False) -> "RuleGraph":
        x = x.detach().requires_grad_(True)
        sites: list[RuleSite] = []

        def rule(call: ActivationCall, f: Tensor) -> Tensor:
            if not plugged(call, head):
                return call.forward(f)
            value = f.detach()
            if f_ref is not None:
                if call.index >= len(f_ref) or f_ref[call.index].shape[1:] != f.shape[1:]:
                    raise PyExplainError("the model's activation calls differ between the reference and the "
                                         "image forward passes (data-dependent control flow); use reference=False")
                shift = value - f_ref[call.index]
            else:
                shift = value
            gate = None
            if keep_activation_mask:
                gate = call.unsaturated_derivative(value) if pass_saturated else call.derivative(value)
            site = RuleSite(call, shift, variant, gate)
            sites.append(site)
            return replace_backward(call, f, site.backward)

        with torch.enable_grad():
            # Attention through the math backend: the fused CPU/CUDA kernels have no double backward.
            handlers = {**FAST_BACKWARD_OPS, **TWICE_DIFFERENTIABLE_OPS}
            with sdpa_kernel(SDPBackend.MATH), intercept_activations(model, rule, handlers,
                                                                     kinds=RULED_KINDS) as tracker:
                logits = model(x)
            if not sites:
                raise PyExplainError(describe_unreachable(tracker.calls, tracker.other_nonlinearities, head))
            targets.resolve(logits)
            target_sum = targets.scores(logits).sum()
        return cls(x, logits.detach(), target_sum, sites)

    def bind(self, weights: list[Tensor]) -> None:
        for site, weight in zip(self.sites, weights, strict=True):
            site.weight = weight

    def attribution(self, create_graph: bool) -> Tensor:
        """``A = ∂_rule F_t / ∂x ⊙ x`` with the currently bound weights (the graph is kept)."""
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.target_sum, self.x, create_graph=create_graph, retain_graph=True)
        return grad * self.x.detach()


def normalize_map(a: Tensor, how: str) -> Tensor:
    """Per-image ``[0, 1]`` scaling of maps ``[N, H, W]``: min-max, or symmetric ``(a/max|a| + 1)/2``
    (zero attribution stays at 0.5)."""
    flat = a.flatten(1)
    if how == "symmetric":
        scale = flat.abs().amax(1).clamp_min(1e-12).reshape(-1, 1, 1)
        return (a / scale + 1) / 2
    low = flat.amin(1).reshape(-1, 1, 1)
    span = (flat.amax(1).reshape(-1, 1, 1) - low).clamp_min(1e-12)
    return (a - low) / span


def gaussian_smooth(a: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian smoothing of maps ``[N, H, W]`` (kernel radius 3σ, reflected borders)."""
    radius = max(1, min(int(math.ceil(3 * sigma)), min(a.shape[-2:]) - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=a.dtype, device=a.device)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    out = F.pad(a[:, None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.reshape(1, 1, 1, -1))
    return F.conv2d(out, kernel.reshape(1, 1, -1, 1))[:, 0]


@dataclass(frozen=True)
class LossConfig:
    """Masks and loss of SPEC §3 steps 3–5."""

    gamma: float = 10.0
    alpha: float = 0.75
    beta: float = 0.25
    lam: float = 0.1
    mask: str = "sigmoid"
    smooth_sigma: float = 4.0
    normalize: str = "symmetric"


def masks(attribution: Tensor, config: LossConfig) -> tuple[Tensor, Tensor]:
    """``Mp = 1 − σ(γ(â − α))`` (removes the most positive pixels), ``Mn = σ(γ(â − β))`` (removes the
    most negative), ``â`` the per-image normalized map (Gaussian-smoothed first for ``mask="smooth"``);
    both ``[N, 1, H, W]``."""
    a = normalize_map(attribution.sum(1), config.normalize)
    if config.mask == "smooth":
        a = gaussian_smooth(a, config.smooth_sigma)
    a = a[:, None]
    return 1 - torch.sigmoid(config.gamma * (a - config.alpha)), torch.sigmoid(config.gamma * (a - config.beta))


def row_losses(model: nn.Module, x: Tensor, attribution: Tensor, target: Tensor, clean_scores: Tensor,
               score, config: LossConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row ``L = Lp + Ln + λ Lm`` with the unmodified model, both masked inputs in one pass of 2N rows:
    ``Lp = F_t(I⊙Mp) − F_t(I)``, ``Ln = F_t(I) − F_t(I⊙Mn)``, ``Lm = mean|1−Mp| + mean|1−Mn|``.
    Returns ``(loss [N], Mp, Mn)``."""
    mp, mn = masks(attribution, config)
    x = x.detach()
    n = x.shape[0]
    masked_scores = target_scores(model(torch.cat([x * mp, x * mn])), target.repeat(2), score)
    lp = masked_scores[:n] - clean_scores
    ln = clean_scores - masked_scores[n:]
    lm = (1 - mp).abs().flatten(1).mean(1) + (1 - mn).abs().flatten(1).mean(1)
    return lp + ln + config.lam * lm, mp, mn


#: The removal budgets of :func:`deletion_losses`: 1 % to 5 % of the pixels, MoRF's range (SPEC §6).
DELETION_FRACTIONS = (0.01, 0.02, 0.03, 0.04, 0.05)
#: The insertion budgets of :func:`insertion_losses`: points along the RISE insertion curve.
INSERTION_FRACTIONS = (0.05, 0.1, 0.2, 0.35, 0.5)


def soft_top_masks(attribution: Tensor, fractions: tuple[float, ...], temperature: float) -> Tensor:
    """``M_k = σ((â − q_k) / τ)`` ``[N, len(fractions), H·W]``: the soft mask of each map's top ``k``
    pixels, with ``â = a / max|a|`` the channel-summed map scaled per image and ``q_k`` its value at
    rank ``k·H·W`` (a constant)."""
    a = attribution.sum(1).flatten(1)
    a = a / a.abs().amax(1, keepdim=True).clamp_min(1e-12)
    ranked = a.detach().sort(1, descending=True).values
    ranks = torch.tensor([max(round(k * a.shape[1]) - 1, 0) for k in fractions], device=a.device)
    return torch.sigmoid((a[:, None] - ranked[:, ranks][..., None]) / temperature)


def deletion_losses(model: nn.Module, x: Tensor, attribution: Tensor, target: Tensor, clean_scores: Tensor, score,
                    fractions: tuple[float, ...] = DELETION_FRACTIONS, temperature: float = 0.05) -> Tensor:
    """Per-row soft MoRF curve (amortized LPR's ``objective="deletion"``, beyond the paper):

        L = mean_k F_t(I ⊙ (1 − M_k)) / |F_t(I)|,    M_k = :func:`soft_top_masks`

    (the top ``k`` of the pixels are removed, softly, with ``τ = temperature``). The removed pixels go
    to 0, MoRF's reference. One pass of ``N·len(fractions)`` rows; ``[N]``."""
    n, budgets = x.shape[0], len(fractions)
    keep = 1 - soft_top_masks(attribution, fractions, temperature)
    removed = x.detach()[:, None] * keep.view(n, budgets, 1, *x.shape[-2:])
    scores = target_scores(model(removed.flatten(0, 1)), target.repeat_interleave(budgets), score).view(n, budgets)
    return (scores / clean_scores.detach().abs().clamp_min(1e-6)[:, None]).mean(1)


def insertion_losses(model: nn.Module, x: Tensor, attribution: Tensor, target: Tensor,
                     fractions: tuple[float, ...] = INSERTION_FRACTIONS, temperature: float = 0.05) -> Tensor:
    """Per-row soft RISE insertion curve, negated (part of amortized LPR's
    ``objective="deletion_insertion"``, beyond the paper):

        L = −mean_k p_t(B ⊙ (1 − M_k) + I ⊙ M_k),    M_k = :func:`soft_top_masks`

    with ``B`` the insertion metric's blurred image and ``p_t`` the softmax probability of the
    target, the insertion metric's score. One pass of ``N·len(fractions)`` rows; ``[N]``."""
    from ..metrics.insertion import blurred

    n, budgets = x.shape[0], len(fractions)
    keep = soft_top_masks(attribution, fractions, temperature).view(n, budgets, 1, *x.shape[-2:])
    x = x.detach()
    base = blurred(x)
    inserted = base[:, None] + (x - base)[:, None] * keep
    scores = target_scores(model(inserted.flatten(0, 1)), target.repeat_interleave(budgets), "probability")
    return -scores.view(n, budgets).mean(1)


def initial_weights(sites: list[RuleSite], arch: str, rows: int, init: float, init_std: float, seed: int,
                    dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    """One leaf ``W`` per site: ``init`` plus ``N(0, init_std²)`` noise. Each row draws its noise from
    its own generator seeded with ``seed``, so a row's weights do not depend on the batch around it."""
    weights = [torch.full(site.shape(arch, rows), float(init), dtype=dtype, device=device) for site in sites]
    if init_std > 0:
        for row in range(rows):
            generator = torch.Generator(device=device).manual_seed(seed)
            for w in weights:
                w[row] += init_std * torch.randn(w.shape[1:], generator=generator, dtype=dtype, device=device)
    return [w.requires_grad_(True) for w in weights]

