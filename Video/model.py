"""Video target: the VideoMAE ViT (``Video.backbone.VideoViT``) on the shared pathway classifier.

VideoMAE checkpoints (pre-training or fine-tuning, nested under ``model``/``module``) load as the target through
``Video.backbone.checkpoint_filter_fn``; as auxiliary models any format ``pathway.checkpoint.aux_state_dict``
reads works (only the block linears are used, and they have the same names and shapes in every ViT).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from pathway.classifier import PathwayClassifier
from pathway.size import TransformerSize
from Video.backbone import VideoViT, checkpoint_filter_fn

__all__ = ["VideoClassifier", "VideoViT"]


class VideoClassifier(PathwayClassifier):
    """Video classification with the pathway; sizes default to ViT-B/16 on 16×224² clips.

    Args:
        img_size / num_frames: clip size the model is built for (must match the data's).
        patch_size / tubelet_size: spatial and temporal size of a token's tube (16 and 2 in VideoMAE).
        embed_dim / depth / num_heads / mlp_ratio: transformer size (768 / 12 / 12 / 4 for ViT-B).
        drop_path_rate: stochastic depth (0.1 in the VideoMAE ViT-B recipe).
        head_drop_rate: dropout before the head.
    """

    def __init__(
        self,
        img_size: int = 224,
        num_frames: int = 16,
        patch_size: int = 16,
        tubelet_size: int = 2,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        head_drop_rate: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)

    def build_backbone(self) -> nn.Module:
        hp = self.hparams
        return VideoViT(
            num_classes=hp.num_classes, img_size=hp.img_size, patch_size=hp.patch_size, num_frames=hp.num_frames,
            tubelet_size=hp.tubelet_size, size=TransformerSize.from_hparams(hp), drop_rate=hp.drop_rate,
            attn_drop_rate=hp.attn_drop_rate, head_drop_rate=hp.head_drop_rate,
        )

    def example_input_shape(self) -> tuple[int, ...]:
        hp = self.hparams
        return (3, hp.num_frames, hp.img_size, hp.img_size)

    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)
