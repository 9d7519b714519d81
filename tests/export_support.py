"""Shared fixtures of the export tests: models, inputs, eager references and the comparison."""
from __future__ import annotations

import functools
import tempfile
from typing import Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import pyexplain
from pyexplain.core.activations import intercept_activations
from pyexplain.core.rules import replace_backward
from pyexplain.core.targets import Targets
from pyexplain.io import builtin_image
from pyexplain.methods._common import input_gradient
from pyexplain.models import load_model

MODELS = ("efficientnet_lite0", "resnet18", "vgg16")
FIXED_RULES = ("saliency", "gradxinput", "guided_backprop", "deconvnet", "gradcam", "guided_gradcam", "lpr")
#: Input side per model: small for speed (VGG16's adaptive pooling takes its 1×1 map at 32×32).
SIZES = {"efficientnet_lite0": 64, "resnet18": 64, "vgg16": 32}
TOLERANCE = 1e-4
GIVEN = [285, 7, 999, 1]


@functools.lru_cache(maxsize=None)
def model(name: str) -> nn.Module:
    """EfficientNet-Lite0 with its real ImageNet weights; ResNet-18 and VGG16 with seeded random weights
    (the global random state is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net, _ = load_model(name, random_weights=name != "efficientnet_lite0")
    return net


@functools.lru_cache(maxsize=None)
def images(name: str) -> Tensor:
    """Four real photos, ImageNet-normalized, ``[4, 3, S, S]`` with ``S`` the model's test size."""
    _, preprocess = load_model("efficientnet_lite0")
    x = torch.cat([preprocess(builtin_image(n)) for n in ("chelsea", "coffee", "astronaut", "rocket")])
    size = SIZES[name]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@functools.lru_cache(maxsize=None)
def channel_rules(name: str) -> tuple[Tensor | None, ...]:
    """Seeded per-call channel rules on the trunk (spatial) activation calls, ``None`` on the head."""
    from pyexplain.core.activations import list_activation_calls

    generator = torch.Generator().manual_seed(1)
    calls = list_activation_calls(model(name), images(name)[:1]).calls
    return tuple(torch.rand(c.shape[1], generator=generator) * 4 + 0.5 if c.spatial else None for c in calls)


def eager_lpr(net: nn.Module, x: Tensor, targets: Targets, rules) -> Tensor:
    """Frozen channel-rule LPR written directly with the interception machinery and autograd:
    ``g_in = g_out ⊙ tanh(W_c ⊙ (f − f_ref))``, ``f_ref`` from the zero image; ``A = ∂F_t/∂x ⊙ x``."""
    references: list[Tensor] = []

    def record(call, f):
        references.append(f.detach())
        return call.forward(f)

    with torch.no_grad(), intercept_activations(net, record):
        net(torch.zeros_like(x[:1]))

    def rule(call, f):
        weight = rules[call.index]
        if weight is None:
            return call.forward(f)
        w = weight.reshape(1, -1, *([1] * (f.ndim - 2)))
        value, reference = f.detach(), references[call.index]
        return replace_backward(call, f, lambda g: g * torch.tanh(w * (value - reference)))

    return input_gradient(net, x, targets, rule) * x


@functools.lru_cache(maxsize=None)
def reference(name: str, method: str, rows: int, target: tuple[int, ...] | None) -> Tensor:
    """pyexplain's eager attribution of the first ``rows`` images (``target=None``: top-1). Batch sizes
    are never mixed: torch's kernels differ by batch size, and so may a near-threshold gate."""
    net, x = model(name), images(name)[:rows]
    if method == "lpr":
        explicit = None if target is None else torch.tensor(target)
        return eager_lpr(net, x, Targets(explicit), channel_rules(name))
    return pyexplain.explain(net, x, method, target=None if target is None else list(target)).attribution


@functools.lru_cache(maxsize=None)
def logits(name: str) -> Tensor:
    """The model's logits on the four images."""
    with torch.no_grad():
        return model(name)(images(name))


def options(name: str, method: str) -> dict:
    return {"rules": list(channel_rules(name))} if method == "lpr" else {}


@functools.lru_cache(maxsize=None)
def compiled(name: str, method: str):
    from pyexplain.export import compile_explainer

    return compile_explainer(model(name), method, images(name), **options(name, method))


def relative_error(a: Tensor, b: Tensor) -> Tensor:
    """Per row: ``max |a − b| / max |b|`` (0 when both are all zero)."""
    return (a - b).abs().flatten(1).amax(1) / b.abs().flatten(1).amax(1).clamp_min(1e-30)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Inputs here are tiny: one torch thread, so that no OpenMP barrier spins while another process holds
    the second core (imported by the export test modules)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cases(single_top1: bool):
    """``(rows, target tensor, expected)`` with ``expected(name, method)`` the eager attribution: a batch
    of 4 mixing top-1 (``-1``) and given targets, and a batch of 1 with top-1 or a given target."""
    def mixed(name, method):
        a, b = reference(name, method, 4, None), reference(name, method, 4, tuple(GIVEN))
        return torch.stack([a[0], b[1], a[2], b[3]])

    yield 4, torch.tensor([-1, GIVEN[1], -1, GIVEN[3]]), mixed
    if single_top1:
        yield 1, torch.tensor([-1]), lambda name, method: reference(name, method, 1, None)
    else:
        yield 1, torch.tensor(GIVEN[:1]), lambda name, method: reference(name, method, 1, tuple(GIVEN[:1]))


_BRANCH_FILES = tempfile.TemporaryDirectory(prefix="pyexplain-branches-")


def onnx_session(path, options=None):
    """An ONNX Runtime CPU session on ``path`` (``options``: SessionOptions; default: load_explainer's)."""
    import onnxruntime as ort

    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def write_with_branches(explainer, path) -> str:
    """``explainer`` as ONNX with its branch decisions as extra outputs."""
    from pyexplain.export.formats import write_explainer

    return str(write_explainer(explainer, "onnx", path, branches=True))


@functools.lru_cache(maxsize=None)
def onnx_with_branches(name: str, method: str) -> str:
    """``name`` + ``method`` as ONNX with branch outputs, written once per process (removed at exit)."""
    return write_with_branches(compiled(name, method), f"{_BRANCH_FILES.name}/{name}-{method}.onnx")


def run_session(session, x: Tensor, target: Tensor) -> list[Tensor]:
    """``[logits, attribution, *branches]`` of an explainer session."""
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, {"image": x.numpy(), "target": target.long().numpy()})
    return [torch.from_numpy(v) for v in outputs]


#: Rounding level of one float32 forward pass relative to a layer's scale (observed: ~1e-6).
ROUNDING = 1e-4
#: At most this share of a row's gates (or pooling windows) may branch differently from torch.
RARE = 1e-3


def _thresholds(step) -> list[float]:
    return [step.low, step.high] if step.kind == "hardtanh" else [0.0]


def _gate(step, f: Tensor) -> Tensor:
    return step._gate(torch.ones_like(f), f)


def own_branch_failures(explainer, x: Tensor, target: Tensor, outputs: Sequence[Tensor]) -> list[str]:
    """Why a runtime's ``outputs`` (``logits, attribution, *branches`` of an explainer written with
    branch outputs) are not ``explainer``'s computation up to float rounding (empty: they are).

    - logits within 1e-4 of torch's, with the same top-1;
    - each pre-activation within :data:`ROUNDING` of torch's (relative to the layer's largest, per row),
      each gate that differs from torch's with a runtime pre-activation within that of a threshold, and
      at most :data:`RARE` of a row's gates differing; the same for pooling argmaxes, where the two
      pooled values must tie to rounding;
    - the attribution within 1e-4 (relative, per row) of torch's backward pass taken on the runtime's
      own pre-activations, pooling indices and top-1 (:func:`attribution_on_branches`).

    Which gates flip depends on the CPU's kernels; none of these verdicts does."""
    from pyexplain.export.branches import attribution_on_branches, branch_steps

    logits_, attribution, *branches = outputs
    failures = []
    with torch.no_grad():
        values, saved = explainer.run_forward(x)
        expected_logits = values[explainer.output_node]
        if not torch.allclose(logits_, expected_logits, rtol=1e-4, atol=1e-4):
            failures.append(f"logits differ by {float((logits_ - expected_logits).abs().max()):.2e}")
        if not torch.equal(logits_.argmax(1), expected_logits.argmax(1)):
            failures.append("top-1 differs")
        activations, pools = branch_steps(explainer)
        flips = torch.zeros(x.shape[0])
        gates = 0
        for step, f in zip(activations, branches):
            ours = saved[step.node]
            scale = ROUNDING * ours.flatten(1).abs().amax(1).clamp_min(1e-30)
            drift = (f - ours).flatten(1).abs().amax(1)
            if bool((drift > scale).any()):
                failures.append(f"pre-activation {step.index} differs by {drift.max():.2e} (rounding: {scale.max():.2e})")
            flipped = (_gate(step, f) != _gate(step, ours)).flatten(1)
            distance = torch.stack([(f - t).abs() for t in _thresholds(step)]).amin(0).flatten(1)
            if bool((flipped & (distance > scale[:, None])).any()):
                failures.append(f"a gate of activation {step.index} flipped away from its threshold")
            flips += flipped.sum(1)
            gates += flipped.shape[1]
        for j, (step, indices) in enumerate(zip(pools, branches[len(activations):])):
            pooled = values[step.inputs[0]].flatten(2)
            ours = saved[step.node].flatten(2)
            scale = ROUNDING * pooled.flatten(1).abs().amax(1).clamp_min(1e-30)
            moved = indices.flatten(2) != ours
            tie = (pooled.gather(2, indices.flatten(2)) - pooled.gather(2, ours)).abs()
            if bool((moved & (tie > scale[:, None, None])).any()):
                failures.append(f"an argmax of max-pool {j} moved to a value that does not tie")
            flips += moved.flatten(1).sum(1)
            gates += moved[0].numel()
        if bool((flips > RARE * gates).any()):
            failures.append(f"{flips.tolist()} of {gates} branches per row differ from torch's")
        expected = attribution_on_branches(explainer, x, target, logits_, branches)
        error = relative_error(attribution, expected)
        if bool((error > TOLERANCE).any()):
            failures.append(f"attribution differs from torch's on the same branches: {error.tolist()}")
    return failures
