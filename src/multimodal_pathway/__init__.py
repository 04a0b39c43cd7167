"""Alias package so the reference README's ``from multimodal_pathway import ...`` keeps working.

It also defines ``CrossModalReparamLinear`` under the reference's module path (``multimodal_pathway``), because
released M2PT files can be pickled modules of that class: with it importable, such a file unpickles (with
``trust_pickle``) and ``pathway.checkpoint.load_state_dict`` folds its ``cross_modal_scale``·``aux_weight``.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathway import *  # noqa: F401,F403
from pathway import __all__ as _pathway_all


class CrossModalReparamLinear(nn.Linear):
    """The reference code's layer, ``x (W + s·W_aux)ᵀ + b``, with its attribute names so its pickles load.

    Its state dict is the reference's: ``weight``, ``bias``, ``cross_modal_scale`` (shape ``(1,)``) and
    ``aux_weight``.  New models use ``pathway.PathwayLinear``; this class exists to read existing files.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 origin_layer: Optional[nn.Linear] = None, aux_weight: Optional[Tensor] = None,
                 is_aux_trainable: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        if aux_weight is None or tuple(aux_weight.shape) != tuple(self.weight.shape):
            raise ValueError(
                f"aux_weight must have the layer's weight shape {tuple(self.weight.shape)}, got "
                f"{None if aux_weight is None else tuple(aux_weight.shape)}"
            )
        self.cross_modal_scale = nn.Parameter(torch.zeros(1))
        self.aux_weight = aux_weight if isinstance(aux_weight, nn.Parameter) else nn.Parameter(aux_weight.clone())
        self.aux_weight.requires_grad_(is_aux_trainable)
        if origin_layer is not None:
            with torch.no_grad():
                self.weight.copy_(origin_layer.weight)
                if bias:
                    self.bias.copy_(origin_layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight + self.cross_modal_scale * self.aux_weight, self.bias)


__all__ = [*_pathway_all, "CrossModalReparamLinear"]
