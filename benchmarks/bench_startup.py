"""Start-up cost of the ``pyexplain`` command line: wall time and peak memory of each command.

Each case is a fresh ``python`` process (``python -m pyexplain ...`` with ``--root`` first on
``PYTHONPATH``); the cases are interleaved round by round and the fastest round of each is reported,
with the peak resident set size of that process (``os.wait4``). A second table gives the import
time of a command that needs torch, split by ``python -X importtime`` into torch and torchvision
(with everything they import) and the rest — the command line's own overhead.

    python benchmarks/bench_startup.py                  # this checkout
    python benchmarks/bench_startup.py --root /path/to/other/checkout --rounds 5
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "python -c 'import torch'": ["-c", "import torch"],
    "python -c 'import torch, torchvision'": ["-c", "import torch, torchvision"],
    "pyexplain --help": ["-m", "pyexplain", "--help"],
    "pyexplain explain --help": ["-m", "pyexplain", "explain", "--help"],
    "pyexplain methods": ["-m", "pyexplain", "methods"],
    "pyexplain models": ["-m", "pyexplain", "models"],
    "pyexplain info": ["-m", "pyexplain", "info"],
}
#: Commands whose import time is split into torch / torchvision / the rest.
IMPORT_CASES = {
    "pyexplain info": ["-m", "pyexplain", "info"],
    "pyexplain explain (saliency, random weights)": [
        "-m", "pyexplain", "explain", "builtin:chelsea", "--random-weights", "--method", "saliency", "--device", "cpu",
        "--out", "{tmp}"],
}


def run_once(argv: list[str], env: dict[str, str], root: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stderr of one ``python ARGV`` process run in ``root``."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, *argv], env=env, cwd=root, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    stderr = process.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({process.returncode}): {stderr[-500:]}")
    return seconds, usage.ru_maxrss / 1024, stderr


def import_split(lines: list[str]) -> dict[str, float]:
    """Seconds of import spent in torch, in torchvision (each with everything it imports) and in
    everything else, from ``-X importtime`` lines."""
    totals = {"torch": 0.0, "torchvision": 0.0, "rest": 0.0}
    # Children precede their parent and are one level deeper; walk backwards keeping the open parents.
    stack: list[tuple[int, str | None]] = []  # (depth, owner) of the parents seen so far (walking upward)
    for line in reversed(lines):
        fields = line.split("|")
        self_us = int(fields[0].split(":")[1])
        cumulative_us = int(fields[1])
        name = fields[2]
        depth = (len(name) - len(name.lstrip())) // 2
        module = name.strip()
        while stack and stack[-1][0] >= depth:
            stack.pop()
        owner = stack[-1][1] if stack else None
        top = module.split(".")[0]
        if owner is None and top in ("torch", "torchvision"):
            totals[top] += cumulative_us / 1e6
            owner = top
        elif owner is None:
            totals["rest"] += self_us / 1e6
        stack.append((depth, owner))
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="checkout to measure")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(args.root.resolve()), OMP_NUM_THREADS="1")
    best = {name: (float("inf"), 0.0) for name in COMMANDS}
    for _ in range(args.rounds):
        for name, argv in COMMANDS.items():
            seconds, peak, _ = run_once(argv, env, args.root)
            if seconds < best[name][0]:
                best[name] = (seconds, peak)
    print(f"checkout {args.root}; fastest of {args.rounds} rounds")
    print("| command | wall s | peak RSS MB |\n|---|---|---|")
    for name, (seconds, peak) in best.items():
        print(f"| `{name}` | {seconds:.2f} | {peak:.0f} |")
    print("\n| command (-X importtime) | torch s | torchvision s | rest s |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in IMPORT_CASES.items():
            splits = []
            for _ in range(args.rounds):
                _, _, stderr = run_once(["-X", "importtime", *[a.format(tmp=tmp) for a in argv]], env, args.root)
                splits.append(import_split([line for line in stderr.splitlines()
                                          if line.startswith("import time:") and "self [us]" not in line]))
            fastest = min(splits, key=lambda s: s["rest"])
            print(f"| `{name}` | {fastest['torch']:.2f} | {fastest['torchvision']:.2f} | {fastest['rest']:.2f} |")


if __name__ == "__main__":
    main()
