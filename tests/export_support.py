"""Shared fixtures of the export tests: models, inputs, eager references and the comparison."""
from __future__ import annotations

import functools
import tempfile

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import pyexplain
from pyexplain.core.activations import intercept_activations
from pyexplain.core.rules import replace_backward
from pyexplain.core.targets import Targets
from pyexplain.export.formats import ONNX_OPSET
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


class GateProbe(nn.Module):
    """A compiled explainer's forward pass returning what its backward pass branches on: the logits,
    every activation gate ``φ'(f)`` and every max-pool argmax. Exported beside an ONNX explainer, it
    shows where ONNX Runtime's float32 rounding put a pre-activation on the other side of a threshold."""

    def __init__(self, explainer) -> None:
        super().__init__()
        from pyexplain.export import steps as S

        self.explainer = explainer
        self.activations = [s for s in explainer.steps if isinstance(s, S.Activation)]
        self.pools = [s for s in explainer.steps if isinstance(s, S.MaxPool)]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        values, saved = self.explainer.run_forward(x)
        gates = torch.cat([s._gate(torch.ones_like(saved[s.node]), saved[s.node]).flatten(1)
                           for s in self.activations], 1)
        pools = [saved[s.node].flatten(1) for s in self.pools] or [torch.zeros_like(x[:, :1, 0, 0]).long()]
        return values[self.explainer.output_node], gates, torch.cat(pools, 1)


def export_probe(name: str, path) -> None:
    """Write the :class:`GateProbe` of ``name`` as ONNX with the explainers' exporter settings (the forward
    pass, and so the probe, is the same for every rule)."""
    probe = GateProbe(compiled(name, "saliency")).eval()
    names = ["logits", "gates", "pools"]
    axes = {n: {0: "batch"} for n in ["image"] + names}
    torch.onnx.export(probe, (images(name)[:2],), str(path), dynamo=False, opset_version=ONNX_OPSET,
                      input_names=["image"], output_names=names, dynamic_axes=axes,
                      training=torch.onnx.TrainingMode.PRESERVE)


def branch_differences(name: str, rows: int, path, session_options=None) -> dict[str, Tensor]:
    """Per row of the first ``rows`` images, where ONNX Runtime (running the probe at ``path``) and torch
    branch differently: ``gates`` and ``pools`` (counts of flipped activation gates and max-pool argmaxes),
    ``top1`` (whether the top-1 class differs), ``logits`` (their relative difference), and
    ``gate_count``, the gates per image."""
    import onnxruntime as ort

    x = images(name)[:rows]
    session = ort.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])
    outputs = session.run(["logits", "gates", "pools"], {"image": x.numpy()})
    logits_, gates, pools = (torch.from_numpy(v) for v in outputs)
    with torch.no_grad():
        ref_logits, ref_gates, ref_pools = GateProbe(compiled(name, "saliency")).eval()(x)
    return {"gates": (gates != ref_gates).sum(1), "pools": (pools != ref_pools).sum(1),
            "top1": logits_.argmax(1) != ref_logits.argmax(1), "logits": relative_error(logits_, ref_logits),
            "gate_count": gates.shape[1]}


_PROBES = tempfile.TemporaryDirectory(prefix="pyexplain-probes-")


@functools.lru_cache(maxsize=None)
def probe_path(name: str) -> str:
    """``name``'s probe, exported once per process (removed at exit)."""
    path = f"{_PROBES.name}/{name}.onnx"
    export_probe(name, path)
    return path


@functools.lru_cache(maxsize=None)
def onnx_branch_flips(name: str, rows: int) -> dict[str, Tensor]:
    """:func:`branch_differences` with the session settings of ``load_explainer``."""
    return branch_differences(name, rows, probe_path(name))


def flipped_rows(name: str, method: str, rows: int, target: Tensor) -> Tensor:
    """Rows where ONNX Runtime provably takes another branch than torch for ``method``: a flipped pooling
    argmax, a flipped gate (every rule but Deconvnet reads the gates), or a different top-1 class where
    the target is top-1 (``-1``)."""
    flips = onnx_branch_flips(name, rows)
    branches = flips["pools"] > 0
    if method != "deconvnet":
        branches |= flips["gates"] > 0
    return branches | (flips["top1"] & (target < 0))
