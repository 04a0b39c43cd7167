"""AdamW with layer-wise lr decay, and the warmup + cosine lr rules of the reference recipes.

Each rule is the one its reference script applies (MAE / AudioMAE, VideoMAE); Point-MAE's per-epoch rule is timm's
``CosineLRScheduler`` itself, built by ``PathwayModule.configure_optimizers``.
"""
from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence

import torch
from timm.models import group_parameters
from timm.optim import param_groups_layer_decay
from timm.optim._param_groups import auto_group_layers
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
    their own whose ``lr_scale`` is the block's times ``lambda_lr_scale``.  Each group has a ``name`` (``embed``,
    ``block3``, ``block3_no_wd``, ``block3_lambda``, ``head``...), which ``LearningRateMonitor`` logs the lr under.
    """
    names = set(getattr(backbone, "no_weight_decay", lambda: set())()) | set(no_weight_decay)
    no_decay_list = sorted(names | set(PATHWAY_NO_DECAY))
    groups = param_groups_layer_decay(
        backbone,
        weight_decay=weight_decay,
        no_weight_decay_list=no_decay_list,
        layer_decay=layer_decay,
    )
    param_names = {id(p): name for name, p in backbone.named_parameters()}
    layer_of = _layer_ids(backbone)
    last_layer = max(layer_of.values())
    lambda_ids = {id(p) for name, p in backbone.named_parameters() if is_lambdas_key(name)}
    split: list[dict] = []
    for group in groups:
        first = param_names[id(group["params"][0])]
        layer = layer_of.get(first, last_layer)
        block = "embed" if layer == 0 else "head" if layer == last_layer else f"block{layer - 1}"
        no_decay = group["params"][0].ndim <= 1 or any(fnmatch.fnmatch(first, p) for p in no_decay_list)
        lambdas = [p for p in group["params"] if id(p) in lambda_ids]
        others = [p for p in group["params"] if id(p) not in lambda_ids]
        if others:
            split.append({**group, "params": others, "name": f"{block}_no_wd" if no_decay else block})
        if lambdas:
            split.append({**group, "params": lambdas, "lr_scale": group["lr_scale"] * lambda_lr_scale,
                          "name": f"{block}_lambda"})
    for group in split:
        group["lr"] = lr * group["lr_scale"]
    return split


def _layer_ids(backbone: nn.Module) -> dict[str, int]:
    """Each parameter's layer id, as ``param_groups_layer_decay`` assigns it (0: embeddings, then one per block,
    the last: head and final norm)."""
    if hasattr(backbone, "group_matcher"):
        return group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)
    return auto_group_layers(backbone)


def mae_lr_factor(epoch: float, warmup_epochs: float, epochs: float, min_ratio: float) -> float:
    """MAE's ``adjust_learning_rate`` as a multiple of the peak lr, at a fractional epoch.

    Linear warmup from 0 (lr 0 at the very first step), then a half-cycle cosine from 1 down to ``min_ratio``; the
    fraction of the epoch is the caller's (MAE: ``data_iter_step / len(data_loader)``).
    """
    if epoch < warmup_epochs:
        return epoch / warmup_epochs
    progress = min(1.0, (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def videomae_lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """VideoMAE's per-iteration ``cosine_scheduler`` as a multiple of the peak lr.

    The warmup is ``linspace(0, 1, warmup_steps)`` (0 at the first step, the peak at the last warmup step), then a
    cosine over the remaining ``total_steps - warmup_steps`` iterations; steps past the end stay at ``min_ratio``.
    """
    if step < warmup_steps:
        return step / (warmup_steps - 1) if warmup_steps > 1 else 0.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """MAE's rule over whole optimizer steps (one "epoch" per step): lr 0 at step 0, peak at ``warmup_steps``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: mae_lr_factor(step, warmup_steps, total_steps, min_ratio)
    )
