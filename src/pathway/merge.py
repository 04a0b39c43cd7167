"""Folding the pathway into the target: in place (reversible) or into a plain model (deployment)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from pathway.layers import PathwayLinear
from pathway.surgery import pathway_layers


def merge_pathway_(model: nn.Module) -> nn.Module:
    """Fold ``λ·W_aux`` into every pathway layer's weight, keeping the modules (idempotent, see ``unmerge_pathway_``)."""
    for _, layer in pathway_layers(model):
        layer.merge_()
    return model


def unmerge_pathway_(model: nn.Module) -> nn.Module:
    """Reverse ``merge_pathway_``."""
    for _, layer in pathway_layers(model):
        layer.unmerge_()
    return model


@torch.no_grad()
def fuse_pathway(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A model with every ``PathwayLinear`` replaced by the plain ``nn.Linear`` it computes.

    The result has the original architecture's state dict (no ``lambdas``/``aux_weight_*`` keys), so it loads
    ``strict=True`` into e.g. ``timm.create_model('vit_base_patch16_224')``.  Without ``inplace`` the live model
    is untouched, which is what a callback exporting during training needs.
    """
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(model, PathwayLinear):
        return model.fuse()
    for name, layer in list(pathway_layers(model)):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, layer.fuse())
    return model


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The fused model's state dict, computed without deep-copying the aux weights."""
    state = {}
    fused = {name: layer.fuse() for name, layer in pathway_layers(model)}
    for key, value in model.state_dict().items():
        owner = next((n for n in fused if key.startswith(n + ".")), None)
        if owner is None:
            state[key] = value
            continue
        leaf = key[len(owner) + 1:]
        if leaf in ("weight", "bias"):
            state[key] = getattr(fused[owner], leaf).detach()
    return state
