"""The export's full product: every fixed rule × model × format against pyexplain's eager method.

    PYTHONPATH=$PWD python benchmarks/export_check.py [--models M,..] [--rules R,..] [--formats F,..]

For each (rule, model, format) the explainer is compiled once, written, loaded back and run on four
real photos (the export tests' models, inputs and eager references, ``tests/export_support.py``) in
four cases: batch 4 and batch 1, each with given targets and with top-1 (``-1``); 10 rows. Each row's
relative error ``max|exported − eager| / max|eager|`` is compared with the eager attribution of the
same rows in a batch of the same size (1e-4). ONNX Runtime, whose forward pass rounds differently, is
judged by the criterion of the export tests instead (``own_branch_failures``: its attribution equals
torch's backward pass on its own branch decisions, read from a file written with branch outputs;
flips rare and at rounding level; the compiled module equals the eager method). Then, per model, the
branches ONNX Runtime flips under each graph optimization level and thread count, and whether the
criterion holds there.

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

from export_support import (FIXED_RULES, GIVEN, MODELS, TOLERANCE, compiled, images, logits,  # noqa: E402
                            onnx_session, onnx_with_branches, own_branch_failures, reference, relative_error,
                            run_session)

from pyexplain.export import FORMATS, load_explainer  # noqa: E402
from pyexplain.export.formats import write_explainer  # noqa: E402

SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}


def cases() -> list[tuple[int, tuple[int, ...] | None]]:
    """(batch size, given targets or None for top-1)."""
    return [(rows, given) for rows in (4, 1) for given in (tuple(GIVEN[:rows]), None)]


def check(name: str, method: str, fmt: str, folder: Path) -> dict:
    """Max relative error to the eager method over all rows (ONNX: of the runtime and, in brackets, of
    the compiled module), rows whose attribution differs from eager beyond 1e-4, and whether every
    row passes."""
    explainer = compiled(name, method)
    if fmt == "onnx":
        session = onnx_session(onnx_with_branches(name, method))
    else:
        path = write_explainer(explainer, fmt, folder / f"{name}-{method}{SUFFIX[fmt]}")
        run = load_explainer(path)
    everything, beyond, ok = 0.0, 0, True
    for rows, given in cases():
        target = torch.tensor(given) if given is not None else torch.full((rows,), -1)
        x, expected = images(name)[:rows], reference(name, method, rows, given)
        if fmt == "onnx":
            outputs = run_session(session, x, target)
            ok &= own_branch_failures(explainer, x, target, outputs) == []
            with torch.no_grad():
                ok &= bool((relative_error(explainer(x, target)[1], expected) <= TOLERANCE).all())
            attribution = outputs[1]
        else:
            out_logits, attribution = run(x, target)
            ok &= torch.allclose(out_logits, logits(name)[:rows], rtol=1e-4, atol=1e-4)
            ok &= bool((relative_error(attribution, expected) <= TOLERANCE).all())
        error = relative_error(attribution, expected)
        everything = max(everything, float(error.max()))
        beyond += int((error > TOLERANCE).sum())
    if fmt != "onnx":
        path.unlink()
    return {"all": everything, "beyond": beyond, "ok": ok}


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


def _flips(explainer, x: torch.Tensor, branches: list[torch.Tensor]) -> torch.Tensor:
    """Per row: gates and pooling argmaxes where the runtime's decision differs from torch's."""
    from pyexplain.export.branches import branch_steps

    activations, pools = branch_steps(explainer)
    with torch.no_grad():
        _, saved = explainer.run_forward(x)
    flips = torch.zeros(x.shape[0], dtype=torch.long)
    for step, value in zip([*activations, *pools], branches):
        ours = saved[step.node]
        if step in activations:
            value, ours = (step._gate(torch.ones_like(v), v) for v in (value, ours))
        flips += (value != ours).flatten(1).sum(1)
    return flips


def branch_table(models: list[str]) -> None:
    """Per model and ONNX Runtime session setting (saliency): branches flipped per photo (batch of 4 |
    batch of 1) and whether the own-branch criterion holds."""
    print("\nONNX Runtime vs torch, saliency: gates and max-pool argmaxes flipped per photo (batch of 4 | batch "
          "of 1), and the own-branch criterion\n")
    print("| model | session setting | flipped branches | criterion |")
    print("|---|---|---|---|")
    for name in models:
        explainer, path = compiled(name, "saliency"), onnx_with_branches(name, "saliency")
        for label, options in session_settings():
            session = onnx_session(path, options)
            counts, ok = [], True
            for rows in (4, 1):
                x, target = images(name)[:rows], torch.full((rows,), -1)
                outputs = run_session(session, x, target)
                counts.append(_flips(explainer, x, outputs[2:]).tolist())
                ok &= own_branch_failures(explainer, x, target, outputs) == []
            print(f"| {name} | {label} | {counts[0]} \\| {counts[1]} | {'holds' if ok else 'FAILS'} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rules", default=",".join(FIXED_RULES))
    parser.add_argument("--formats", default=",".join(FORMATS))
    args = parser.parse_args()
    models, rules, formats = (a.split(",") for a in (args.models, args.rules, args.formats))
    start, failures = time.perf_counter(), 0
    print("| rule | model | format | max rel. error to eager, all rows | rows beyond 1e-4 (of 10) | result |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name in models:
            for method in rules:
                for fmt in formats:
                    r = check(name, method, fmt, Path(folder))
                    failures += not r["ok"]
                    print(f"| {method} | {name} | {fmt} | {r['all']:.1e} | {r['beyond']} | "
                          f"{'pass' if r['ok'] else 'FAIL'} |", flush=True)
    if "onnx" in formats:
        branch_table(models)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{failures} failing of {len(models) * len(rules) * len(formats)}; {time.perf_counter() - start:.0f} s, "
          f"peak RSS {peak:.0f} MB")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
