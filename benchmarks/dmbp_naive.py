"""The paper's DMBP formulation (Ruiz et al., ICCV 2021, Sec. 3.3–3.4): the naive reference that
``pyexplain/methods/dmbp.py`` (gated forward, one backward per iteration) is tested and timed against.

One image at a time. Each iteration runs one forward pass whose activation backward is replaced by
``g_in = g_out ⊙ m_l ⊙ φ'(f)`` (the mask ``m`` is read when the backward runs), then two backward
passes with ``create_graph=True`` — ``m = σ`` and ``m = 1 − σ`` — giving ``∇ₓF^±`` and the gradient of
every bias: conv/linear biases (the output layer's excepted), eval-BN's ``β`` (its gradient is the
effective bias ``β − μγ/√(var+ε)``'s), and ReLU6's saturated constants (zero-valued leaves added at
the activation outputs, whose gradient is then masked). ``y^± = ∇ₓF^±·x + Σ ∇_bF^±·b``; the loss's
gradient w.r.t. the mask logits comes from a double backward through those two backward passes.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from pyexplain.core.activations import ActivationCall, intercept_activations, list_activation_calls
from pyexplain.core.rules import replace_backward
from pyexplain.methods.dmbp import dmbp_loss
from pyexplain.ops import masked_relu_backward

_CONV_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def bias_parameters(model: nn.Module) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
    """``([(parameter, bias value)], output-layer bias)``: the parameter whose gradient is taken and
    the bias it stands for; the output layer is the model's last ``nn.Linear``."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pairs = []
    for module in model.modules():
        if isinstance(module, _CONV_LINEAR) and module.bias is not None and module is not head:
            pairs.append((module.bias, module.bias.detach()))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            scale = module.weight.detach() / torch.sqrt(module.running_var + module.eps)
            pairs.append((module.bias, module.bias.detach() - module.running_mean * scale))
    return pairs, head.bias.detach()


def _saturation(call: ActivationCall, f: Tensor) -> Tensor | None:
    """ReLU6's constant part ``φ(f) − φ'(f)·f`` (None for ReLU/LeakyReLU, whose part is 0)."""
    return call.forward(f) - call.derivative(f) * f if call.kind == "hardtanh" else None


def masked_decompositions(model: nn.Module, x: Tensor, target: int, masks: Sequence[Sequence[Tensor] | None],
                          *, create_graph: bool) -> list[tuple[Tensor, Tensor]]:
    """For each mask set (``None``: the plain gradient), ``(∇ₓF_m·x + Σ_b ∇_bF_m·b, ∇ₓF_m)`` of the
    target logit of one image ``x`` ``[1, C, H, W]``; one forward, one backward per mask set."""
    biases, _ = bias_parameters(model)
    holder: dict = {"masks": None}
    saturated: list[tuple[int, Tensor, Tensor]] = []

    def rule(call: ActivationCall, f: Tensor) -> Tensor:
        f_clean = f.detach()

        def backward(g: Tensor) -> Tensor:
            m = holder["masks"]
            if m is None:
                return g * call.derivative(f_clean)
            if call.kind == "leaky_relu":
                return g * m[call.index] * call.derivative(f_clean)
            return masked_relu_backward(g, f_clean, m[call.index], call.low, call.high)

        value = replace_backward(call, f, backward)
        offset = _saturation(call, f_clean)
        if offset is not None:
            leaf = torch.zeros_like(value, requires_grad=True)
            saturated.append((call.index, leaf, offset))
            value = value + leaf
        return value

    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with intercept_activations(model, rule):
            score = model(x)[0, target]
        inputs = [x] + [p for p, _ in biases] + [leaf for _, leaf, _ in saturated]
        results = []
        for m in masks:
            holder["masks"] = m
            grads = torch.autograd.grad(score, inputs, create_graph=create_graph, retain_graph=True, allow_unused=True)
            total = (grads[0] * x).sum()
            for grad, (_, value) in zip(grads[1:1 + len(biases)], biases):
                if grad is not None:
                    total = total + (grad * value).sum()
            for grad, (index, _, offset) in zip(grads[1 + len(biases):], saturated):
                if grad is not None:
                    total = total + ((grad if m is None else m[index] * grad) * offset).sum()
            results.append((total, grads[0]))
    return results


class NaiveDMBP:
    """The paper's optimization for one image ``x`` ``[1, C, H, W]`` and class ``target``."""

    def __init__(self, model: nn.Module, x: Tensor, target: int, *, lr: float = 0.01, loss: str = "all") -> None:
        self.model, self.x, self.target, self.loss = model, x.detach(), target, loss
        _, head_bias = bias_parameters(model)
        with torch.no_grad():
            self.y = model(self.x)[0, target] - head_bias[target]
        calls = list_activation_calls(model, self.x).calls
        self.logits = [self.x.new_zeros(call.shape, requires_grad=True) for call in calls]
        self.optimizer = torch.optim.RMSprop(self.logits, lr=lr)

    def _masks(self) -> list[list[Tensor]]:
        sigmas = [torch.sigmoid(s) for s in self.logits]
        return [sigmas, [1 - s for s in sigmas]]

    def step(self) -> Tensor:
        """One iteration: forward, two masked backward passes with bias gradients (create_graph),
        double backward to the mask logits, RMSprop update. Returns the loss before the update."""
        with torch.enable_grad():
            (y_pos, _), (y_neg, _) = masked_decompositions(self.model, self.x, self.target, self._masks(),
                                                           create_graph=True)
            value = dmbp_loss(self.y, y_pos, y_neg, self.loss)
            grads = torch.autograd.grad(value, self.logits)
        for param, grad in zip(self.logits, grads):
            param.grad = grad
        self.optimizer.step()
        return value.detach()

    def maps(self) -> tuple[Tensor, Tensor]:
        """``(∇ₓF⁺ ⊙ x, ∇ₓF⁻ ⊙ x)`` at the current masks."""
        with torch.no_grad():
            masks = self._masks()
        (_, grad_pos), (_, grad_neg) = masked_decompositions(self.model, self.x, self.target, masks, create_graph=False)
        return grad_pos * self.x, grad_neg * self.x


def naive_dmbp(model: nn.Module, x: Tensor, targets: Tensor, *, iterations: int, lr: float = 0.01,
               loss: str = "all") -> tuple[Tensor, Tensor, Tensor]:
    """The paper's optimization, image by image: ``(positive, negative, loss_history)``."""
    positives, negatives, histories = [], [], []
    for row in range(x.shape[0]):
        run = NaiveDMBP(model, x[row:row + 1], int(targets[row]), lr=lr, loss=loss)
        histories.append(torch.stack([run.step() for _ in range(iterations)]))
        positive, negative = run.maps()
        positives.append(positive)
        negatives.append(negative)
    return torch.cat(positives), torch.cat(negatives), torch.stack(histories)
