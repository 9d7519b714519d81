"""Naive LPR, written straight from the paper (Yang et al., ECCV 2020, Fig. 3): the reference point
for ``bench_lpr.py`` and for the tests, which check the optimized ``method="lpr"`` against it.

One image at a time; every iteration runs Step 1 afresh (the reference forward and the forward of the
image, with module hooks placing the learnable plugin on each activation), Step 2 as a
``create_graph=True`` backward, Step 3 the masks, Step 4 the two masked images as two separate
forwards, then ``loss.backward()`` into the plugin weights and an Adam step.

The plugin is put in with forward hooks on the activation modules (``nn.ReLU``/``nn.ReLU6``): a
pre-hook keeps a copy of the input ``f`` (in-place activations overwrite it) and the forward hook
returns ``(y − f·r).detach() + f·r`` with ``r = tanh(W ⊙ (f − f_ref))``: the value ``y`` with the
backward ``g_in = g_out ⊙ r``. Calls are numbered in execution order, so reused modules work.
Functional activations (``F.relu`` in ``forward``) are not reached by module hooks.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

ACTIVATIONS = (nn.ReLU, nn.ReLU6)


class _Plugins:
    """Forward hooks on every activation module; ``mode`` is "record" (keep inputs) or "rule"."""

    def __init__(self, model: nn.Module, init: float) -> None:
        self.init = init
        self.mode = "off"
        self.inputs: list[Tensor] = []
        self.reference: list[Tensor] = []
        self.weights: list[Tensor] = []
        self.handles = []
        for module in model.modules():
            if isinstance(module, ACTIVATIONS):
                self.handles.append(module.register_forward_pre_hook(self.pre_hook))
                self.handles.append(module.register_forward_hook(self.hook))

    def pre_hook(self, module, args):
        if self.mode != "off" and args[0].ndim == 4:
            self.inputs.append(args[0].clone())

    def hook(self, module, args, output):
        if self.mode != "rule" or args[0].ndim != 4:  # plugins on the convolutional trunk only
            return None
        k = len(self.inputs) - 1
        f = self.inputs[k]
        if k == len(self.weights):  # first iteration: create this call's plugin weights
            self.weights.append(torch.full(f.shape, self.init, dtype=f.dtype, requires_grad=True))
        r = torch.tanh(self.weights[k] * (f.detach() - self.reference[k]))
        return (output - f * r).detach() + f * r

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def lpr_naive(model: nn.Module, image: Tensor, target: int, *, iterations: int = 50, lr: float = 0.2,
              gamma: float = 10.0, alpha: float = 0.75, beta: float = 0.25, lam: float = 0.1,
              init: float = 1.0) -> tuple[Tensor, list[float]]:
    """LPR for one image ``[1, C, H, W]`` (logit score, position plugins, reference baseline, sigmoid
    masks, min-max normalization). Returns the attribution of the last iteration and the loss history;
    as ``method="lpr"``, the last iteration evaluates the loss without an Adam step."""
    plugins = _Plugins(model, init)
    optimizer = None
    history: list[float] = []
    try:
        for step in range(iterations):
            plugins.mode, plugins.inputs = "record", []  # Step 1: the reference forward
            with torch.no_grad():
                model(torch.zeros_like(image))
            plugins.reference = [f.detach() for f in plugins.inputs]
            plugins.mode, plugins.inputs = "rule", []  # Step 1: the image, plugins in place
            x = image.clone().requires_grad_(True)
            clean = model(x)[0, target]
            plugins.mode, plugins.inputs = "off", []
            if optimizer is None:
                optimizer = torch.optim.Adam(plugins.weights, lr=lr)
            (grad,) = torch.autograd.grad(clean, x, create_graph=True)  # Step 2
            attribution = grad * image
            a = attribution.sum(1, keepdim=True)  # Step 3
            a = (a - a.min()) / (a.max() - a.min())
            positive = 1 - torch.sigmoid(gamma * (a - alpha))
            negative = torch.sigmoid(gamma * (a - beta))
            lp = model(image * positive)[0, target] - clean.detach()  # Step 4
            ln = clean.detach() - model(image * negative)[0, target]
            lm = (1 - positive).abs().mean() + (1 - negative).abs().mean()
            loss = lp + ln + lam * lm
            history.append(float(loss.detach()))
            if step < iterations - 1:
                optimizer.zero_grad()
                loss.backward(inputs=plugins.weights)
                optimizer.step()
    finally:
        plugins.remove()
    return attribution.detach(), history
