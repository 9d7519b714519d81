"""The export's full product: every fixed rule × model × format against pyexplain's eager method.

    PYTHONPATH=$PWD python benchmarks/export_check.py [--models M,..] [--rules R,..] [--formats F,..]

For each (rule, model, format) the explainer is compiled once, written, loaded back and run on four
real photos (the export tests' models, inputs and eager references, ``tests/export_support.py``) in
four cases: batch 4 and batch 1, each with given targets and with top-1 (``-1``); 10 rows. Each row's
relative error ``max|exported − eager| / max|eager|`` is compared with the eager attribution of the
same rows in a batch of the same size. A row may exceed 1e-4 only in ONNX Runtime, and only where it
provably takes another branch than torch (an activation gate, a max-pool argmax or, for top-1, the
class), which a probe graph of the forward pass shows. Then, per model, what that probe shows under
each ONNX Runtime graph optimization level and thread count.

Prints Markdown tables; exits 1 on any other difference (or different logits).
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from export_support import (FIXED_RULES, GIVEN, MODELS, TOLERANCE, branch_differences, compiled,  # noqa: E402
                            flipped_rows, images, logits, probe_path, reference, relative_error)

from pyexplain.export import FORMATS, load_explainer  # noqa: E402
from pyexplain.export.formats import write_explainer  # noqa: E402

SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}


def cases() -> list[tuple[int, tuple[int, ...] | None]]:
    """(batch size, given targets or None for top-1)."""
    return [(rows, given) for rows in (4, 1) for given in (tuple(GIVEN[:rows]), None)]


def check(name: str, method: str, fmt: str, folder: Path) -> dict:
    """Max relative error over the rows on torch's branches and over all rows, rows on another branch,
    and whether every row passes."""
    path = write_explainer(compiled(name, method), fmt, folder / f"{name}-{method}{SUFFIX[fmt]}")
    run = load_explainer(path)
    on_branch, everything, flipped, ok = 0.0, 0.0, 0, True
    for rows, given in cases():
        target = torch.tensor(given) if given is not None else torch.full((rows,), -1)
        out_logits, attribution = run(images(name)[:rows], target)
        ok &= torch.allclose(out_logits, logits(name)[:rows], rtol=1e-4, atol=1e-4)
        error = relative_error(attribution, reference(name, method, rows, given))
        other = flipped_rows(name, method, rows, target) if fmt == "onnx" else torch.zeros(rows, dtype=torch.bool)
        everything = max(everything, float(error.max()))
        if bool((~other).any()):
            on_branch = max(on_branch, float(error[~other].max()))
        flipped += int(other.sum())
        ok &= bool((error[~other] <= TOLERANCE).all())
    path.unlink()
    return {"on_branch": on_branch, "all": everything, "flipped": flipped, "ok": ok}


def session_settings():
    """(label, SessionOptions): each graph optimization level, with the default thread count and one thread."""
    import onnxruntime as ort

    levels = ort.GraphOptimizationLevel
    for label, level in (("disable_all", levels.ORT_DISABLE_ALL), ("basic", levels.ORT_ENABLE_BASIC),
                         ("extended", levels.ORT_ENABLE_EXTENDED), ("all (default)", levels.ORT_ENABLE_ALL)):
        for threads in (0, 1):
            options = ort.SessionOptions()
            options.graph_optimization_level = level
            options.intra_op_num_threads = threads
            yield f"{label}, {'default threads' if threads == 0 else '1 thread'}", options


def branch_table(models: list[str]) -> None:
    """Per model and ONNX Runtime session setting: what the probe shows on the batch of 4 and the batch of 1."""
    print("\nONNX Runtime vs torch, forward pass: flipped activation gates and max-pool argmaxes per photo "
          "(batch of 4 | batch of 1), top-1 changes, max relative logit difference\n")
    print("| model | session setting | flipped gates | flipped pool argmaxes | top-1 changes | logits rel. diff. |")
    print("|---|---|---|---|---|---|")
    for name in models:
        for label, options in session_settings():
            four, one = (branch_differences(name, rows, probe_path(name), options) for rows in (4, 1))
            gates = f"{four['gates'].tolist()} \\| {one['gates'].tolist()} (of {four['gate_count']})"
            pools = f"{four['pools'].tolist()} \\| {one['pools'].tolist()}"
            top1 = int(four["top1"].sum() + one["top1"].sum())
            print(f"| {name} | {label} | {gates} | {pools} | {top1} | "
                  f"{max(float(four['logits'].max()), float(one['logits'].max())):.1e} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rules", default=",".join(FIXED_RULES))
    parser.add_argument("--formats", default=",".join(FORMATS))
    args = parser.parse_args()
    models, rules, formats = (a.split(",") for a in (args.models, args.rules, args.formats))
    start, failures = time.perf_counter(), 0
    print("| rule | model | format | max rel. error, rows on torch's branches | max rel. error, all rows "
          "| rows on another branch (of 10) | result |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name in models:
            for method in rules:
                for fmt in formats:
                    r = check(name, method, fmt, Path(folder))
                    failures += not r["ok"]
                    print(f"| {method} | {name} | {fmt} | {r['on_branch']:.1e} | {r['all']:.1e} | {r['flipped']} | "
                          f"{'pass' if r['ok'] else 'FAIL'} |", flush=True)
    if "onnx" in formats:
        branch_table(models)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{failures} failing of {len(models) * len(rules) * len(formats)}; {time.perf_counter() - start:.0f} s, "
          f"peak RSS {peak:.0f} MB")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
