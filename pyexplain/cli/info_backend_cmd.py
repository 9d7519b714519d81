"""``pyexplain info``: which implementation of the hot ops is in use, and what it runs on."""
from __future__ import annotations

import os
from pathlib import Path

from . import app


def _devices() -> str:
    import torch

    cpu = f"cpu ({torch.get_num_threads()} threads)"
    if not torch.cuda.is_available():
        return f"{cpu}; cuda: none available"
    names = ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count()))
    return f"{cpu}; {names}"


@app.command("info")
def info_command() -> None:
    """Show the ops backend, torch, devices and kernel build.

    The backend of the fused ops is the compiled extension or the pure-PyTorch fallback."""
    import torch

    from .. import _kernels
    from ..ops import FUSED_OPS, GUARDED_DEVICE_TYPES, backend, disabled_kernels, kernels_trusted

    active = backend()
    if os.environ.get("PYEXPLAIN_BACKEND", "").strip().lower() == "fallback":
        note = "(forced by PYEXPLAIN_BACKEND=fallback)"
    elif active == "extension":
        note = "(fused C++/CUDA kernels; PYEXPLAIN_BACKEND=fallback forces the pure-PyTorch ops)"
    else:
        note = "(pure-PyTorch ops)"
    cuda_build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    print(f"backend     {active} {note}")
    print(f"torch       {torch.__version__} ({cuda_build})")
    print(f"devices     {_devices()}")
    if not _kernels.available():
        print(f"extension   not loaded ({_kernels.LOAD_ERROR})")
        return
    info = _kernels.build_info()
    print(f"extension   {Path(_kernels._C.__file__).name}, built against torch {info.get('torch', '?')}")
    print(f"            cpu kernels: {info['cpu_isa']} (built: {info['cpu_isa_available']}), "
          f"OpenMP {info['openmp']}, compiler {info['compiler']}")
    print(f"            cuda kernels: {info['cuda']}")
    if torch.cuda.is_available() and _kernels.cuda_built() and "cuda" in GUARDED_DEVICE_TYPES:
        trusted = all([kernels_trusted(op, torch.device("cuda")) for op in FUSED_OPS])
        print(f"            cuda self-check: {'agrees with the pure-PyTorch ops' if trusted else 'failed'}")
    for kind, why in disabled_kernels().items():
        print(f"            {kind} kernels DISABLED for this process: {why}")
