"""How the fused kernels are compiled: sources, flags, the CUDA toolkit and the GPU architectures.

One description shared by the ahead-of-time build (``setup.py``, which loads this file by path
because the package's own imports need torch) and the build at first use
(:mod:`pyexplain._jit`). Importing this module imports nothing but the standard library.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shlex
import shutil
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"
CUDA_LIBRARIES = ("cudart", "c10_cuda", "torch_cuda")
#: -fno-trapping-math lets the branch-free selects of the elementwise loops vectorize.
CXX_FLAGS = ("-O3", "-fopenmp", "-fno-trapping-math")
LINK_FLAGS = ("-fopenmp",)
NVCC_FLAGS = ("-O3",)
CUDA_DEFINE = "-DPYEXPLAIN_WITH_CUDA"
CONFIG_HEADER = "px_build_config.h"


def cpp_sources() -> list[Path]:
    return sorted(CSRC.glob("*.cpp"))


def cuda_sources() -> list[Path]:
    return sorted(CSRC.glob("*.cu"))


def sources_digest() -> str:
    """A hash of every source and header, for caching builds."""
    digest = hashlib.sha256()
    for path in sorted(CSRC.iterdir()):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cxx_compiler() -> str | None:
    """The C++ compiler (``$CXX``, else ``c++``) when it is on the PATH."""
    command = shlex.split(os.environ.get("CXX", "c++")) or ["c++"]
    return shutil.which(command[0])


def cuda_toolkit() -> str | None:
    """The CUDA toolkit folder: it holds ``bin/nvcc`` and ``libcudart.so`` in ``lib64/`` or ``lib/``.

    ``nvcc`` on the PATH may be a wrapper script outside the toolkit, so its folder is only one
    candidate among ``CUDA_HOME``, ``CUDA_PATH``, ``/usr/local/cuda`` and ``/usr/local/cuda-*``.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(os.path.realpath(nvcc)).parent.parent))
    candidates.append("/usr/local/cuda")
    candidates.extend(sorted(glob.glob("/usr/local/cuda-*"), reverse=True))
    for folder in filter(None, candidates):
        root = Path(folder)
        has_runtime = any(glob.glob(str(root / lib / "libcudart.so*")) for lib in ("lib64", "lib"))
        if (root / "bin" / "nvcc").is_file() and has_runtime and (root / "include" / "cuda_runtime.h").is_file():
            return str(root)
    return None


def arch_tag(arch_list: str) -> str:
    """``"8.0;9.0+PTX"`` -> ``"sm_80, sm_90, compute_90"`` (recorded in the extension's build info)."""
    tags = []
    for item in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        if not item:
            continue
        number = item.split("+")[0].replace(".", "")
        tags.append(f"sm_{number}")
        if item.endswith("+PTX"):
            tags.append(f"compute_{number}")
    return ", ".join(tags)


def write_config_header(folder: Path, archs: str) -> Path:
    """Writes ``px_build_config.h`` (the CUDA architectures, for the build info) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_HEADER).write_text(f'#define PYEXPLAIN_CUDA_ARCHS "{arch_tag(archs)}"\n', encoding="utf-8")
    return folder
