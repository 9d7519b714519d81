"""Shared by the CPU kernel tests: skip without the extension, the ISA builds to test, seeded draws."""
from __future__ import annotations

import pytest
import torch

from pyexplain import _kernels

needs_extension = pytest.mark.skipif(not _kernels.available(), reason=f"extension not loaded ({_kernels.LOAD_ERROR})")
#: The extension's CPU builds on this machine: the baseline one, and the AVX2 one where the CPU has it.
CPU_ISAS = ["default", "avx2"] if _kernels.available() and "avx2" in _kernels.build_info()["cpu_isa_available"] else ["default"]


def draw(shape, dtype: torch.dtype, seed: int, scale: float = 1.0) -> torch.Tensor:
    """``scale·N(0, 1)`` drawn in float64 from its own seeded generator, then cast to ``dtype``."""
    return (scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)).to(dtype)
