"""Fixed-rule methods against their peers: time ratios to Captum/Zennit, the maps' largest relative
difference, and time per forward pass, on EfficientNet-Lite0, VGG16 and ResNet-50 at batch 1 and 8.

    python benchmarks/bench_fixed_rules.py [--models efficientnet_lite0,vgg16,resnet50] [--batches 1,8]
                                           [--methods saliency,...] [--rounds 3] [--rounds-large 2]
                                           [--fallback-too]

One intra-op thread, the main thread's CPU time (``time.thread_time``); per model and batch, every
candidate (the forward pass, each pyexplain method, each peer) runs once per round, interleaved,
and the fastest round counts; the order reverses every round. ``--rounds-large`` applies to VGG16 and ResNet-50 at batch > 1.
Random weights for VGG16 and ResNet-50, real ones for EfficientNet-Lite0; one random input per
model and batch, targets the top-1 classes. Peers run on the adaptations the tests use
(tests/baseline_oracles.py), built before timing. The map difference is
``max |ours − peer| / max |peer|`` (Grad-CAM: our channel sum against Captum's layer map upsampled
bilinearly). ``--fallback-too`` adds each method run with the pure-PyTorch ops (``ops.use_fallback``)
as one more interleaved candidate, its map difference taken against the compiled kernels' map.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

import pyexplain  # noqa: E402
from pyexplain import ops  # noqa: E402
from pyexplain.core.canonize import fold_batchnorm  # noqa: E402
from pyexplain.core.layers import default_cam_layer, get_layer  # noqa: E402

METHODS = ("saliency", "gradxinput", "guided_backprop", "deconvnet", "gradcam", "guided_gradcam", "deeplift",
           "lrp_epsilon", "fullgrad")


def peer(method: str, model, x: torch.Tensor, targets: list[int]) -> tuple[str, Callable[[], torch.Tensor]] | None:
    """``(name, call)`` of the peer implementation of ``method`` with the same settings, or None."""
    import captum.attr as ca
    from baseline_oracles import distinct_activations, sums_as_zennit_modules, zennit_epsilon_lrp
    from torchvision.models import ResNet, VGG
    from zennit.torchvision import ResNetCanonizer

    layer = get_layer(model, default_cam_layer(model, x))
    if method == "saliency":
        return "Captum", lambda: ca.Saliency(model).attribute(x, target=targets)
    if method == "gradxinput":
        return "Captum", lambda: ca.InputXGradient(model).attribute(x, target=targets)
    if method == "guided_backprop":
        return "Captum", lambda: ca.GuidedBackprop(model).attribute(x, target=targets)
    if method == "deconvnet":
        return "Captum", lambda: ca.Deconvolution(model).attribute(x, target=targets)
    if method == "gradcam":
        return "Captum", lambda: ca.LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
    if method == "guided_gradcam":
        return "Captum", lambda: ca.GuidedGradCam(model, layer).attribute(x, target=targets)
    if method == "deeplift":
        adapted = distinct_activations(model, x)
        reference = torch.zeros_like(x)
        return "Captum", lambda: ca.DeepLift(adapted).attribute(x, target=targets, baselines=reference)
    if method == "lrp_epsilon":
        if isinstance(model, ResNet):
            zennit_model, canonizers = copy.deepcopy(model), [ResNetCanonizer()]
        elif isinstance(model, VGG):
            zennit_model, canonizers = copy.deepcopy(model), []
        else:
            zennit_model, canonizers = sums_as_zennit_modules(fold_batchnorm(model)), []
        return "Zennit", lambda: zennit_epsilon_lrp(zennit_model, x, targets, 1e-6, canonizers)
    return None


def largest_difference(method: str, ours: torch.Tensor, theirs: torch.Tensor) -> float:
    if method == "gradcam":
        ours = ours.sum(1)
        theirs = F.interpolate(theirs, size=ours.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return relative_difference(ours, theirs)


def relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30))


def with_fallback(fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    with ops.use_fallback():
        return fn()


def run(name: str, batch: int, rounds: int, methods: tuple[str, ...] = METHODS, fallback_too: bool = False) -> list[str]:
    model, _ = pyexplain.load_model(name, random_weights=name != "efficientnet_lite0")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        targets = model(x).argmax(1).tolist()

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    candidates: dict[str, Callable[[], torch.Tensor]] = {"forward": forward}
    peers: dict[str, str] = {}
    for method in methods:
        candidates[method] = lambda m=method: pyexplain.explain(model, x, m, target=targets).attribution
        if fallback_too:
            candidates["fallback:" + method] = lambda m=method: with_fallback(lambda: candidates[m]())
        found = peer(method, model, x, targets)
        if found:
            peers[method] = found[0]
            candidates["peer:" + method] = found[1]
    best = {key: float("inf") for key in candidates}
    outputs: dict[str, torch.Tensor] = {}
    order = list(candidates.items())
    for _ in range(rounds):
        order.reverse()  # each candidate runs both before and after its peer (allocator and cache state)
        for key, fn in order:
            start = time.thread_time()
            out = fn()
            best[key] = min(best[key], time.thread_time() - start)
            outputs[key] = out.detach()
    rows = []
    for method in methods:
        ratio_forward = best[method] / best["forward"]
        if method in peers:
            theirs = outputs["peer:" + method]
            rows.append(f"| {name} | {batch} | {method} | {peers[method]} | {best[method] / best['peer:' + method]:.2f} | "
                        f"{largest_difference(method, outputs[method], theirs):.1e} | {ratio_forward:.2f} | "
                        f"{best['peer:' + method] / best['forward']:.2f} |")
        else:
            rows.append(f"| {name} | {batch} | {method} | — | — | — | {ratio_forward:.2f} | — |")
        if fallback_too:
            key = "fallback:" + method
            rows.append(f"| {name} | {batch} | {method}, fallback ops | {method} | {best[key] / best[method]:.2f} | "
                        f"{relative_difference(outputs[key], outputs[method]):.1e} | "
                        f"{best[key] / best['forward']:.2f} | |")
    rows.append(f"| {name} | {batch} | (forward, s) | | | | {best['forward']:.3f} | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet_lite0,vgg16,resnet50")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rounds-large", type=int, default=2)
    parser.add_argument("--fallback-too", action="store_true", help="also time each method on the pure-PyTorch ops")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    start = time.perf_counter()
    print(f"# {machine()}; one thread, thread CPU time, fastest of {args.rounds} rounds "
          f"({args.rounds_large} for VGG16/ResNet-50 at batch > 1); 224x224")
    print("| model | batch | method | peer | × peer time | max rel. map difference | × forward | peer × forward |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        for name in args.models.split(","):
            rounds = args.rounds_large if batch > 1 and name != "efficientnet_lite0" else args.rounds
            for row in run(name, batch, rounds, tuple(args.methods.split(",")), args.fallback_too):
                print(row, flush=True)
    print(f"# wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
