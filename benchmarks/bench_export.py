"""Latency per image of an exported explainer in ONNX Runtime vs pyexplain eager vs Captum.

    python benchmarks/bench_export.py [--models efficientnet_lite0,resnet18] [--methods saliency,guided_backprop,gradcam]
                                      [--size 224] [--batches 1,8] [--repeats 3]

Each (model, method, runner) runs in its own process so its peak resident memory (max RSS, which
includes torch and the model) is its own. ONNX Runtime and torch get the same thread count. The CUDA
execution provider is measured when ONNX Runtime has it and a GPU is present. Prints a Markdown table
(milliseconds per image, median of ``--repeats`` timed runs after one warm-up) and the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNNERS = ("onnxruntime-cpu", "onnxruntime-cuda", "pyexplain-eager", "captum")
CHILDREN = RUNNERS + ("fidelity",)


def _model(name: str, size: int):
    import torch

    from pyexplain.models import load_model

    torch.manual_seed(0)
    model, _ = load_model(name, random_weights=name != "efficientnet_lite0", input_size=size)
    return model


def _captum(model, method: str, x, target):
    import torch.nn.functional as F
    from captum.attr import GuidedBackprop, LayerGradCam, Saliency

    from pyexplain.core.layers import default_cam_layer, get_layer

    if method == "saliency":
        return Saliency(model).attribute(x, target=target, abs=True)
    if method == "guided_backprop":
        return GuidedBackprop(model).attribute(x, target=target)
    layer = get_layer(model, default_cam_layer(model, x))
    cam = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)


def fidelity(args: argparse.Namespace) -> dict:
    """ONNX Runtime's attribution vs eager on four real photos: per-row max |difference| / max |eager|
    and the Pearson correlation of the maps (float32 rounding can flip a near-threshold gate)."""
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F

    import pyexplain
    from pyexplain.io import builtin_image
    from pyexplain.models import load_model

    model = _model(args.model, args.size)
    _, preprocess = load_model("efficientnet_lite0")
    x = torch.cat([preprocess(builtin_image(n)) for n in ("chelsea", "coffee", "astronaut", "rocket")])
    x = F.interpolate(x, size=(args.size, args.size), mode="bilinear", align_corners=False)
    session = ort.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
    _, attribution = session.run(None, {"image": x.numpy(), "target": torch.full((4,), -1).numpy()})
    exported, eager = torch.from_numpy(attribution), pyexplain.explain(model, x, args.method).attribution
    error = (exported - eager).abs().flatten(1).amax(1) / eager.abs().flatten(1).amax(1)
    maps = torch.stack([exported.sum(1).flatten(1), eager.sum(1).flatten(1)], 1)
    correlation = [float(torch.corrcoef(m)[0, 1]) for m in maps]
    return {"relative_error": [float(e) for e in error], "correlation": correlation}


def measure(args: argparse.Namespace) -> dict:
    """One runner on one model and method: ms per image for each batch size, and this process's peak RSS."""
    import torch

    import pyexplain

    torch.set_num_threads(args.threads)
    model = _model(args.model, args.size)
    runs: dict[int, float] = {}
    for batch in args.batches:
        x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(batch))
        target = torch.full((batch,), -1)
        if args.runner.startswith("onnxruntime"):
            import onnxruntime as ort

            provider = "CUDAExecutionProvider" if args.runner.endswith("cuda") else "CPUExecutionProvider"
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(args.onnx, options, providers=[provider])
            feeds = {"image": x.numpy(), "target": target.numpy()}
            step = lambda: session.run(None, feeds)  # noqa: E731
        elif args.runner == "pyexplain-eager":
            step = lambda: pyexplain.explain(model, x, args.method)  # noqa: E731
        else:
            top1 = model(x).argmax(1)
            step = lambda: _captum(model, args.method, x, top1)  # noqa: E731
        step()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        runs[batch] = 1000 * statistics.median(times) / batch
    return {"ms_per_image": runs, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _child(args: argparse.Namespace, runner: str, model: str, method: str, onnx: str) -> dict:
    command = [sys.executable, __file__, "--child", runner, "--models", model, "--methods", method, "--size",
               str(args.size), "--batches", ",".join(map(str, args.batches)), "--repeats", str(args.repeats),
               "--threads", str(args.threads), "--onnx", onnx]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "child failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _export(model_name: str, method: str, size: int, path: Path) -> tuple[float, float]:
    import torch

    from pyexplain.export import export_explainer

    model = _model(model_name, size)
    start = time.perf_counter()
    export_explainer(model, method, "onnx", path, torch.zeros(1, 3, size, size))
    return time.perf_counter() - start, path.stat().st_size / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet_lite0,resnet18")
    parser.add_argument("--methods", default="saliency,guided_backprop,gradcam")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", default="1,8", type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=CHILDREN)
    parser.add_argument("--onnx", default="")
    args = parser.parse_args()
    models, methods = args.models.split(","), args.methods.split(",")
    if args.child:
        args.runner, args.model, args.method = args.child, models[0], methods[0]
        print(json.dumps(fidelity(args) if args.child == "fidelity" else measure(args)))
        return

    import onnxruntime as ort
    import torch

    cuda = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {args.threads} threads, "
          f"{args.size}x{args.size}, median of {args.repeats} runs after a warm-up\n")
    header = "| model | method | runner | " + " | ".join(f"ms/image (batch {b})" for b in args.batches) + " | peak RSS MB |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    ratios, agreement = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            for method in methods:
                onnx = Path(tmp) / f"{model}_{method}.onnx"
                seconds, megabytes = _export(model, method, args.size, onnx)
                rows = {}
                for runner in RUNNERS:
                    if runner == "onnxruntime-cuda" and not cuda:
                        print(f"| {model} | {method} | {runner} | " + " | ".join("not measured (no GPU)" for _ in args.batches) + " | - |")
                        continue
                    rows[runner] = _child(args, runner, model, method, str(onnx))
                    cells = " | ".join(f"{rows[runner]['ms_per_image'][str(b)]:.1f}" for b in args.batches)
                    print(f"| {model} | {method} | {runner} | {cells} | {rows[runner]['peak_rss_mb']:.0f} |", flush=True)
                check = _child(args, "fidelity", model, method, str(onnx))
                agreement.append(f"{model} {method}: max|ONNX Runtime − eager|/max|eager| per photo "
                                 + ", ".join(f"{e:.1e}" for e in check["relative_error"]) + "; map correlation "
                                 + ", ".join(f"{c:.6f}" for c in check["correlation"]))
                for b in args.batches:
                    ort_ms = rows["onnxruntime-cpu"]["ms_per_image"][str(b)]
                    ratios.append(f"{model} {method} batch {b}: eager/ONNX Runtime "
                                  f"{rows['pyexplain-eager']['ms_per_image'][str(b)] / ort_ms:.2f}x, Captum/ONNX Runtime "
                                  f"{rows['captum']['ms_per_image'][str(b)] / ort_ms:.2f}x (export {seconds:.1f} s, "
                                  f"{megabytes:.0f} MB)")
    print("\nratios (higher = ONNX Runtime faster):")
    for line in ratios:
        print("- " + line)
    print("\nONNX Runtime vs eager on chelsea, coffee, astronaut, rocket (top-1):")
    for line in agreement:
        print("- " + line)


if __name__ == "__main__":
    main()
