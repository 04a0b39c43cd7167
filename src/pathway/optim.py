"""AdamW with layer-wise lr decay, and the warmup + cosine schedule of the MAE fine-tuning recipes."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from timm.optim import param_groups_layer_decay
from torch import nn

from pathway.layers import LAMBDAS, is_lambdas_key

# λ never gets weight decay: decaying it pulls the pathway shut.  Trained aux weights are ordinary weights of their
# block (weight decay and the block's lr scale), as in the reference code, where only `cross_modal_scale` escapes
# weight decay.
PATHWAY_NO_DECAY: tuple[str, ...] = (f"*.{LAMBDAS}",)


def layer_decay_param_groups(
    backbone: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float,
    no_weight_decay: Sequence[str] = (),
    lambda_lr_scale: float = 1.0,
) -> list[dict]:
    """Parameter groups with ``lr = lr · lr_scale`` already applied and the scale kept for inspection.

    Layer ids come from the backbone's ``group_matcher`` (timm convention); frozen parameters and buffers
    (frozen aux weights) are not in any group, so they get no optimizer state.  The λ of each block are a group of
    their own whose ``lr_scale`` is the block's times ``lambda_lr_scale``.
    """
    names = set(getattr(backbone, "no_weight_decay", lambda: set())()) | set(no_weight_decay)
    groups = param_groups_layer_decay(
        backbone,
        weight_decay=weight_decay,
        no_weight_decay_list=sorted(names | set(PATHWAY_NO_DECAY)),
        layer_decay=layer_decay,
    )
    lambda_ids = {id(p) for name, p in backbone.named_parameters() if is_lambdas_key(name)}
    split: list[dict] = []
    for group in groups:
        lambdas = [p for p in group["params"] if id(p) in lambda_ids]
        others = [p for p in group["params"] if id(p) not in lambda_ids]
        if others:
            split.append({**group, "params": others})
        if lambdas:
            split.append({**group, "params": lambdas, "lr_scale": group["lr_scale"] * lambda_lr_scale})
    for group in split:
        group["lr"] = lr * group["lr_scale"]
    return split


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of each group's initial lr: linear warmup, then cosine from 1 down to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped per optimizer step or per epoch: ``warmup_steps``/``total_steps`` count whichever the caller steps."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps, min_ratio)
    )
