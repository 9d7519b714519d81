"""Autograd wiring of the fused kernels (``pyexplain._C``, built from ``pyexplain/csrc/``).

Each op is a chain of :class:`torch.autograd.Function` s whose every step is one fused kernel:

- ``plugin_rule``: forward ``g ⊙ tanh(W ⊙ (f − f_ref))``; its backward (to ``g``, ``W``, ``f``,
  ``f_ref``) is itself a differentiable Function, whose backward (the second-order terms LPR's
  ``create_graph=True`` optimization needs) is the fused double-backward kernel.
- ``masked_relu_backward``: forward ``g ⊙ 1[low < f < high] ⊙ mask``; backward to ``g`` and
  ``mask`` likewise differentiable once more (the gate has no gradient).

Third-order derivatives raise (``once_differentiable``). Broadcast parameters get their gradients
summed inside the kernels. :func:`supported` says whether a call can take the fused path:

- all tensors on one device, one dtype: float32/float64 on CPU; also float16/bfloat16 on CUDA
  (when the extension was built with CUDA); the activation ``f`` non-empty, ``g_out`` shaped
  like ``f``;
- ``f_ref``, ``W`` and ``mask`` shaped like ``f`` ``[N, C, *]``, or broadcast as ``[1, C, *]``
  (shared by the batch), ``[N, C, 1, ...]`` or ``[1, C, 1, ...]`` (per channel) or a single value
  (leading 1s may be left out, as in broadcasting).

Anything else goes to the pure-PyTorch fallback in :mod:`pyexplain.ops`.

``abs_channel_stats`` (FullGrad's per-site reduction) is a plain computation without autograd: it
runs in backward hooks on gradients that need none. :func:`stats_supported` says which calls it takes.
So are ε-LRP's ``epsilon_divide`` and ``proportional_split``, run inside custom backward functions
(:func:`elementwise_supported`).
``rescale`` (DeepLIFT's value and multiplier of a piecewise-linear activation) likewise: its results
feed DeepLIFT's own autograd Function. :func:`rescale_supported` says which calls it takes.
``checksums`` (two sums of each of a model's tensors, the cache key of DeepLIFT and ε-LRP) reads data only:
:func:`checksums_supported` says which tensors it takes.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _jit


_C: ModuleType | None = None
LOAD_ERROR: str | None = None
_loaded = False


def _load_extension() -> tuple[ModuleType | None, str | None]:
    """The ahead-of-time build ``pyexplain._C`` (``setup.py``), else the build at first use
    (:mod:`pyexplain._jit`): ``(module, None)`` or ``(None, why not)``."""
    name = f"{__package__}._C"
    if importlib.util.find_spec(name) is not None:
        try:
            return importlib.import_module(name), None
        except (ImportError, OSError) as exc:  # built against another torch, say: try the cache
            module, why = _jit.load()
            return module, None if module is not None else f"{name} failed to load ({exc}); {why}"
    return _jit.load()


def _ensure_loaded() -> None:
    global _C, LOAD_ERROR, _loaded
    if not _loaded:
        _C, LOAD_ERROR = _load_extension()
        _loaded = True


_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def available() -> bool:
    """True when the compiled extension is loaded (loading, or building it, on the first call)."""
    _ensure_loaded()
    return _C is not None


def build_info() -> dict[str, str]:
    """How the loaded extension was built (empty when it is not loaded)."""
    _ensure_loaded()
    return {key: str(value) for key, value in _C.build_info().items()} if _C is not None else {}


def cuda_built() -> bool:
    """True when the loaded extension has CUDA kernels."""
    _ensure_loaded()
    return _C is not None and _C.build_info()["cuda"] != "not built"


def _broadcast_layout_ok(shape: torch.Size, full: torch.Size) -> bool:
    """The layouts of ``csrc/launch.h``: full, ``[1,C,*]``, ``[N,C,1..]``, ``[1,C,1..]``, scalar."""
    if len(shape) > len(full):
        return False
    padded = (1,) * (len(full) - len(shape)) + tuple(shape)
    if padded == tuple(full) or all(s == 1 for s in padded):
        return True
    if len(full) < 2 or padded[1] != full[1]:
        return False
    tail_equal = padded[2:] == tuple(full[2:])
    tail_ones = all(s == 1 for s in padded[2:])
    return (padded[0] == 1 and (tail_equal or tail_ones)) or (padded[0] == full[0] and tail_ones)


def supported(f: Tensor, full: tuple[Tensor, ...], params: tuple[Tensor, ...]) -> bool:
    """Whether the fused kernels take these arguments (``full`` shaped like ``f``, ``params`` broadcast)."""
    _ensure_loaded()
    if _C is None or f.dim() == 0 or f.numel() == 0:
        return False
    if f.device.type == "cpu":
        dtypes = _CPU_DTYPES
    elif f.device.type == "cuda" and cuda_built():
        dtypes = _CUDA_DTYPES
    else:
        return False
    tensors = (f, *full, *params)
    if f.dtype not in dtypes or any(t.dtype != f.dtype or t.device != f.device for t in tensors):
        return False
    return all(t.shape == f.shape for t in full) and all(_broadcast_layout_ok(p.shape, f.shape) for p in params)


class _PluginRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g_out: Tensor, f: Tensor, f_ref: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(g_out, f, f_ref, weight)
        return _C.plugin_forward(g_out, f, f_ref, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        need_g, need_f, need_ref, need_w = ctx.needs_input_grad
        if not (need_g or need_f or need_ref or need_w):
            return None, None, None, None
        g_out, f, f_ref, weight = ctx.saved_tensors
        args = (grad, g_out, f, f_ref, weight, need_g, need_w, need_f, need_ref)
        # Without create_graph the gradients are final: the kernel alone, no differentiable wrapper.
        dg, dw, df, dref = _PluginRuleGrad.apply(*args) if torch.is_grad_enabled() else _C.plugin_backward(*args)
        return dg, df, dref, dw


class _PluginRuleGrad(torch.autograd.Function):
    """``(dg, dW, df, df_ref)`` of the plugin rule for upstream ``grad``; differentiable once more."""

    @staticmethod
    def forward(ctx, grad, g_out, f, f_ref, weight, need_g, need_w, need_f, need_ref):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad, g_out, f, f_ref, weight)
        return tuple(_C.plugin_backward(grad, g_out, f, f_ref, weight, need_g, need_w, need_f, need_ref))

    @staticmethod
    @once_differentiable
    def backward(ctx, a_g, a_w, a_f, a_ref):
        need = ctx.needs_input_grad[:5]
        if (a_g is None and a_w is None and a_f is None and a_ref is None) or not any(need):
            return (None,) * 9
        grad, g_out, f, f_ref, weight = ctx.saved_tensors
        h_grad, h_g, h_f, h_ref, h_w = _C.plugin_double_backward(
            grad, g_out, f, f_ref, weight, a_g, a_w, a_f, a_ref, *need)
        return h_grad, h_g, h_f, h_ref, h_w, None, None, None, None


class _MaskedReluBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g_out: Tensor, f: Tensor, mask: Tensor, low: float, high: float) -> Tensor:
        ctx.save_for_backward(g_out, f, mask)
        ctx.gate = (low, high)
        return _C.masked_forward(g_out, f, mask, low, high)

    @staticmethod
    def backward(ctx, grad: Tensor):
        need_g, _, need_mask = ctx.needs_input_grad[:3]
        if not (need_g or need_mask):
            return None, None, None, None, None
        g_out, f, mask = ctx.saved_tensors
        args = (grad, g_out, f, mask, *ctx.gate, need_g, need_mask)
        dg, dmask = _MaskedReluGrad.apply(*args) if torch.is_grad_enabled() else _C.masked_backward(*args)
        return dg, None, dmask, None, None


class _MaskedReluGrad(torch.autograd.Function):
    """``(dg, dmask)`` of the masked backward for upstream ``grad``; differentiable once more."""

    @staticmethod
    def forward(ctx, grad, g_out, f, mask, low, high, need_g, need_mask):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad, g_out, f, mask)
        ctx.gate = (low, high)
        return tuple(_C.masked_backward(grad, g_out, f, mask, low, high, need_g, need_mask))

    @staticmethod
    @once_differentiable
    def backward(ctx, a_g, a_mask):
        need_grad, need_g, _, need_mask = ctx.needs_input_grad[:4]
        if (a_g is None and a_mask is None) or not (need_grad or need_g or need_mask):
            return (None,) * 8
        grad, g_out, f, mask = ctx.saved_tensors
        h_grad, h_g, h_mask = _C.masked_double_backward(
            grad, g_out, f, mask, a_g, a_mask, *ctx.gate, need_grad, need_g, need_mask)
        return h_grad, h_g, None, h_mask, None, None, None, None


def plugin_rule(g_out: Tensor, f: Tensor, f_ref: Tensor, weight: Tensor) -> Tensor:
    """Fused ``g_out ⊙ tanh(W ⊙ (f − f_ref))`` (arguments already checked by :func:`supported`)."""
    return _PluginRule.apply(g_out, f, f_ref, weight)


def masked_relu_backward(g_out: Tensor, f: Tensor, mask: Tensor, low: float, high: float) -> Tensor:
    """Fused ``g_out ⊙ 1[low < f < high] ⊙ mask`` (arguments already checked by :func:`supported`)."""
    return _MaskedReluBackward.apply(g_out, f, mask, float(low), float(high))


def stats_supported(g: Tensor, weight: Tensor, reference: Tensor | None) -> bool:
    """Whether :func:`abs_channel_stats` takes these arguments (and the loaded extension has the op):
    CPU float32/float64, ``g`` a contiguous ``[N, C, H, W]`` with ``H·W > 0``, ``weight`` a contiguous
    ``[C]`` and ``reference`` a contiguous tensor shaped like ``g`` (or None), all of one dtype, none
    requiring a gradient."""
    _ensure_loaded()
    if getattr(_C, "abs_channel_stats", None) is None:  # not loaded, or built from sources without the op
        return False
    if g.dtype not in _CPU_DTYPES or g.device.type != "cpu" or g.dim() != 4 or g.requires_grad:
        return False
    if not g.is_contiguous() or g.shape[2] * g.shape[3] == 0:
        return False
    if (weight.dtype != g.dtype or weight.device.type != "cpu" or weight.shape != (g.shape[1],)
            or not weight.is_contiguous() or weight.requires_grad):
        return False
    return reference is None or (reference.dtype == g.dtype and reference.device.type == "cpu"
                                 and reference.shape == g.shape and reference.is_contiguous()
                                 and not reference.requires_grad)


def abs_channel_stats(g: Tensor, weight: Tensor, reference: Tensor | None,
                      threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """Fused ``(min_s m, max_s m, Σ_c weight_c·m_c)`` of ``m = |g|`` or ``|g|·1[reference > threshold]``
    in one pass over ``g`` (arguments already checked by :func:`stats_supported`); not differentiable."""
    low, high, total = _C.abs_channel_stats(g, weight, reference, float(threshold))
    return low, high, total


def elementwise_supported(name: str, first: Tensor, *others: Tensor) -> bool:
    """Whether the one-pass op ``name`` (``epsilon_divide``, ``proportional_split``) takes these
    arguments (and the loaded extension has it): contiguous CPU float32/float64 tensors of one dtype
    and shape, none to be differentiated (grad mode off, as in a backward pass, or none requiring a
    gradient): the ops have no autograd."""
    _ensure_loaded()
    if getattr(_C, name, None) is None:
        return False
    tensors = (first, *others)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return all(t.dtype == first.dtype and t.dtype in _CPU_DTYPES and t.device.type == "cpu" and t.shape == first.shape
               and t.is_contiguous() for t in tensors)


def epsilon_divide(r: Tensor, z: Tensor, epsilon: float) -> Tensor:
    """Fused ``r / (z + ε·s(z))`` (arguments already checked by :func:`elementwise_supported`)."""
    return _C.epsilon_divide(r, z, float(epsilon))


def proportional_split(r: Tensor, a: Tensor, b: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """Fused ``(a·q, b·q)``, ``q = r / (a + b + ε·s(a + b))`` (arguments already checked by
    :func:`elementwise_supported`)."""
    out_a, out_b = _C.proportional_split(r, a, b, float(epsilon))
    return out_a, out_b


#: The kernel's code of each piecewise-linear activation kind (``csrc/rescale.h``).
RESCALE_KINDS = {"relu": 0, "hardtanh": 1, "leaky_relu": 2}


def rescale_supported(kind: str, f: Tensor, reference: Tensor) -> bool:
    """Whether :func:`rescale` takes these arguments (and the loaded extension has the op): ``kind`` in
    :data:`RESCALE_KINDS`, CPU float32/float64, ``f`` non-empty and contiguous, ``reference`` contiguous
    and shaped like ``f`` or ``[1, *f.shape[1:]]``, both of one dtype, neither requiring a gradient."""
    _ensure_loaded()
    if getattr(_C, "rescale", None) is None or kind not in RESCALE_KINDS:
        return False
    if f.dtype not in _CPU_DTYPES or f.device.type != "cpu" or f.dim() == 0 or f.numel() == 0:
        return False
    if reference.dtype != f.dtype or reference.device.type != "cpu" or f.requires_grad or reference.requires_grad:
        return False
    if reference.shape != f.shape and (reference.dim() != f.dim() or reference.shape[0] != 1
                                       or reference.shape[1:] != f.shape[1:]):
        return False
    return f.is_contiguous() and reference.is_contiguous()


def rescale(kind: str, f: Tensor, reference: Tensor, low: float, high: float, negative_slope: float,
            eps: float) -> tuple[Tensor, Tensor]:
    """Fused ``(φ(f), m)`` of DeepLIFT's rescale rule in one pass over ``f`` and ``reference`` (arguments
    already checked by :func:`rescale_supported`); not differentiable."""
    value, multiplier = _C.rescale(f, reference, RESCALE_KINDS[kind], float(low), float(high),
                                   float(negative_slope), float(eps))
    return value, multiplier


_SUM_DTYPES = (torch.float32, torch.float64, torch.int64)


def checksums_supported(tensors: list[Tensor]) -> list[bool]:
    """Which of ``tensors`` :func:`checksums` takes (none when the loaded extension lacks the op):
    contiguous CPU float32, float64 or int64 tensors."""
    _ensure_loaded()
    if getattr(_C, "checksums", None) is None:
        return [False] * len(tensors)
    return [t.is_cpu and t.dtype in _SUM_DTYPES and t.is_contiguous() for t in tensors]


def checksums(tensors: list[Tensor]) -> list[list[float]]:
    """Fused ``[Σᵢ tᵢ, Σᵢ (i + 1)·tᵢ]`` of every tensor (flattened), accumulated in float64, one pass over
    each (tensors already checked by :func:`checksums_supported`)."""
    return _C.checksums(tensors).tolist()
