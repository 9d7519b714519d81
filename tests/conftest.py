"""Shared fixtures: the embedded model on a real photo, small seeded torchvision nets, and the CPU
kernel builds."""
from __future__ import annotations

import os

import pytest
import torch

import pyexplain
from pyexplain import _kernels
from pyexplain.io import builtin_image

from kernel_support import CPU_ISAS
from lpr_models import tiny
from model_support import randomize_batchnorm

# Tests never reach the internet: no weights are downloaded unless a test serves them on 127.0.0.1.
os.environ["PYEXPLAIN_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def lite0():
    """The embedded EfficientNet-Lite0 with its real ImageNet weights, and its preprocessing."""
    return pyexplain.load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def chelsea(lite0):
    """skimage's chelsea photo, preprocessed for EfficientNet-Lite0: ``[1, 3, 224, 224]``."""
    return lite0[1](builtin_image("chelsea"))


@pytest.fixture(scope="session")
def resnet18():
    """torchvision ResNet-18 with seeded random weights and non-trivial BN statistics, eval mode."""
    torch.manual_seed(0)
    model, _ = pyexplain.load_model("resnet18", random_weights=True)
    randomize_batchnorm((m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)),
                        mean=(-0.1, 0.1), var=(0.5, 1.5), weight=(0.5, 1.5), bias=(-0.1, 0.1))
    return model


@pytest.fixture(scope="session")
def small_images():
    """Two seeded random images ``[2, 3, 64, 64]`` in normalized space."""
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def tiny64():
    """LPR's small residual test network (:func:`lpr_models.tiny`) in float64."""
    return tiny().double()


@pytest.fixture(scope="module")
def images64():
    """Three seeded float64 images ``[3, 3, 16, 16]`` for :func:`tiny64`."""
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


@pytest.fixture
def one_thread():
    """One intra-op thread, as each torchrun rank has (OMP_NUM_THREADS=1), so floats match bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=[(isa, threads) for isa in CPU_ISAS for threads in (1, 2)], ids=lambda p: f"{p[0]}-{p[1]}t")
def kernel_setup(request):
    """Each CPU build of the extension's kernels, with one and with two threads (two split a large
    tensor); skipped without the extension."""
    if not _kernels.available():
        pytest.skip(f"extension not loaded ({_kernels.LOAD_ERROR})")
    isa, threads = request.param
    previous_isa, previous_threads = _kernels._C.set_cpu_isa(isa), torch.get_num_threads()
    torch.set_num_threads(threads)
    yield request.param
    torch.set_num_threads(previous_threads)
    _kernels._C.set_cpu_isa(previous_isa)
