"""The size of a ViT-style transformer stack: one value for the backbones this project builds itself (Point, Video).

Their LightningModules keep the six numbers as flat hyper-parameters (CLI keys and checkpoint
``hyper_parameters``), and ``from_hparams`` gathers them back into the one value the backbone takes.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch


@dataclass(frozen=True)
class TransformerSize:
    """Width, depth and heads of a transformer stack and its regularisation; defaults are ViT-B's.

    Args:
        mlp_ratio: hidden width of each block's MLP over ``embed_dim``.
        qkv_bias: whether the attention's q, k, v projections have biases.
        drop_path_rate: stochastic depth of the last block, rising linearly from 0 at the first.
    """

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> "TransformerSize":
        """The size named by the flat ``hparams`` that carry it; fields they lack keep this class's defaults."""
        return cls(**{f.name: hparams[f.name] for f in fields(cls) if f.name in hparams})

    def drop_path_rates(self) -> list[float]:
        """Stochastic depth of each block."""
        return torch.linspace(0, self.drop_path_rate, self.depth).tolist()
