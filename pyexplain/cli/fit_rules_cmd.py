"""``pyexplain fit-rules IMAGE... --model M --out rules.pt``: amortized LPR rules over a set of images."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import PyExplainError
from ..model_catalog import DEFAULT_MODEL
from . import app
from .images import expand_images
from .options import (
    DeviceOption, ImagesArgument, InputSizeOption, LabelsOption, MeanOption, ModelOption, OfflineOption,
    RandomWeightsOption, SeedOption, StdOption, WeightsOption, check_positive, model_spec, out_option,
    parse_options, resolve_device)

#: ``-O`` keys accepted by fit-rules (the per-image LPR options that make sense for shared channel rules).
_LOSS_KEYS = ("gamma", "alpha", "beta", "lam", "mask", "smooth_sigma", "normalize")
_RULE_KEYS = ("variant", "reference", "keep_activation_mask", "pass_saturated", "head", "init")
#: The file written when ``--out`` is a folder.
RULES_FILE = "lpr_rules.pt"


@app.command("fit-rules")
def fit_rules_command(
    images: ImagesArgument,
    out: Annotated[Path, out_option(f"Rules file to write (e.g. rules.pt), or a folder for {RULES_FILE}.")] = Path(RULES_FILE),
    model: ModelOption = DEFAULT_MODEL,
    option: Annotated[list[str], typer.Option(
        "--option", "-O", metavar="KEY=VALUE", help=f"LPR option, repeatable (lpr.KEY=VALUE too): "
        f"{', '.join(_LOSS_KEYS + _RULE_KEYS)}.")] = [],
    iterations: Annotated[int, typer.Option("--iterations", metavar="INT", help="Adam steps over the whole set.")] = 50,
    lr: Annotated[float, typer.Option("--lr", metavar="FLOAT", help="Adam learning rate.")] = 0.2,
    family: Annotated[str, typer.Option(
        "--family", metavar="NAME", help="Rule family: channel (one W per channel) or predictor (W predicted "
        "at every position from the activation; exports like channel rules).")] = "channel",
    rank: Annotated[int, typer.Option("--rank", metavar="INT", help="The predictor's rank (--family predictor).")] = 4,
    objective: Annotated[str, typer.Option(
        "--objective", metavar="NAME", help="lpr (the paper's sign-aware masking loss), deletion (a soft "
        "MoRF curve over 1-5 % of the pixels) or deletion_insertion (that curve minus a soft insertion curve).")] = "lpr",
    batch_size: Annotated[int, typer.Option(
        "--batch-size", metavar="INT", help="Images per chunk (more images: chunks are recomputed each step).")] = 8,
    val: Annotated[list[str], typer.Option(
        "--val", metavar="IMAGE", help="Held-out image (or folder, list file), repeatable: its MoRF AUC with the "
        "current rules is shown every --val-every steps and stored in the file.")] = [],
    val_every: Annotated[int, typer.Option("--val-every", metavar="INT", help="Steps between validations.")] = 10,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", metavar="PATH", help="Rules file of an earlier fit to continue for --iterations more steps "
        "(its rule settings and optimizer state are taken up).")] = None,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
    weights: WeightsOption = None,
    random_weights: RandomWeightsOption = False,
    offline: OfflineOption = False,
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    labels: LabelsOption = None,
) -> None:
    """Fit amortized LPR rules over a set of images.

    Learns one LPR rule per activation call, shared by all images (each explained for its top-1
    class), and saves them for `pyexplain explain --method lpr --rules FILE` and `pyexplain export
    --method lpr --rules FILE`."""
    import torch

    from ..api import model_device
    from ..io import open_image
    from ..methods._lpr import MASKS, NORMALIZATIONS, VARIANTS, LossConfig, check_choice
    from ..method_options import check_options
    from ..methods._lpr_rules import FAMILIES, OBJECTIVES, fit_rules, load_rules, rule_summary, save_rules
    from ..registry import get_method

    options = parse_options(option, ["lpr"], check=False).get("lpr", {})
    unknown = sorted(set(options) - set(_LOSS_KEYS + _RULE_KEYS))
    if unknown:
        raise PyExplainError(f"fit-rules has no option {unknown[0]!r}; its options: {', '.join(_LOSS_KEYS + _RULE_KEYS)}")
    options = check_options(get_method("lpr"), options)  # the same types and ranges as lpr's own options
    check_positive(iterations, "--iterations")
    check_positive(batch_size, "--batch-size")
    check_positive(val_every, "--val-every")
    check_positive(rank, "--rank")
    if family not in FAMILIES:
        raise PyExplainError(f"--family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if objective not in OBJECTIVES:
        raise PyExplainError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if resume is not None and set(options) & set(_RULE_KEYS):
        raise PyExplainError(f"--resume takes the rule settings from {str(resume)!r}; drop "
                             f"-O {sorted(set(options) & set(_RULE_KEYS))[0]}")
    if not lr > 0:
        raise PyExplainError(f"--lr must be positive, got {lr}")
    for name, choices in (("mask", MASKS), ("normalize", NORMALIZATIONS), ("variant", VARIANTS)):
        if name in options:
            check_choice(name, options[name], choices)
    if out.is_dir() or not out.suffix:
        out = out / RULES_FILE
    earlier = load_rules(resume) if resume is not None else None
    torch.manual_seed(seed)
    spec = model_spec(model, weights, random_weights, input_size, mean, std, labels)
    net, preprocess = spec.load(resolve_device(device))
    pictures = [open_image(source) for source in expand_images(images)]
    x = torch.cat([preprocess(p) for p in pictures]).to(model_device(net))
    held_out = (torch.cat([preprocess(open_image(source)) for source in expand_images(val)]).to(x.device)
                if val else None)
    config = LossConfig(**{k: options[k] for k in _LOSS_KEYS if k in options})
    rules = fit_rules(net, x, model_name=model, iterations=iterations, lr=lr, config=config, batch_size=batch_size,
                      family=family, rank=rank, objective=objective, seed=seed, progress=True, resume=earlier,
                      validation=held_out, validate_every=val_every,
                      **{k: options[k] for k in _RULE_KEYS if k in options})
    save_rules(rules, out)
    print(f"{out}: {rule_summary(rules)}", file=sys.stderr)
