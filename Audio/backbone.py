"""The audio ViT: timm's VisionTransformer over a one-channel ``time x mel`` fbank image, and AudioMAE loading.

A ``[B, 1, target_length, num_mel_bins]`` fbank is cut into 16x16 patches (time-major token order, the AudioMAE
grid: 64 x 8 tokens for 1024 x 128), a class token is kept (AudioMAE checkpoints carry one) but the head pools
the mean of the patch tokens through ``fc_norm``, as AudioMAE fine-tuning does.  The backbone is a plain timm
model, so a merged pathway state dict loads ``strict=True`` into it.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Literal, Optional

import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

log = logging.getLogger(__name__)

PosEmbedKind = Literal["learn", "sincos"]

# Keys of an AudioMAE pre-training checkpoint that have no place in the classifier.
AUDIOMAE_DROP_PREFIXES: tuple[str, ...] = ("decoder_", "mask_token")


def sincos_pos_embed_2d(embed_dim: int, grid: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """Fixed 2-D sin-cos position embedding ``[1, prefix + rows*cols, embed_dim]`` (prefix rows are zero).

    The first half of the channels encodes the row (time) index, the second half the column (mel) index, each
    as ``[sin(p·ω_k), cos(p·ω_k)]`` with ``ω_k = 10000^(-k / (D/4))``.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64), torch.arange(grid[1], dtype=torch.float64), indexing="ij"
    )

    def encode(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([encode(rows), encode(cols)], dim=1)
    table = torch.cat([torch.zeros(num_prefix_tokens, embed_dim, dtype=torch.float64), table], dim=0)
    return table.float().unsqueeze(0)


def build_audio_vit(
    num_classes: int,
    model_name: str = "vit_base_patch16_224",
    target_length: int = 1024,
    num_mel_bins: int = 128,
    embed_dim: Optional[int] = None,
    depth: Optional[int] = None,
    num_heads: Optional[int] = None,
    drop_path_rate: float = 0.1,
    pos_embed: PosEmbedKind = "learn",
) -> VisionTransformer:
    """A timm ViT for ``[B, 1, target_length, num_mel_bins]`` fbanks; size overrides make tiny test models."""
    if pos_embed not in ("learn", "sincos"):
        raise ValueError(f"pos_embed must be 'learn' or 'sincos', got {pos_embed!r}")
    sizes = (("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads))
    overrides = {k: v for k, v in sizes if v is not None}
    model = timm.create_model(
        model_name,
        pretrained=False,
        num_classes=num_classes,
        img_size=(target_length, num_mel_bins),
        in_chans=1,
        global_pool="avg",
        fc_norm=True,
        class_token=True,
        drop_path_rate=drop_path_rate,
        **overrides,
    )
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"model_name '{model_name}' builds a {type(model).__name__}, expected a timm VisionTransformer")
    patch = model.patch_embed.patch_size
    if target_length % patch[0] or num_mel_bins % patch[1]:
        raise ValueError(
            f"target_length {target_length} and num_mel_bins {num_mel_bins} must be multiples of the patch size {patch}"
        )
    if pos_embed == "sincos":
        table = sincos_pos_embed_2d(model.embed_dim, model.patch_embed.grid_size, model.num_prefix_tokens)
        with torch.no_grad():
            model.pos_embed.copy_(table)
        model.pos_embed.requires_grad_(False)
    return model


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: VisionTransformer) -> dict[str, Tensor]:
    """An AudioMAE (pre-training or fine-tuned) state dict -> one that loads into ``model``.

    Drops the decoder and mask token; drops the final ``norm`` when the checkpoint has no ``fc_norm`` and the
    model pools through ``fc_norm`` (the AudioMAE fine-tuning convention: ``fc_norm`` starts fresh); sums RGB
    patch-embedding filters into one channel; interpolates the position embedding along time when
    ``target_length`` differs.  A position embedding that is not on a ``(time, mel)`` grid of the model's mel
    width (an image ViT) is passed on unchanged, and ``pathway.checkpoint.load_weights`` decides whether it fits.
    A head of another class count is left to the base class (``PathwayModule.load_target`` skips it).
    """
    out = {k: v for k, v in state_dict.items() if not k.startswith(AUDIOMAE_DROP_PREFIXES)}
    own = model.state_dict()
    if "fc_norm.weight" not in out and "fc_norm.weight" in own and "norm.weight" not in own:
        out = {k: v for k, v in out.items() if not k.startswith("norm.")}
    proj = out.get("patch_embed.proj.weight")
    if proj is not None and proj.ndim == 4 and proj.shape[1] != 1 and own["patch_embed.proj.weight"].shape[1] == 1:
        out["patch_embed.proj.weight"] = proj.sum(dim=1, keepdim=True)
    pos = out.get("pos_embed")
    if pos is not None and pos.shape != own["pos_embed"].shape and _on_mel_grid(pos, model):
        out["pos_embed"] = _resize_time_pos_embed(pos, model)
    return out


def _on_mel_grid(pos: Tensor, model: VisionTransformer) -> bool:
    if pos.ndim != 3:
        return False
    patch_tokens = pos.shape[1] - model.num_prefix_tokens
    cols = model.patch_embed.grid_size[1]
    return pos.shape[-1] == model.embed_dim and patch_tokens > 0 and patch_tokens % cols == 0


def _resize_time_pos_embed(pos: Tensor, model: VisionTransformer) -> Tensor:
    prefix = model.num_prefix_tokens
    rows, cols = model.patch_embed.grid_size
    old = ((pos.shape[1] - prefix) // cols, cols)
    log.info("interpolating the checkpoint's pos_embed from a %s to a %s patch grid", old, (rows, cols))
    return resample_abs_pos_embed(pos, new_size=[rows, cols], old_size=list(old), num_prefix_tokens=prefix)


def forward_with_patch_masking(model: VisionTransformer, x: Tensor, mask_t_prob: float, mask_f_prob: float) -> Tensor:
    """The classifier's logits with whole time rows and mel columns of patch tokens dropped (AudioMAE fine-tuning).

    AudioMAE fine-tunes with ``--mask_2d --mask_t_prob 0.2 --mask_f_prob 0.2``: per sample, a random
    ``int(T·(1-mask_t_prob))`` of the ``T`` time rows and ``int(F·(1-mask_f_prob))`` of the ``F`` mel columns of the
    patch grid are kept (each in random order), after the position embedding is added, so the encoder sees a
    smaller ``T' x F'`` grid and must not rely on any single time span or band.  Training only: evaluation always
    sees every token.  The class token is kept; the head pools the kept tokens as in ``model.forward``.
    """
    if not (0.0 <= mask_t_prob < 1.0 and 0.0 <= mask_f_prob < 1.0):
        raise ValueError(f"mask_t_prob and mask_f_prob must be in [0, 1), got {mask_t_prob} and {mask_f_prob}")
    if model.cls_token is None or model.num_prefix_tokens != 1 or getattr(model, "no_embed_class", False):
        raise ValueError("patch masking needs an AudioMAE-style ViT: one class token with its own position embedding")
    rows, cols = model.patch_embed.grid_size
    tokens = model.patch_embed(x) + model.pos_embed[:, 1:]
    batch, _, dim = tokens.shape
    keep_rows, keep_cols = int(rows * (1 - mask_t_prob)), int(cols * (1 - mask_f_prob))
    row_ids = torch.rand(batch, rows, device=x.device).argsort(dim=1)[:, :keep_rows]
    col_ids = torch.rand(batch, cols, device=x.device).argsort(dim=1)[:, :keep_cols]
    grid = tokens.reshape(batch, rows, cols, dim)
    grid = grid.gather(1, row_ids[:, :, None, None].expand(-1, -1, cols, dim))
    grid = grid.gather(2, col_ids[:, None, :, None].expand(-1, keep_rows, -1, dim))
    cls = (model.cls_token + model.pos_embed[:, :1]).expand(batch, -1, -1)
    tokens = torch.cat([cls, grid.reshape(batch, keep_rows * keep_cols, dim)], dim=1)
    tokens = model.norm(model.blocks(model.norm_pre(model.pos_drop(tokens))))
    return model.forward_head(tokens)
