"""The VideoMAE fine-tuning ViT: tubelet embedding, fixed sin-cos position table, mean pooling, fc_norm, linear head.

Parameter names follow VideoMAE (``patch_embed.proj``, ``blocks.i.attn.{qkv,q_bias,v_bias,proj}``,
``blocks.i.mlp.{fc1,fc2}``, ``fc_norm``, ``head``) so its checkpoints load after the key conversion in
``Video.model``, and the block linears have the shapes of an image ViT's, so image (or any ViT-B) weights can be the
pathway's auxiliary model.

Unlike VideoMAE, attention calls ``self.qkv`` as a module and adds the q/v biases to its output: reading
``self.qkv.weight`` directly (as the reference code did) would silently bypass a ``PathwayLinear`` put there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import Tensor, nn

from pathway.size import TransformerSize


def sincos_position_table(num_tokens: int, dim: int) -> Tensor:
    """``(1, num_tokens, dim)`` table: sin on even, cos on odd channels, frequency ``10000^(-2⌊j/2⌋/dim)``.

    The same fixed table VideoMAE pre-trains with (over the flattened t, h, w token order), so pre-trained weights
    see the position codes they were trained with.
    """
    position = torch.arange(num_tokens, dtype=torch.float64).unsqueeze(1)
    channel = torch.arange(dim, dtype=torch.float64)
    angle = position / torch.pow(10000.0, 2 * torch.div(channel, 2, rounding_mode="floor") / dim)
    table = torch.where(channel.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float().unsqueeze(0)


class TubeletEmbed(nn.Module):
    """Non-overlapping ``tubelet_size × patch_size²`` tubes of a ``(B, C, T, H, W)`` clip -> ``(B, N, D)`` tokens."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, num_frames: int = 16, tubelet_size: int = 2,
                 in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        if img_size % patch_size or num_frames % tubelet_size:
            raise ValueError(
                f"img_size {img_size} must be a multiple of patch_size {patch_size} and num_frames {num_frames} "
                f"a multiple of tubelet_size {tubelet_size}"
            )
        self.input_size = (in_chans, num_frames, img_size, img_size)
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5 or tuple(x.shape[1:]) != self.input_size:
            raise ValueError(f"expected clips of shape (B, {', '.join(map(str, self.input_size))}), got {tuple(x.shape)}")
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a bias-less ``qkv`` linear plus separate q and v biases (k bias is zero)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x)
        if self.q_bias is not None:
            qkv = qkv + torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias)).to(qkv.dtype)
        q, k, v = qkv.reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(batch, tokens, dim)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VideoViT(nn.Module):
    """ViT over space-time tubelets with a mean-pooled classification head (VideoMAE fine-tuning architecture).

    Clips are RGB and there is no cls token.  What ``Video.model.VideoClassifier`` decides (clip and tubelet size,
    transformer size, dropout) has no default here, so the recipe's values live in one place.
    """

    def __init__(
        self,
        num_classes: int,
        img_size: int,
        patch_size: int,
        num_frames: int,
        tubelet_size: int,
        size: TransformerSize,
        drop_rate: float,
        attn_drop_rate: float,
        head_drop_rate: float,
        head_init_scale: float = 0.001,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = embed_dim = size.embed_dim
        self.num_prefix_tokens = 0
        self.patch_embed = TubeletEmbed(img_size, patch_size, num_frames, tubelet_size, embed_dim=embed_dim)
        # Fixed, so not a parameter and not in the state dict: it is recomputed for any clip/grid size.
        self.register_buffer("pos_embed", sincos_position_table(self.patch_embed.num_patches, embed_dim),
                             persistent=False)
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList(
            Block(embed_dim, size.num_heads, size.mlp_ratio, size.qkv_bias, drop_rate, attn_drop_rate, rate)
            for rate in size.drop_path_rates()
        )
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(head_drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style layer groups: the tubelet embedding is layer 0, block ``i`` is layer ``i + 1``; fc_norm and
        the head fall through to the last layer id (full lr under layer decay)."""
        return dict(stem=r"^patch_embed", blocks=r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None)])

    def no_weight_decay(self) -> set[str]:
        """No named exemptions: there is no learned position embedding or cls token, and every 1-D parameter
        (biases, q/v biases, norms) is already exempt by the optimizer's 1-D rule."""
        return set()

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = self.pos_drop(x + self.pos_embed.to(x.dtype))
        for block in self.blocks:
            x = block(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.fc_norm(x.mean(dim=1)))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: VideoViT) -> dict[str, Tensor]:
    """VideoMAE pre-training / fine-tuning (or timm image ViT) keys -> ``model``'s (:class:`VideoViT`) keys.

    * pre-training checkpoints: keep the ``encoder.`` weights (prefix removed), drop the decoder,
      ``encoder_to_decoder`` and ``mask_token``;
    * the encoder's final ``norm`` becomes ``fc_norm`` (there is no token norm before mean pooling here);
    * a fixed ``pos_embed`` is dropped (it is recomputed);
    * a fused ``qkv.bias`` (timm) is split into ``q_bias``/``v_bias``; the k bias is dropped, which is exact,
      since it shifts every attention logit of a query by the same amount.
    """
    if any(k.startswith("encoder.") for k in state_dict):
        state_dict = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(("decoder", "encoder_to_decoder", "mask_token")) or key == "pos_embed":
            continue
        if key.endswith("attn.qkv.bias"):
            dim = value.shape[0] // 3
            if dim != model.embed_dim:
                raise ValueError(
                    f"{key}: fused qkv bias of size {value.shape[0]} does not fit embed_dim {model.embed_dim}"
                )
            prefix = key[: -len("qkv.bias")]
            out[prefix + "q_bias"], out[prefix + "v_bias"] = value[:dim], value[2 * dim:]
            continue
        out[key] = value
    if "fc_norm.weight" not in out and "norm.weight" in out:
        out["fc_norm.weight"], out["fc_norm.bias"] = out.pop("norm.weight"), out.pop("norm.bias")
    return out
