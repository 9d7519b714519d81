"""Speed of every registered method: seconds per image, ratio to one forward pass, ratio to Captum
with the same settings where Captum has the method, and peak memory.

    python benchmarks/bench_methods.py [--models efficientnet_lite0,resnet18,vgg16] [--methods a,b] [--batch 1]

EfficientNet-Lite0 runs with its real weights; torchvision models with random weights (speed only).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, measure  # noqa: E402

import pyexplain  # noqa: E402
from pyexplain.core.layers import default_cam_layer, get_layer  # noqa: E402

#: Per-method options that keep the run short; the same settings go to Captum.
FAST_OPTIONS: dict[str, dict] = {
    "integrated_gradients": {"steps": 16},
    "smoothgrad": {"samples": 8},
    "smoothgrad_sq": {"samples": 8},
}


def captum_runner(method: str, model, x, target: int, options: dict) -> Callable[[], object] | None:
    """A zero-argument call of Captum's equivalent of ``method`` with the same settings, or None."""
    import captum.attr as ca

    layer = lambda: get_layer(model, default_cam_layer(model, x))  # noqa: E731
    sigma = 0.15 * float(x.max() - x.min())
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
    }
    return table.get(method)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet_lite0,resnet18,vgg16")
    parser.add_argument("--methods", default="saliency,gradxinput,integrated_gradients,smoothgrad,smoothgrad_sq,"
                                             "guided_backprop,deconvnet,gradcam,guided_gradcam")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"# machine: {machine()}; batch {args.batch}; 224x224")
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

        base = measure(forward, args.repeats)
        for method in args.methods.split(","):
            options = FAST_OPTIONS.get(method, {})
            ours = measure(lambda: pyexplain.explain(model, x, method, target=target, **options), args.repeats)
            runner = captum_runner(method, model, x, target, options)
            theirs = measure(runner, args.repeats) if runner else None
            ratio = f"{ours.seconds / theirs.seconds:.2f}" if theirs else "—"
            their_peak = f"{theirs.peak_mb:.0f}" if theirs else "—"
            print(f"| {name} | {method}{' ' + str(options) if options else ''} | {ours.seconds / args.batch:.4f} | "
                  f"{ours.seconds / base.seconds:.2f} | {ratio} | {ours.peak_mb:.0f} | {their_peak} |", flush=True)


if __name__ == "__main__":
    main()
