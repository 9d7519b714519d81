"""Speed of every registered method: seconds per image, ratio to one forward pass, ratio to Captum
with the same settings where Captum has the method, and peak memory.

    python benchmarks/bench_methods.py [--models efficientnet_lite0,resnet18,vgg16] [--methods a,b] [--batch 1]

EfficientNet-Lite0 runs with its real weights; torchvision models with random weights (speed only).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, measure  # noqa: E402

import pyexplain  # noqa: E402
from pyexplain.core.layers import default_cam_layer, get_layer  # noqa: E402
from pyexplain.methods._perturb import ROWS_PER_PASS  # noqa: E402

#: Per-method options that keep the run short; the same settings go to Captum.
FAST_OPTIONS: dict[str, dict] = {
    "integrated_gradients": {"steps": 16},
    "smoothgrad": {"samples": 8},
    "smoothgrad_sq": {"samples": 8},
    "blur_ig": {"steps": 16},
    "occlusion": {"window": 56, "stride": 28},
    "rise": {"masks": 64},
    "meaningful_perturbation": {"iterations": 5},
    "extremal_perturbation": {"iterations": 5},
}


def _captum_adapted(method: str, model, x):
    """The model as Captum's DeepLift/LRP need it (one module per activation call, ReLU6 as
    relu(x) − relu(x − 6), residual adds as Addition_Module for LRP), or None where Captum's LRP
    cannot express the model (ReLU6, ZeroPad2d). Built once, outside the timed call."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from baseline_oracles import captum_lrp_resnet, distinct_activations
    from torchvision.models import ResNet

    if method == "deeplift":
        return distinct_activations(model, x)
    if isinstance(model, ResNet):
        return captum_lrp_resnet(model, x, 1e-6)
    if any(isinstance(m, (torch.nn.ReLU6, torch.nn.ZeroPad2d)) for m in model.modules()):
        return None
    return distinct_activations(model, x)


def captum_runner(method: str, model, x, target: int, options: dict) -> Callable[[], object] | None:
    """A zero-argument call of Captum's equivalent of ``method`` with the same settings, or None."""
    import captum.attr as ca

    layer = lambda: get_layer(model, default_cam_layer(model, x))  # noqa: E731
    sigma = 0.15 * float(x.max() - x.min())
    adapted = _captum_adapted(method, model, x) if method in ("deeplift", "lrp_epsilon") else None
    window, stride = options.get("window", 32), options.get("stride", 16)
    table = {
        "saliency": lambda: ca.Saliency(model).attribute(x, target=target),
        "gradxinput": lambda: ca.InputXGradient(model).attribute(x, target=target),
        "integrated_gradients": lambda: ca.IntegratedGradients(model).attribute(
            x, target=target, n_steps=options.get("steps", 50), internal_batch_size=32),
        "smoothgrad": lambda: ca.NoiseTunnel(ca.Saliency(model)).attribute(
            x, target=target, nt_type="smoothgrad", nt_samples=options.get("samples", 50), stdevs=sigma, abs=False),
        "smoothgrad_sq": lambda: ca.NoiseTunnel(ca.Saliency(model)).attribute(
            x, target=target, nt_type="smoothgrad_sq", nt_samples=options.get("samples", 50), stdevs=sigma, abs=False),
        "guided_backprop": lambda: ca.GuidedBackprop(model).attribute(x, target=target),
        "deconvnet": lambda: ca.Deconvolution(model).attribute(x, target=target),
        "gradcam": lambda: ca.LayerGradCam(model, layer()).attribute(x, target=target, relu_attributions=True),
        "guided_gradcam": lambda: ca.GuidedGradCam(model, layer()).attribute(x, target=target),
        "deeplift": lambda: ca.DeepLift(adapted).attribute(x, target=target, baselines=torch.zeros_like(x)),
        "lrp_epsilon": lambda: ca.LRP(adapted).attribute(x, target=target),
        "occlusion": lambda: ca.Occlusion(model).attribute(
            x, target=target, sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=0.0,
            perturbations_per_eval=ROWS_PER_PASS[x.device.type]),  # as many images per forward as pyexplain
    }
    if method == "lrp_epsilon" and adapted is None:
        return None
    return table.get(method)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet_lite0,resnet18,vgg16")
    parser.add_argument("--methods", default="saliency,gradxinput,integrated_gradients,smoothgrad,smoothgrad_sq,"
                                             "guided_backprop,deconvnet,gradcam,guided_gradcam")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-time", action="store_true",
                        help="one torch thread, time the main thread's CPU time (steadier on a shared machine)")
    args = parser.parse_args()
    torch.manual_seed(0)
    clock = time.perf_counter
    if args.cpu_time:
        torch.set_num_threads(1)
        clock = time.thread_time
    print(f"# machine: {machine()}; batch {args.batch}; 224x224; {'CPU' if args.cpu_time else 'wall'} time")
    print("| model | method | s/image | × forward | × Captum | peak MB | Captum peak MB |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model, _ = pyexplain.load_model(name, random_weights=name != "efficientnet_lite0")
        for p in model.parameters():
            p.requires_grad_(False)
        x = torch.randn(args.batch, 3, 224, 224)
        with torch.no_grad():
            target = int(model(x[:1]).argmax())

        def forward() -> None:
            with torch.no_grad():
                model(x)

        timing = {"clock": clock}
        base = measure(forward, args.repeats, **timing)
        for method in args.methods.split(","):
            options = FAST_OPTIONS.get(method, {})
            ours = measure(lambda: pyexplain.explain(model, x, method, target=target, **options), args.repeats,
                           **timing)
            runner = captum_runner(method, model, x, target, options)
            theirs = measure(runner, args.repeats, **timing) if runner else None
            ratio = f"{ours.seconds / theirs.seconds:.2f}" if theirs else "—"
            their_peak = f"{theirs.peak_mb:.0f}" if theirs else "—"
            print(f"| {name} | {method}{' ' + str(options) if options else ''} | {ours.seconds / args.batch:.4f} | "
                  f"{ours.seconds / base.seconds:.2f} | {ratio} | {ours.peak_mb:.0f} | {their_peak} |", flush=True)


if __name__ == "__main__":
    main()
