"""Start-up cost of the ``pyexplain`` command line: time and peak memory of each command.

Each case is a fresh ``python`` process run in the checkout (``python -m pyexplain ...`` with the
checkout first on ``PYTHONPATH``). Several checkouts (``--root``, repeatable: e.g. the code before a
change and after it) are measured interleaved, case by case, round by round; the fastest round of
each is reported: CPU seconds of the process (user + system, steadier than wall time on a loaded
machine), wall seconds, and peak resident set size (``os.wait4``). A second table splits the import
time of the commands that need torch (``python -X importtime``) into torch and torchvision (each
with everything it imports), pyexplain's own modules, and the rest (Typer, pydantic, PIL, ...).

    python benchmarks/bench_startup.py                               # this checkout
    python benchmarks/bench_startup.py --root /tmp/before --root .   # before and after, interleaved
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

CASES = {
    "python -c pass": ["-c", "pass"],
    "python -c 'import torch'": ["-c", "import torch"],
    "python -c 'import torch, torchvision'": ["-c", "import torch, torchvision"],
    "pyexplain --help": ["-m", "pyexplain", "--help"],
    "pyexplain explain --help": ["-m", "pyexplain", "explain", "--help"],
    "pyexplain methods": ["-m", "pyexplain", "methods"],
    "pyexplain models": ["-m", "pyexplain", "models"],
    "pyexplain info": ["-m", "pyexplain", "info"],
}
#: Commands that need torch, whose import time is split into torch / torchvision / the rest.
IMPORT_CASES = {
    "pyexplain info": ["-m", "pyexplain", "info"],
    "pyexplain explain (saliency, random weights)": [
        "-m", "pyexplain", "explain", "{tmp}/photo.png", "--random-weights", "--method", "saliency", "--device", "cpu",
        "--out", "{tmp}/out"],
}


def run_once(argv: list[str], root: Path) -> tuple[float, float, float, str]:
    """CPU seconds, wall seconds, peak RSS (MB) and stderr of one ``python ARGV`` process run in ``root``."""
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, *argv], env=env, cwd=root, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    stderr = process.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} in {root} failed ({process.returncode}): {stderr[-500:]}")
    return usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss / 1024, stderr


def import_split(stderr: str) -> dict[str, float]:
    """Seconds of import spent in torch, in torchvision (each with everything it imports), in
    pyexplain's own modules and in everything else, from ``-X importtime`` output."""
    lines = [line for line in stderr.splitlines() if line.startswith("import time:") and "self [us]" not in line]
    totals = {"torch": 0.0, "torchvision": 0.0, "pyexplain": 0.0, "rest": 0.0}
    # A module's line follows its children's (one level deeper): walking backwards, parents come first.
    stack: list[tuple[int, str | None]] = []  # (depth, owner) of the enclosing imports
    for line in reversed(lines):
        fields = line.split("|")
        self_us, cumulative_us, name = int(fields[0].split(":")[1]), int(fields[1]), fields[2]
        depth = (len(name) - len(name.lstrip())) // 2
        while stack and stack[-1][0] >= depth:
            stack.pop()
        owner = stack[-1][1] if stack else None
        top = name.strip().split(".")[0]
        if owner is None and top in ("torch", "torchvision"):
            totals[top] += cumulative_us / 1e6
            owner = top
        elif owner is None:
            totals["pyexplain" if top == "pyexplain" else "rest"] += self_us / 1e6
        stack.append((depth, owner))
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, action="append", help="checkout to measure (repeatable)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    roots = [r.resolve() for r in args.root or [Path(__file__).resolve().parent.parent]]
    best = {(case, root): (float("inf"), float("inf"), 0.0) for case in CASES for root in roots}
    splits: dict[tuple[str, Path], list[dict[str, float]]] = {(case, root): [] for case in IMPORT_CASES for root in roots}
    with tempfile.TemporaryDirectory() as tmp:
        Image.new("RGB", (64, 64), (120, 80, 40)).save(Path(tmp) / "photo.png")
        for _ in range(args.rounds):
            for case, argv in CASES.items():
                for root in roots:
                    cpu, wall, peak, _ = run_once(argv, root)
                    old = best[case, root]
                    best[case, root] = (min(cpu, old[0]), min(wall, old[1]), max(peak, old[2]))
            for case, argv in IMPORT_CASES.items():
                for root in roots:
                    stderr = run_once(["-X", "importtime", *[a.format(tmp=tmp) for a in argv]], root)[3]
                    splits[case, root].append(import_split(stderr))
    print(f"fastest of {args.rounds} rounds; checkouts: " + ", ".join(f"[{i}] {r}" for i, r in enumerate(roots)))
    print("| command | " + " | ".join(f"[{i}] CPU s | [{i}] wall s | [{i}] peak MB" for i in range(len(roots))) + " |")
    print("|---|" + "---|---|---|" * len(roots))
    for case in CASES:
        cells = " | ".join(f"{c:.2f} | {w:.2f} | {p:.0f}" for c, w, p in (best[case, root] for root in roots))
        print(f"| `{case}` | {cells} |")
    print("\n| command (-X importtime, fastest round) | checkout | torch s | torchvision s | pyexplain s | rest s |")
    print("|---|---|---|---|---|---|")
    for case in IMPORT_CASES:
        for i, root in enumerate(roots):
            fastest = min(splits[case, root], key=lambda s: s["pyexplain"] + s["rest"])
            print(f"| `{case}` | [{i}] | {fastest['torch']:.2f} | {fastest['torchvision']:.2f} | "
                  f"{fastest['pyexplain']:.2f} | {fastest['rest']:.2f} |")


if __name__ == "__main__":
    main()
