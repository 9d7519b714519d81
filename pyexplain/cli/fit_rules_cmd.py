"""``pyexplain fit-rules IMAGES... --model M --out rules.pt``: amortized LPR channel rules over a set of images."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import typer

from ..api import model_device
from ..errors import PyExplainError
from ..io import open_image
from ..methods._lpr import MASKS, NORMALIZATIONS, VARIANTS, LossConfig, check_choice
from ..methods._lpr_rules import fit_rules, rule_summary, save_rules
from ..models import DEFAULT_MODEL
from . import app
from .options import OfflineOption
from .options import (
    DeviceOption, InputSizeOption, MeanOption, ModelOption, RandomWeightsOption, SeedOption, StdOption,
    WeightsOption, model_spec, parse_method_options, resolve_device)

#: ``-O`` keys accepted by fit-rules (the per-image LPR options that make sense for shared channel rules).
_LOSS_KEYS = ("gamma", "alpha", "beta", "lam", "mask", "smooth_sigma", "normalize")
_RULE_KEYS = ("variant", "reference", "keep_activation_mask", "head", "init")


@app.command("fit-rules")
def fit_rules_command(
    images: list[str] = typer.Argument(..., help="Image files or builtin:NAME photos to fit the rules on."),
    out: Path = typer.Option(..., "--out", "-o", help="Rules file to write (e.g. rules.pt)."),
    model: ModelOption = DEFAULT_MODEL,
    iterations: int = typer.Option(50, "--iterations", help="Adam steps over the whole set."),
    lr: float = typer.Option(0.2, "--lr", help="Adam learning rate."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per chunk (more images: chunks are recomputed each step)."),
    option: list[str] = typer.Option([], "--option", "-O", help=f"LPR option KEY=VALUE: {', '.join(_LOSS_KEYS + _RULE_KEYS)}."),
    device: DeviceOption = "auto",
    weights: WeightsOption = None,
    random_weights: RandomWeightsOption = False,
    offline: OfflineOption = False,
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    seed: SeedOption = 0,
) -> None:
    """Learn one LPR channel rule per activation call, shared by all IMAGES (each explained for its
    top-1 class), and save it for `pyexplain explain --method lpr --rules FILE`."""
    options = parse_method_options(option)
    unknown = sorted(set(options) - set(_LOSS_KEYS + _RULE_KEYS))
    if unknown:
        raise PyExplainError(f"fit-rules has no option {unknown[0]!r}; its options: {', '.join(_LOSS_KEYS + _RULE_KEYS)}")
    if iterations < 1 or batch_size < 1 or not lr > 0:
        raise PyExplainError("--iterations and --batch-size must be at least 1 and --lr positive")
    for name, choices in (("mask", MASKS), ("normalize", NORMALIZATIONS), ("variant", VARIANTS)):
        if name in options:
            check_choice(name, options[name], choices)
    torch.manual_seed(seed)
    spec = model_spec(model, weights, random_weights, input_size, mean, std)
    net, preprocess = spec.load(resolve_device(device))
    pictures = [open_image(source) for source in images]
    x = torch.cat([preprocess(p) for p in pictures]).to(model_device(net))
    config = LossConfig(**{k: options[k] for k in _LOSS_KEYS if k in options})
    rules = fit_rules(net, x, model_name=model, iterations=iterations, lr=lr, config=config, batch_size=batch_size,
                      progress=True, **{k: options[k] for k in _RULE_KEYS if k in options})
    save_rules(rules, out)
    print(f"{out}: {rule_summary(rules)}", file=sys.stderr)

