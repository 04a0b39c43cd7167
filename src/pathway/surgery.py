"""Model surgery: put ``PathwayLinear`` layers into a target model, fed by one or more auxiliary models.

The auxiliary weights are looked up by name (``<main_body>.<i>.<layer>.weight``), so any module tree whose names
resolve works: timm ViTs and the Video/Point/Audio backbones alike.  Every mismatch (depth, missing layer, shape)
is an error naming the block and layer: the reference code zipped blocks and silently truncated.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Union

import torch
from torch import Tensor, nn

from pathway.checkpoint import fold_pathway_state_dict
from pathway.layers import PathwayLinear

DEFAULT_LAYER_NAMES: tuple[str, ...] = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")

AuxSource = Union[nn.Module, Mapping[str, Tensor]]


def _as_state_dict(aux: AuxSource, index: int) -> Mapping[str, Tensor]:
    """The aux's state dict with any pathway it carries (ours or the reference code's) folded into its weights."""
    if isinstance(aux, nn.Module):
        state = aux.state_dict()
    elif isinstance(aux, Mapping):
        state = aux
    else:
        raise TypeError(f"an auxiliary model must be an nn.Module or a state dict, got {type(aux).__name__}")
    return fold_pathway_state_dict(state, source=f"auxiliary model {index}")


def _count_blocks(state_dict: Mapping[str, Tensor], main_body_name: str) -> int:
    prefix = main_body_name + "."
    indices = {int(k[len(prefix):].split(".", 1)[0]) for k in state_dict
               if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0].isdigit()}
    return max(indices) + 1 if indices else 0


def _aux_weight(state_dict: Mapping[str, Tensor], name: str, aux_index: int, layer: nn.Module) -> Tensor:
    """The aux weight for one layer (already folded when the aux is itself a pathway model)."""
    key = f"{name}.weight"
    if key not in state_dict:
        raise KeyError(f"auxiliary model {aux_index} has no '{key}' (needed for target layer '{name}')")
    weight = state_dict[key]
    if tuple(weight.shape) != tuple(layer.weight.shape):
        raise ValueError(
            f"shape mismatch at '{name}': target weight {tuple(layer.weight.shape)}, "
            f"auxiliary model {aux_index} weight {tuple(weight.shape)}"
        )
    return weight


def reparameterize_aux_into_target_model(
    target: nn.Module,
    aux: Union[AuxSource, Sequence[AuxSource]],
    layer_names: Sequence[str] = DEFAULT_LAYER_NAMES,
    main_body_name: str = "blocks",
    lambda_init: float = 0.0,
    aux_trainable: bool = True,
    save_aux: bool = True,
) -> nn.Module:
    """Replace each ``<main_body_name>.<i>.<layer>`` linear of ``target`` with a ``PathwayLinear``.

    ``aux`` is one auxiliary model (module or state dict) or a list of them; each contributes its own λ per
    layer.  The target is modified in place, as in the reference README, and also returned (the reference returns
    None).  As in the reference code, the aux weights are trained (``aux_trainable``); frozen, ``save_aux`` says
    whether they are in the state dict.  The aux weights are copies, where the reference shares the aux model's
    Parameter: training the target must not rewrite the aux model.  With one aux, the model loads a state dict the
    reference code wrote (``cross_modal_scale``/``aux_weight`` keys, see ``PathwayLinear``) with ``strict=True``.
    """
    auxes = list(aux) if isinstance(aux, (list, tuple)) else [aux]
    if not auxes:
        raise ValueError("reparameterize_aux_into_target_model needs at least one auxiliary model")
    aux_states = [_as_state_dict(a, j) for j, a in enumerate(auxes)]
    body = target.get_submodule(main_body_name)
    if not isinstance(body, (nn.ModuleList, nn.Sequential)):
        raise TypeError(f"target '{main_body_name}' must be an nn.ModuleList/Sequential, got {type(body).__name__}")
    depth = len(body)
    for j, state in enumerate(aux_states):
        aux_depth = _count_blocks(state, main_body_name)
        if aux_depth != depth:
            raise ValueError(
                f"depth mismatch: target '{main_body_name}' has {depth} blocks, auxiliary model {j} has {aux_depth}"
            )
    for i, block in enumerate(body):
        for layer_name in layer_names:
            full_name = f"{main_body_name}.{i}.{layer_name}"
            parent_name, _, attr = layer_name.rpartition(".")
            try:
                parent = block.get_submodule(parent_name) if parent_name else block
                layer = getattr(parent, attr)
            except AttributeError as err:
                raise AttributeError(f"target has no layer '{full_name}'") from err
            if isinstance(layer, PathwayLinear):
                raise ValueError(f"'{full_name}' already carries a pathway; apply all auxiliary models in one call")
            if not isinstance(layer, nn.Linear):
                raise TypeError(f"target layer '{full_name}' is {type(layer).__name__}, expected nn.Linear")
            weights = [_aux_weight(state, full_name, j, layer) for j, state in enumerate(aux_states)]
            setattr(parent, attr, PathwayLinear(layer, weights, lambda_init=lambda_init, aux_trainable=aux_trainable,
                                                save_aux=save_aux))
    return target


def pathway_layers(model: nn.Module) -> Iterator[tuple[str, PathwayLinear]]:
    """Every ``PathwayLinear`` of ``model`` with its qualified name."""
    for name, module in model.named_modules():
        if isinstance(module, PathwayLinear):
            yield name, module


@torch.no_grad()
def set_lambdas(model: nn.Module, value: float) -> None:
    """Set every λ of ``model`` to ``value`` (tests and ablations)."""
    for _, layer in pathway_layers(model):
        layer.lambdas.fill_(value)


def lambda_table(model: nn.Module) -> dict[str, list[float]]:
    """``{layer name: [λ per aux]}`` for logging, plots and export sidecars."""
    return {name: layer.lambdas.detach().float().cpu().tolist() for name, layer in pathway_layers(model)}
