"""AdamW with layer-wise lr decay, and the per-step warmup + cosine schedule of the MAE fine-tuning recipes."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from timm.optim import param_groups_layer_decay
from torch import nn

# λ and aux weights never get weight decay: decaying λ pulls the pathway shut, decaying a trainable aux weight
# erodes the very weights the pathway is meant to borrow (the reference code did both).
PATHWAY_NO_DECAY: tuple[str, ...] = ("*lambdas", "*aux_weight_*")


def layer_decay_param_groups(
    backbone: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float,
    no_weight_decay: Sequence[str] = (),
) -> list[dict]:
    """Parameter groups with ``lr = lr · lr_scale`` already applied and the scale kept for inspection.

    Layer ids come from the backbone's ``group_matcher`` (timm convention); frozen parameters and buffers
    (frozen aux weights) are not in any group, so they get no optimizer state.
    """
    names = set(getattr(backbone, "no_weight_decay", lambda: set())()) | set(no_weight_decay)
    groups = param_groups_layer_decay(
        backbone,
        weight_decay=weight_decay,
        no_weight_decay_list=sorted(names | set(PATHWAY_NO_DECAY)),
        layer_decay=layer_decay,
    )
    for group in groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return [g for g in groups if g["params"]]


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
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps, min_ratio)
    )
