"""Test-only models and adapters that let the oracles (Captum, Zennit) see the same function as pyexplain.

Captum's DeepLift and LRP keep per-module state, so every activation *call* needs its own module,
and they know ReLU but not ReLU6. :func:`distinct_activations` returns a copy of a model in which
each activation module is replaced by one fresh module per call (in call order), and ReLU6 by
``relu(x) − relu(x − 6)`` with two ReLU modules: the same function. For DeepLIFT's rescale rule
the two ReLUs' multipliers sum to ReLU6's multiplier, so the attributions are the same.
"""
from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import nn


class ReLU6AsReLUs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.low = nn.ReLU()
        self.high = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ``x + 0``: Captum's hooks must not see one tensor feeding two hooked modules.
        return self.low(x + 0) - self.high(x - 6)


class PerCall(nn.Module):
    """Dispatches the k-th call within one forward pass of the root model to ``slots[k]``."""

    def __init__(self, slots: list[nn.Module]) -> None:
        super().__init__()
        self.slots = nn.ModuleList(slots)
        self.count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.slots[self.count](x)
        self.count += 1
        return out


def _fresh(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.ReLU6):
        return ReLU6AsReLUs()
    return nn.ReLU()


def distinct_activations(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with one non-inplace activation module per call (see module docstring)."""
    model = copy.deepcopy(model).eval()
    activations = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    counts: Counter = Counter()
    handles = [m.register_forward_hook(lambda mod, i, o: counts.update([id(mod)])) for m in activations]
    with torch.no_grad():
        model(example[:1])
    for h in handles:
        h.remove()
    wrappers = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.ReLU, nn.ReLU6)):
                wrapper = PerCall([_fresh(child) for _ in range(counts[id(child)])])
                setattr(parent, name, wrapper)
                wrappers.append(wrapper)

    def reset(module, args):
        for w in wrappers:
            w.count = 0

    model.register_forward_pre_hook(reset)
    return model


def _basic_block_forward(self, x: torch.Tensor) -> torch.Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
    return self.relu(self.add(out, identity))


def captum_lrp_resnet(model: nn.Module, example: torch.Tensor, epsilon: float) -> nn.Module:
    """A copy of a torchvision ResNet (BasicBlocks) ready for Captum's LRP: residual adds through
    Captum's ``Addition_Module`` (which the ε-rule splits in proportion to the summands), one ReLU
    per call, the ε-rule on every layer, and max-pooling with a vanishing ε (winner takes all)."""
    import types

    from captum.attr._utils.custom_modules import Addition_Module
    from captum.attr._utils.lrp_rules import EpsilonRule
    from torchvision.models.resnet import BasicBlock

    model = copy.deepcopy(model)
    for block in model.modules():
        if isinstance(block, BasicBlock):
            block.add = Addition_Module()
            block.forward = types.MethodType(_basic_block_forward, block)
    model = distinct_activations(model, example)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.AdaptiveAvgPool2d, Addition_Module)):
            module.rule = EpsilonRule(epsilon)
        elif isinstance(module, nn.MaxPool2d):
            module.rule = EpsilonRule(1e-30)
    return model


def zennit_epsilon_lrp(model: nn.Module, x: torch.Tensor, targets: list[int], epsilon: float,
                       canonizers: list) -> torch.Tensor:
    """Zennit's ε-LRP: ``Epsilon`` on convolutions and linear layers, its base layer map (``Pass`` on
    activations, ``Norm`` on sums and average pooling), output relevance = the target logit."""
    from zennit.attribution import Gradient
    from zennit.composites import LayerMapComposite, layer_map_base
    from zennit.rules import Epsilon
    from zennit.types import Convolution, Linear

    composite = LayerMapComposite(
        layer_map_base(epsilon) + [(Convolution, Epsilon(epsilon)), (Linear, Epsilon(epsilon))], canonizers=canonizers)
    with torch.no_grad():
        logits = model(x)
    seed = torch.zeros_like(logits)
    rows = torch.arange(len(x))
    seed[rows, targets] = logits[rows, targets]
    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x, seed)
    return relevance


def sums_as_zennit_modules(graph_module):
    """Rewrite every ``a + b`` of an fx GraphModule as ``zennit.layer.Sum(stack([a, b]))`` so Zennit
    can give the sum its ``Norm`` rule (proportional split)."""
    import operator

    import torch.fx as fx
    from zennit.layer import Sum

    graph = graph_module.graph
    for i, node in enumerate(list(graph.nodes)):
        if node.op == "call_function" and node.target is operator.add and all(isinstance(a, fx.Node) for a in node.args):
            graph_module.add_submodule(f"zennit_sum{i}", Sum())
            with graph.inserting_before(node):
                stacked = graph.call_function(torch.stack, (list(node.args),), {"dim": -1})
                summed = graph.call_module(f"zennit_sum{i}", (stacked,))
            node.replace_all_uses_with(summed)
            graph.erase_node(node)
    graph.lint()
    graph_module.recompile()
    return graph_module


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (eval mode)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model.eval()


class SmallVGG(nn.Module):
    """VGG-style: conv/BN/ReLU/max-pool features, adaptive average pooling, a dropout MLP head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(64, 32), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
