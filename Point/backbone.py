"""Point-MAE-style point-cloud transformer, widened to ViT-B, so the Multimodal Pathway can pair it with
image/video/audio ViTs of the same width and depth.

Tokens: farthest point sampling picks ``num_groups`` centres, each centre's ``group_size`` nearest points
(centred on it) go through a mini-PointNet to one ``embed_dim`` vector, and an MLP on the centre's xyz gives
the token's position embedding.  As in Point-MAE, the position embedding is added to the input of *every*
block.  The blocks are timm ``Block``s with ``nn.LayerNorm`` (eps 1e-5 as in Point-MAE; timm's default is 1e-6),
so ``blocks.<i>.attn.qkv`` / ``attn.proj`` / ``mlp.fc1`` / ``mlp.fc2`` are ``nn.Linear`` modules called on the
forward path and can be swapped for ``PathwayLinear``.

Module names follow Point-MAE's (``encoder.first_conv``, ``pos_embed``, ``cls_pos``, ``norm``) so its
checkpoints load after a prefix rename (``checkpoint_filter_fn``).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from pathway.size import TransformerSize
from Point.ops import farthest_point_sample, gather_points, knn


class MiniPointNet(nn.Module):
    """Embeds each group of ``K`` centred points (B, G, K, 3) into one vector (B, G, out_dim).

    Shared point-wise MLP, max-pool, concatenate the pooled feature back to every point, a second shared MLP
    and a final max-pool: the group's shape seen both locally and as a whole.
    """

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Conv1d(512, out_dim, 1)
        )

    def forward(self, groups: Tensor) -> Tensor:
        batch, num_groups, k, _ = groups.shape
        x = self.first_conv(groups.reshape(batch * num_groups, k, 3).transpose(1, 2))
        pooled = x.max(dim=2, keepdim=True).values
        x = self.second_conv(torch.cat([pooled.expand(-1, -1, k), x], dim=1))
        return x.max(dim=2).values.reshape(batch, num_groups, -1)


def group_points(points: Tensor, num_groups: int, group_size: int) -> tuple[Tensor, Tensor]:
    """``(centres (B, G, 3), neighbourhoods (B, G, K, 3) relative to their centre)`` of clouds (B, N, 3)."""
    if points.shape[1] < group_size:
        raise ValueError(f"clouds of {points.shape[1]} points are too small for groups of {group_size}")
    centers, _ = farthest_point_sample(points, num_groups)
    _, idx = knn(centers, points, group_size)
    neighbourhoods = gather_points(points, idx) - centers.unsqueeze(2)
    return centers, neighbourhoods


class PointTransformer(nn.Module):
    """The point-cloud transformer encoder with a Point-MAE classification head.

    ``forward(points (B, N, 3)) -> logits (B, num_classes)``: ``[cls token, max over point tokens]`` of the
    final normed tokens into Linear-BN-ReLU-Dropout ×2 and a last Linear.  ``num_classes=0`` drops the head
    (and the cls token when ``cls_token=False``) for use as a feature extractor.  What ``Point.model.PointModule``
    decides (sizes, grouping, head dropout) has no default here, so the recipe's values live in one place.
    """

    def __init__(
        self,
        num_classes: int,
        num_groups: int,
        group_size: int,
        size: TransformerSize,
        head_dropout: float,
        head_hidden: int = 256,
        cls_token: bool = True,
    ) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.group_size = group_size
        self.embed_dim = embed_dim = size.embed_dim
        self.num_classes = num_classes
        self.num_prefix_tokens = 1 if cls_token else 0
        self.encoder = MiniPointNet(embed_dim)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, embed_dim))
        if cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.cls_pos = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(
            Block(embed_dim, size.num_heads, mlp_ratio=size.mlp_ratio, qkv_bias=size.qkv_bias, drop_path=rate,
                  norm_layer=nn.LayerNorm)
            for rate in size.drop_path_rates()
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = self.build_head(num_classes, head_hidden, head_dropout) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    def build_head(self, num_classes: int, hidden: int, dropout: float) -> nn.Module:
        if not self.num_prefix_tokens:
            raise ValueError("the classification head reads the cls token: build with cls_token=True")
        return nn.Sequential(
            nn.Linear(2 * self.embed_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv1d):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward_tokens(self, points: Tensor, levels: Sequence[int] = ()) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``(centres (B, G, 3), normed final tokens (B, P+G, D), normed outputs of the blocks in levels)``."""
        if points.ndim != 3 or points.shape[-1] < 3:
            raise ValueError(f"expected clouds of shape (batch, points, 3), got {tuple(points.shape)}")
        centers, neighbourhoods = group_points(points[..., :3].contiguous(), self.num_groups, self.group_size)
        x = self.encoder(neighbourhoods)
        pos = self.pos_embed(centers)
        if self.num_prefix_tokens:
            batch = x.shape[0]
            x = torch.cat([self.cls_token.expand(batch, -1, -1), x], dim=1)
            pos = torch.cat([self.cls_pos.expand(batch, -1, -1), pos], dim=1)
        wanted = set(levels)
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x + pos)
            if i in wanted:
                features.append(self.norm(x))
        return centers, self.norm(x), features

    def forward_head(self, tokens: Tensor) -> Tensor:
        pooled = torch.cat([tokens[:, 0], tokens[:, self.num_prefix_tokens:].max(dim=1).values], dim=-1)
        return self.head(pooled)

    def forward(self, points: Tensor) -> Tensor:
        _, tokens, _ = self.forward_tokens(points)
        return self.forward_head(tokens)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm-style parameter grouping: stem (tokenizer, cls, pos), one group per block, then the rest."""
        return {
            "stem": r"^cls_token|^cls_pos|^pos_embed|^encoder\.",
            "blocks": r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        }

    def no_weight_decay(self) -> set[str]:
        """Point-MAE's ``add_weight_decay`` exempts 1-D parameters, biases and names with ``token``: ``cls_pos``
        (1, 1, D) is decayed there, so it is here."""
        return {"cls_token"}


def interpolate_features(points: Tensor, centers: Tensor, features: Tensor, k: int = 3) -> Tensor:
    """Features at every point (B, N, C) from features at centres (B, G, C): inverse squared-distance weights
    over the ``k`` nearest centres (PointNet++ feature propagation)."""
    dists, idx = knn(points, centers, min(k, centers.shape[1]))
    weights = 1.0 / (dists + 1e-8)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return (gather_points(features, idx) * weights.unsqueeze(-1).to(features.dtype)).sum(dim=2)


def _pointwise_mlp(dims: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers += [nn.Conv1d(dims[i], dims[i + 1], 1), nn.BatchNorm1d(dims[i + 1]), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class PointPartSegmenter(PointTransformer):
    """Part segmentation: ``forward(points (B, N, 3), category (B,)) -> part logits (B, N, num_parts)``.

    The normed outputs of the blocks in ``feature_levels`` are concatenated per token, propagated from the
    centres to every point (``interpolate_features``) together with the point's xyz through a shared MLP, then
    joined with the cloud's max- and mean-pooled token features and an embedding of the object category, and
    classified per point by a shared MLP.  No cls token (nothing would read it).  Arguments as
    ``Point.model.PointSegmenter`` sets them (it holds the defaults).
    """

    def __init__(
        self,
        num_parts: int,
        num_categories: int,
        feature_levels: Sequence[int],
        propagation_dims: Sequence[int],
        head_dims: Sequence[int],
        head_dropout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=0, head_dropout=head_dropout, cls_token=False, **kwargs)
        depth = len(self.blocks)
        if not feature_levels or any(not 0 <= i < depth for i in feature_levels):
            raise ValueError(f"feature_levels {list(feature_levels)} must be block indices in 0..{depth - 1}")
        self.feature_levels = tuple(feature_levels)
        self.num_parts = num_parts
        self.num_categories = num_categories
        level_dim = len(self.feature_levels) * self.embed_dim
        self.category_embed = nn.Sequential(
            nn.Conv1d(num_categories, 64, 1), nn.BatchNorm1d(64), nn.LeakyReLU(0.2, inplace=True)
        )
        self.propagation = _pointwise_mlp([level_dim + 3, *propagation_dims])
        self.seg_head = nn.Sequential(
            _pointwise_mlp([propagation_dims[-1] + 2 * level_dim + 64, head_dims[0]]),
            nn.Dropout(head_dropout),
            _pointwise_mlp(list(head_dims)),
            nn.Conv1d(head_dims[-1], num_parts, 1),
        )
        for module in (self.category_embed, self.propagation, self.seg_head):
            module.apply(self._init_weights)

    def forward(self, points: Tensor, category: Optional[Tensor] = None) -> Tensor:  # type: ignore[override]
        if category is None:
            raise ValueError("part segmentation needs the object category of every cloud")
        xyz = points[..., :3].contiguous()
        centers, _, levels = self.forward_tokens(xyz, self.feature_levels)
        tokens = torch.cat(levels, dim=-1)
        per_point = interpolate_features(xyz, centers, tokens)
        per_point = self.propagation(torch.cat([per_point, xyz], dim=-1).transpose(1, 2))
        num_points = xyz.shape[1]
        pooled = torch.cat([tokens.max(dim=1).values, tokens.mean(dim=1)], dim=-1)
        onehot = F.one_hot(category.long(), self.num_categories).to(pooled.dtype).unsqueeze(-1)
        context = torch.cat([pooled.unsqueeze(-1), self.category_embed(onehot)], dim=1)
        logits = self.seg_head(torch.cat([per_point, context.expand(-1, -1, num_points)], dim=1))
        return logits.transpose(1, 2)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {
            "stem": r"^pos_embed|^encoder\.",
            "blocks": r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        }

    def no_weight_decay(self) -> set[str]:
        return set()


_POINT_MAE_DROPPED = re.compile(r"^(MAE_decoder|decoder_|mask_token|increase_dim|reduce_dim_decoder)")


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename Point-MAE pre-training/fine-tuning keys to ``PointTransformer``'s; other keys pass unchanged.

    ``module.`` / ``base_model.`` / ``MAE_encoder.`` prefixes are stripped, ``blocks.blocks.<i>`` (Point-MAE's
    ``TransformerEncoder`` wrapper) becomes ``blocks.<i>``, ``cls_head_finetune.`` becomes ``head.``, and the
    pre-training decoder (``MAE_decoder``, ``mask_token``, ``decoder_pos_embed``, ``increase_dim``) is dropped.
    """
    converted = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "base_model.", "MAE_encoder."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if _POINT_MAE_DROPPED.match(key):
            continue
        if key.startswith("blocks.blocks."):
            key = key[len("blocks."):]
        if key.startswith("cls_head_finetune."):
            key = "head." + key[len("cls_head_finetune."):]
        converted[key] = value
    return converted
