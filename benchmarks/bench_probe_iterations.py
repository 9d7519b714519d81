"""Peak memory of LPR and DMBP against their iteration count: does a probe with few iterations
(``explain-dataset``'s batch-size probe, ``PROBE_ITERATIONS``) see the peak of a full run?

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/bench_probe_iterations.py [--iterations 2,4,8,32]

EfficientNet-Lite0 (real weights), a batch of 2 photos at 224×224, CPU, one torch thread; each
(method, iterations) in a fresh process. Peak memory: resident-set growth during the call
(``benchmarks/common.py``), the CPU's stand-in for ``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(method: str, iterations: int) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks.common import measure
    from pyexplain.api import explain
    from pyexplain.io import builtin_image
    from pyexplain.models import load_model

    torch.set_num_threads(1)
    net, preprocess = load_model("efficientnet_lite0", None, "cpu")
    x = torch.cat([preprocess(builtin_image(name)) for name in ("chelsea", "coffee")])
    print(measure(lambda: explain(net, x, method, iterations=iterations), repeats=1, warmup=0).peak_mb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", default="2,4,8,32")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    counts = [int(i) for i in args.iterations.split(",")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    print(f"load average at start {os.getloadavg()[0]:.2f}\n")
    print("| method | " + " | ".join(f"{n} iterations" for n in counts) + " |")
    print("|---|" + "---|" * len(counts))
    for method in ("lpr", "dmbp"):
        peaks = [float(subprocess.run([sys.executable, __file__, "--child", method, str(n)], env=env, check=True,
                                      capture_output=True, text=True).stdout.split()[-1]) for n in counts]
        print(f"| {method} | " + " | ".join(f"{p:.0f} MiB" for p in peaks) + " |", flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
