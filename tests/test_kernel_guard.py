"""The guard on the fused kernels: the first fused call of an op on a guarded device type compares
it with the pure-PyTorch ops, and a wrong kernel is switched off for the process with one warning.

CUDA is the guarded type in production; here the CPU kernels go through the same code path, with one
kernel deliberately broken (its result scaled), which the guard must catch.
"""
from __future__ import annotations

import pytest
import torch

from pyexplain import _kernels, ops
from tests.cli_support import run_cli

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="the fused kernels are not built")


class _Scaled:
    """The loaded extension with one function's outputs multiplied by ``factor``."""

    def __init__(self, real, name: str, factor: float) -> None:
        self._real, self._name, self._factor = real, name, factor

    def __getattr__(self, attribute: str):
        function = getattr(self._real, attribute)
        if attribute != self._name:
            return function

        def scaled(*args):
            out = function(*args)
            if isinstance(out, torch.Tensor):
                return out * self._factor
            return [t * self._factor if isinstance(t, torch.Tensor) else t for t in out]

        return scaled


@pytest.fixture
def guarded_cpu(monkeypatch):
    """The CPU treated as a guarded device type, with a fresh guard state."""
    monkeypatch.setattr(ops, "GUARDED_DEVICE_TYPES", {"cpu"})
    monkeypatch.setattr(ops, "_checked", set())
    monkeypatch.setattr(ops, "_disabled", {})
    monkeypatch.delenv("PYEXPLAIN_BACKEND", raising=False)


def _plugin_args():
    gen = torch.Generator().manual_seed(3)
    g, f = torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    return g, f, torch.zeros(1, 4, 3, 3), torch.randn(1, 4, 1, 1, generator=gen).requires_grad_()


def test_correct_kernels_pass_and_stay_fused(guarded_cpu, capsys):
    g, f, ref, w = _plugin_args()
    out = ops.plugin_rule(g, f, ref, w)
    assert "_PluginRule" in type(out.grad_fn).__name__  # the fused path, after the check
    assert ops.disabled_kernels() == {}
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("broken", ["plugin_forward", "plugin_backward", "plugin_double_backward"])
def test_wrong_plugin_kernel_is_disabled_with_one_warning(guarded_cpu, monkeypatch, capsys, broken):
    monkeypatch.setattr(_kernels, "_C", _Scaled(_kernels._C, broken, 1.5))
    g, f, ref, w = _plugin_args()
    out = ops.plugin_rule(g, f, ref, w)
    torch.testing.assert_close(out, ops.plugin_rule_fallback(g, f, ref, w))
    assert "MulBackward" in type(out.grad_fn).__name__  # the fallback answered
    assert "cpu" in ops.disabled_kernels() and "plugin_rule" in ops.disabled_kernels()["cpu"]
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and err.count("\n") == 1
    # every fused op on that device type is off now, without a second warning
    mask = torch.rand(2, 4, 3, 3)
    masked = ops.masked_relu_backward(g, f, mask)
    torch.testing.assert_close(masked, ops.masked_relu_backward_fallback(g, f, mask))
    assert capsys.readouterr().err == ""


def test_wrong_masked_kernel_is_disabled_and_info_says_so(guarded_cpu, monkeypatch, capsys):
    monkeypatch.setattr(_kernels, "_C", _Scaled(_kernels._C, "masked_backward", 0.5))
    gen = torch.Generator().manual_seed(4)
    g, f, mask = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen), torch.rand(2, 3, 4, generator=gen)
    ops.masked_relu_backward(g, f, mask)
    assert "masked_relu_backward" in ops.disabled_kernels()["cpu"]
    capsys.readouterr()
    code, out, _ = run_cli(["info"], capsys)
    assert code == 0 and "cpu kernels DISABLED for this process" in out
