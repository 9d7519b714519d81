"""Throughput of ``pyexplain explain-dataset`` over a folder: 1 vs 2 processes (torchrun, gloo) on
the CPU for Grad×Input, LPR and DMBP; for Grad×Input also 2 threads, channels-last, and bfloat16
autocast with its effect on the maps (Spearman rank correlation with float32; per-method precision
figures: bench_precision.py). Prints a markdown table (for benchmarks/RESULTS.md).

    PYTHONPATH=$PWD python benchmarks/bench_dataset.py [--images 12] [--iterative-images 4] [--batch-size 2]
        [--lpr-iterations 50] [--dmbp-iterations 50]

LPR and DMBP run over the first ``--iterative-images`` photos with ``-O iterations=N`` (LPR's
default is 50, DMBP's 200).

images/s counts explained images over the work phase (after model loading and the scan), as the
run's own summary reports it; "wall" includes process start-up. Peak memory: max RSS per process.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyexplain.errors import PyExplainError  # noqa: E402
from pyexplain.io import builtin_image  # noqa: E402
from pyexplain.registry import get_method  # noqa: E402

NO_GPU = "not measured (no GPU available)"
METHODS = ("lpr", "dmbp", "gradxinput")  # each with its default options
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle", "immunohistochemistry")


def make_folder(root: Path, count: int) -> None:
    """``count`` photos from scikit-image (originals, mirrored, flipped), two subfolders deep."""
    variants = [lambda im: im, ImageOps.mirror, ImageOps.flip, lambda im: ImageOps.mirror(ImageOps.flip(im))]
    for i in range(count):
        image = variants[(i // len(PHOTOS)) % len(variants)](builtin_image(PHOTOS[i % len(PHOTOS)]))
        path = root / f"part{i % 2}" / f"img{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=92)


def run(src: Path, out: Path, method: str, processes: int, threads: int, extra: list[str], batch: int) -> dict:
    """One ``explain-dataset`` run in a fresh process (or ``processes`` under torchrun); its summary."""
    summary = out.parent / f"{out.name}.json"
    command = ["-m", "pyexplain", "explain-dataset", str(src), "--out", str(out), "--method", method,
               "--batch-size", str(batch), "--no-progress", "--summary", str(summary), *extra]
    if processes > 1:
        command = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), *command]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"run failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    result = json.loads(summary.read_text())
    result["wall"] = wall
    return result


def rank_correlation(a: Path, b: Path) -> tuple[float, float]:
    from scipy.stats import spearmanr

    values = [spearmanr(np.load(p).ravel(), np.load(b / p.relative_to(a)).ravel())[0] for p in sorted(a.rglob("*.npy"))]
    return float(np.mean(values)), float(np.min(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--iterative-images", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lpr-iterations", type=int, default=50)
    parser.add_argument("--dmbp-iterations", type=int, default=50)
    parser.add_argument("--model", default="efficientnet_lite0")
    args = parser.parse_args()
    model = ["--model", args.model]
    iterations = {"lpr": args.lpr_iterations, "dmbp": args.dmbp_iterations}
    load = os.getloadavg()
    print(f"Machine: {platform.machine()} {os.cpu_count()}-core CPU, no GPU; torch {torch.__version__}; "
          f"model {args.model} at 224x224; JPEG photos: {args.images} (gradxinput), {args.iterative_images} "
          f"(lpr, dmbp); batch size {args.batch_size}; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_folder(tmp / "src", args.images)
        make_folder(tmp / "src-iterative", args.iterative_images)
        for method in METHODS:
            try:
                get_method(method)
            except PyExplainError:
                notes.append(f"{method}: skipped (method not registered in this build)")
                continue
            configs = [("1 process × 1 thread", 1, 1, []), ("2 processes × 1 thread (torchrun, gloo)", 2, 1, [])]
            src, options = tmp / "src", []
            if method in iterations:
                src, options = tmp / "src-iterative", ["-O", f"iterations={iterations[method]}"]
            else:
                configs += [("1 process × 2 threads", 1, 2, []),
                            ("1 process × 1 thread, channels-last", 1, 1, ["--channels-last"]),
                            ("1 process × 1 thread, bfloat16 autocast", 1, 1, ["--precision", "bfloat16"])]
            results = {}
            for label, processes, threads, extra in configs:
                out = tmp / f"{method}-{len(results)}"
                results[label] = run(src, out, method, processes, threads, model + options + extra, args.batch_size)
                results[label]["out"] = out
            base = results["1 process × 1 thread"]
            for label, r in results.items():
                ratio = r["images_per_second"] / base["images_per_second"]
                rows.append((method, str(iterations.get(method, "-")), str(r["explained"]), label,
                             f"{r['images_per_second']:.3f}", f"{ratio:.2f}", f"{r['wall']:.1f}",
                             " / ".join(f"{m:.0f}" for m in r["peak_rss_mib"])))
            bf16 = [r for label, r in results.items() if "bfloat16" in label]
            if bf16:
                mean, low = rank_correlation(base["out"] / "maps", bf16[0]["out"] / "maps")
                notes.append(f"{method}: bfloat16 autocast vs float32 maps, Spearman rank correlation over "
                             f"{args.images} images: mean {mean:.4f}, min {low:.4f}")
            two = results["2 processes × 1 thread (torchrun, gloo)"]["out"]
            same = all((two / p.relative_to(base["out"])).read_bytes() == p.read_bytes()
                       for p in sorted(base["out"].rglob("*")) if p.is_file() and ".pyexplain" not in p.parts)
            notes.append(f"{method}: 2-process outputs (maps + manifest) byte-identical to 1 process × 1 thread: {same}")
            print(f"(done: {method}, load average {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    print("| method | iterations | images | configuration | images/s | × vs 1 process × 1 thread | wall s (with start-up) "
          "| peak RSS MiB per process |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for method in METHODS:
        print(f"| {method} | | | GPU (VGG16 224×224, batched; TF32 / bfloat16 rank correlation) | {NO_GPU} | | | |")
    print()
    load = os.getloadavg()
    notes.append(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
