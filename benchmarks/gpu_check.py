"""The GPU path, checked in one command: build, correctness, speed.

    python benchmarks/gpu_check.py --out DIR            # on a CUDA machine, nothing prepared
    python benchmarks/gpu_check.py --out DIR --dry-run  # the same steps at toy sizes, on the CPU

Steps, each recorded as it finishes (``DIR/results.json`` and ``DIR/results.md`` are rewritten after
every step, so a run cut short keeps its finished rows; a step that fails is recorded as an error
and the next one runs):

1. ``build``      compile the fused kernels (CUDA too where a toolkit is found) at first use.
2. ``tests``      the kernel tests (``tests/test_kernels.py``, ``tests/test_kernel_guard.py``).
3. ``selfcheck``  each fused op against the fallback on the device: the guard's check, and
                  gradcheck/gradgradcheck in float64 at small shapes.
4. ``ops``        op microbenchmark, fused vs eager fallback (SPEC §9: ≥ 3× on a GPU).
5. ``lpr``        LPR, 50 iterations, batched, VGG16 at 224×224 (target ≥ 10 images/s).
6. ``dmbp``       DMBP, 200 iterations (target ≥ 5 images/s).
7. ``fixed``      Grad×Input and Grad-CAM images/s.
8. ``dataset``    ``explain-dataset`` throughput with its probe-chosen batch size.
9. ``precision``  TF32 and bfloat16 against float32: time and map Spearman.
10. ``onnx``      an exported explainer through ONNX Runtime's CUDA provider against eager.

Random weights throughout (speed, not quality). ``--dry-run`` uses a small VGG-style network at
32×32, two images and a few iterations, on the CPU; CI runs it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyexplain  # noqa: E402
from pyexplain import _kernels, ops  # noqa: E402


@dataclass
class Row:
    step: str
    name: str
    value: float | str
    unit: str = ""
    target: str = ""
    passed: bool | None = None
    note: str = ""


@dataclass
class Sizes:
    """What each step runs on: the real sizes on a GPU, toy ones for ``--dry-run``."""

    device: torch.device
    image: int
    batch: int
    lpr_iterations: int
    dmbp_iterations: int
    fixed_batch: int
    dataset_images: int
    op_shape: tuple[int, ...]
    repeats: int
    model: Callable[[], nn.Module] = field(repr=False)
    dataset_model: str = "vgg16"
    judge_speed: bool = True  # toy sizes measure nothing worth a verdict


def tiny_vgg() -> nn.Module:
    """A VGG-style network small enough for the dry run on a CPU."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
    )


def vgg16() -> nn.Module:
    from torchvision.models import vgg16 as build

    return build(weights=None)


def sizes_for(dry_run: bool) -> Sizes:
    if dry_run:
        return Sizes(torch.device("cpu"), 32, 2, 3, 3, 2, 4, (2, 8, 16, 16), 2, tiny_vgg, "resnet18", judge_speed=False)
    return Sizes(torch.device("cuda"), 224, 32, 50, 200, 64, 512, (32, 64, 112, 112), 10, vgg16)


class Report:
    """Rows written to ``results.json`` and ``results.md`` after every step."""

    def __init__(self, out: Path, header: dict[str, str]) -> None:
        self.out, self.header, self.rows = out, header, []
        out.mkdir(parents=True, exist_ok=True)

    def add(self, rows: list[Row]) -> None:
        self.rows.extend(rows)
        for row in rows:
            verdict = "" if row.passed is None else (" ok" if row.passed else " BELOW TARGET")
            print(f"[{row.step}] {row.name}: {row.value} {row.unit}{verdict} {row.note}".rstrip(), flush=True)
        self.write()

    def write(self) -> None:
        payload = {"header": self.header, "rows": [asdict(r) for r in self.rows]}
        (self.out / "results.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        lines = [f"# GPU check ({self.header['mode']})", ""]
        lines += [f"- {key}: {value}" for key, value in self.header.items()]
        lines += ["", "| step | measurement | value | unit | target | verdict | note |", "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            value = f"{r.value:.4g}" if isinstance(r.value, float) else str(r.value)
            verdict = "" if r.passed is None else ("ok" if r.passed else "below target")
            lines.append(f"| {r.step} | {r.name} | {value} | {r.unit} | {r.target} | {verdict} | {r.note} |")
        (self.out / "results.md").write_text("\n".join(lines) + "\n")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fastest(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Fastest wall time of ``repeats`` calls after one warm-up (synchronized on CUDA)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.flatten().double().cpu().numpy(), b.flatten().double().cpu().numpy()).statistic)


def images(s: Sizes, count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, s.image, s.image, generator=torch.Generator().manual_seed(seed)).to(s.device)


def model_on(s: Sizes) -> nn.Module:
    torch.manual_seed(0)
    return s.model().to(s.device).eval()


# --- the steps -------------------------------------------------------------------------------------

def step_build(s: Sizes) -> list[Row]:
    start = time.perf_counter()
    loaded = _kernels.available()
    seconds = time.perf_counter() - start
    if not loaded:
        return [Row("build", "extension", "not loaded", note=str(_kernels.LOAD_ERROR))]
    info = _kernels.build_info()
    cuda_ok = _kernels.cuda_built()
    rows = [Row("build", "extension loaded (incl. any build at first use)", seconds, "s", note=info.get("cuda", ""))]
    if s.device.type == "cuda":
        rows.append(Row("build", "CUDA kernels built", str(cuda_ok), passed=cuda_ok))
    return rows


def step_tests(s: Sizes) -> list[Row]:
    files = ["tests/test_kernels.py", "tests/test_kernel_guard.py"]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
    if s.device.type != "cuda":
        command += ["-k", "cuda"]  # the dry run collects the CUDA tests (they skip without a GPU)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    summary = (result.stdout.strip().splitlines() or ["no output"])[-1]
    return [Row("tests", "kernel tests", summary, passed=result.returncode in (0, 5))]


def step_selfcheck(s: Sizes) -> list[Row]:
    from torch.autograd import gradcheck, gradgradcheck

    rows = []
    fused_here = s.device.type == "cpu" or _kernels.cuda_built()
    for op in ops.FUSED_OPS:
        trusted = ops.kernels_trusted(op, s.device) if fused_here else None
        rows.append(Row("selfcheck", f"{op} guard check on {s.device.type}", str(trusted), passed=trusted,
                        note=ops.disabled_kernels().get(s.device.type, "")))
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape, low=-1.0, high=1.0):
        t = torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low
        return t.to(s.device).requires_grad_()

    plugin = (leaf(2, 3, 4, 5), leaf(2, 3, 4, 5), leaf(1, 3, 4, 5), leaf(1, 3, 1, 1, low=-2, high=2))
    masked = (leaf(2, 3, 4, 5), leaf(2, 3, 4, 5, low=-2, high=8), leaf(2, 3, 4, 5, low=0, high=1))
    masked_fn = lambda g, f, m: ops.masked_relu_backward(g, f, m, 0.0, 6.0)  # noqa: E731
    for name, fn, args in (("plugin_rule", ops.plugin_rule, plugin), ("masked_relu_backward", masked_fn, masked)):
        first = gradcheck(fn, args, raise_exception=False)
        second = gradgradcheck(fn, args, raise_exception=False)
        rows.append(Row("selfcheck", f"{name} gradcheck / gradgradcheck float64", f"{first} / {second}",
                        passed=first and second))
    return rows


def step_ops(s: Sizes) -> list[Row]:
    gen = torch.Generator().manual_seed(1)
    f = torch.randn(s.op_shape, generator=gen).to(s.device)
    g = torch.randn(s.op_shape, generator=gen).to(s.device)
    ref = torch.zeros_like(f[:1])
    weight = torch.randn(f[:1].shape, generator=gen).to(s.device).requires_grad_()

    def second_order() -> None:
        out = ops.plugin_rule(g, f, ref, weight)
        (grad_w,) = torch.autograd.grad(out.square().sum(), weight, create_graph=True)
        grad_w.square().sum().backward()

    rows = []
    for name, fn in (("plugin_rule forward", lambda: ops.plugin_rule(g, f, ref, weight.detach())),
                     ("plugin_rule forward+backward+double backward", second_order),
                     ("masked_relu_backward forward", lambda: ops.masked_relu_backward(g, f, weight.detach()))):
        fused = fastest(fn, s.device, s.repeats)
        with ops.use_fallback():
            eager = fastest(fn, s.device, s.repeats)
        target, needed = ("≥ 3× (GPU)", 3.0) if s.device.type == "cuda" else ("≥ 2× (CPU)", 2.0)
        rows.append(Row("ops", f"{name} {tuple(s.op_shape)}: fallback / fused", eager / fused, "×", target,
                        passed=eager / fused >= needed if s.judge_speed and ops.backend() == "extension" else None,
                        note=f"fused {fused * 1e3:.3f} ms, fallback {eager * 1e3:.3f} ms"))
    return rows


def throughput(s: Sizes, method: str, batch: int, target: float | None, **options) -> Row:
    model = model_on(s)
    x = images(s, batch)
    seconds = fastest(lambda: pyexplain.explain(model, x, method=method, **options), s.device, max(1, s.repeats // 5))
    rate = batch / seconds
    option_text = ", ".join(f"{k}={v}" for k, v in options.items())
    return Row(method, f"{method} batch {batch} {option_text}".strip(), rate, "images/s",
               f"≥ {target:g}" if target else "", passed=rate >= target if target and s.judge_speed else None,
               note=f"{s.image}×{s.image}")


def step_lpr(s: Sizes) -> list[Row]:
    return [throughput(s, "lpr", s.batch, 10.0, iterations=s.lpr_iterations)]


def step_dmbp(s: Sizes) -> list[Row]:
    return [throughput(s, "dmbp", s.batch, 5.0, iterations=s.dmbp_iterations)]


def step_fixed(s: Sizes) -> list[Row]:
    return [throughput(s, method, s.fixed_batch, None) for method in ("gradxinput", "gradcam")]


def step_dataset(s: Sizes) -> list[Row]:
    import numpy as np
    from PIL import Image

    from pyexplain.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "images", Path(tmp) / "out"
        source.mkdir()
        rng = np.random.default_rng(0)
        for k in range(s.dataset_images):
            pixels = rng.integers(0, 256, (s.image + 32, s.image + 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(source / f"{k:05d}.jpg")
        summary = Path(tmp) / "summary.json"
        argv = ["explain-dataset", str(source), "--out", str(out), "--model", s.dataset_model, "--random-weights",
                "--method", "gradxinput", "--device", s.device.type, "--summary", str(summary)]
        try:
            main(argv)
        except SystemExit as exc:
            if exc.code not in (0, None):
                return [Row("dataset", "explain-dataset", f"exit {exc.code}", passed=False)]
        facts = json.loads(summary.read_text())
    return [Row("dataset", f"explain-dataset gradxinput {s.dataset_model}, {s.dataset_images} images",
                facts["images_per_second"], "images/s", note=f"batch size {facts['batch_size']} ({facts['batch_choice']})")]


def step_precision(s: Sizes) -> list[Row]:
    from pyexplain.dataset.execution import precision

    rows = []
    model, x = model_on(s), images(s, s.fixed_batch)
    for method, options in (("gradxinput", {}), ("lpr", {"iterations": min(s.lpr_iterations, 10)})):
        maps, times = {}, {}
        modes = ["float32", "bfloat16"] + (["tf32"] if s.device.type == "cuda" else [])
        for mode in modes:
            def run(mode=mode):
                with precision(mode, s.device.type):
                    return pyexplain.explain(model, x, method=method, **options)

            times[mode] = fastest(run, s.device, 2)
            maps[mode] = run().map.float()
        for mode in modes[1:]:
            rho = min(spearman(maps["float32"][i], maps[mode][i]) for i in range(len(x)))
            rows.append(Row("precision", f"{method} {mode} vs float32", rho, "Spearman (lowest image)", "≥ 0.95",
                            passed=rho >= 0.95, note=f"time ratio {times[mode] / times['float32']:.2f}× of float32"))
    return rows


def step_onnx(s: Sizes) -> list[Row]:
    import onnxruntime as ort

    from pyexplain.export import export_explainer

    provider = "CUDAExecutionProvider" if s.device.type == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        return [Row("onnx", "ONNX Runtime provider", f"{provider} missing",
                    note="pip install 'pyexplain[export-gpu]' (onnxruntime-gpu)")]
    model = model_on(s).cpu()
    x = images(s, 2).cpu()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_explainer(model, "gradxinput", "onnx", Path(tmp) / "explainer.onnx", x[:1])
        session = ort.InferenceSession(str(path), providers=[provider])
        eager = pyexplain.explain(model, x, method="gradxinput")
        logits, attribution = session.run(None, {"image": x.numpy(), "target": eager.targets.numpy()})
    scale = eager.attribution.abs().max().item()
    difference = (torch.from_numpy(attribution) - eager.attribution).abs().max().item() / scale
    return [Row("onnx", f"gradxinput via {provider} vs eager (max relative difference)", difference, "",
                "≤ 1e-3", passed=difference <= 1e-3,
                note=f"logits differ by {(torch.from_numpy(logits) - eager.logits).abs().max().item():.2e}")]


STEPS: dict[str, Callable[[Sizes], list[Row]]] = {
    "build": step_build, "tests": step_tests, "selfcheck": step_selfcheck, "ops": step_ops, "lpr": step_lpr,
    "dmbp": step_dmbp, "fixed": step_fixed, "dataset": step_dataset, "precision": step_precision, "onnx": step_onnx,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (what CI runs)")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of: " + ", ".join(STEPS))
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.steps.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in STEPS]
    if unknown:
        parser.error(f"unknown step {unknown[0]!r}")
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here; use --dry-run for the CPU rehearsal", file=sys.stderr)
        return 2
    sizes = sizes_for(args.dry_run)
    device_name = torch.cuda.get_device_name(0) if sizes.device.type == "cuda" else "CPU"
    report = Report(args.out, {"mode": "dry run (toy sizes, CPU)" if args.dry_run else "full",
                               "device": device_name, "torch": torch.__version__, "python": sys.version.split()[0]})
    failures = 0
    for name in chosen:
        start = time.perf_counter()
        try:
            rows = STEPS[name](sizes)
        except Exception as exc:  # recorded, and the next step runs
            traceback.print_exc()
            rows = [Row(name, "error", f"{type(exc).__name__}: {exc}"[:300], passed=False)]
        failures += sum(1 for r in rows if r.passed is False and r.name == "error")
        for row in rows:
            row.note = f"{row.note} ({time.perf_counter() - start:.1f} s step)".strip()
        report.add(rows)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
