"""``AudioClassifier``: the audio ViT on the shared pathway classifier base, loading AudioMAE checkpoints.

Auxiliary models of any modality plug into the blocks (the pathway only reads ``blocks.<i>.<layer>.weight``), so
an image MAE, VideoMAE or Point-MAE ViT-B works as aux for the audio target unchanged.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from torch import Tensor, nn

from Audio.backbone import build_audio_vit, checkpoint_filter_fn, forward_with_patch_masking
from pathway.classifier import PathwayClassifier


class AudioClassifier(PathwayClassifier):
    """Audio classification (AudioSet: ``multilabel=True``, BCE + mAP; ESC-50/folders: CE + top-1).

    Args:
        model_name: timm ViT architecture the size comes from (``vit_base_patch16_224`` = ViT-B/16).
        embed_dim / depth / num_heads: override the architecture's size (tiny test and demo models).
        target_length / num_mel_bins: the fbank grid (time x mel); the CLI links them from ``data:``.
        drop_path_rate: stochastic depth.
        pos_embed: ``learn`` (learnable) or ``sincos`` (fixed 2-D sin-cos, frozen: AudioMAE fine-tuning's, so the
            paper recipes use it; a target checkpoint's table replaces the computed one).
        mask_t_prob / mask_f_prob: AudioMAE fine-tuning masking: the fraction of time rows / mel columns of patch
            tokens dropped per training sample (``Audio.backbone.forward_with_patch_masking``; 0.2 / 0.2 in its
            AudioSet recipes, 0 = off).  Evaluation always sees every token.
        **kwargs: ``PathwayClassifier`` / ``PathwayModule`` arguments (num_classes, target_ckpt, aux_ckpts, ...).
    """

    def __init__(
        self,
        model_name: str = "vit_base_patch16_224",
        embed_dim: Optional[int] = None,
        depth: Optional[int] = None,
        num_heads: Optional[int] = None,
        target_length: int = 1024,
        num_mel_bins: int = 128,
        drop_path_rate: float = 0.1,
        pos_embed: Literal["learn", "sincos"] = "learn",
        mask_t_prob: float = 0.0,
        mask_f_prob: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)

    def build_backbone(self) -> nn.Module:
        hp = self.hparams
        return build_audio_vit(
            hp.num_classes, model_name=hp.model_name, target_length=hp.target_length, num_mel_bins=hp.num_mel_bins,
            embed_dim=hp.embed_dim, depth=hp.depth, num_heads=hp.num_heads, drop_path_rate=hp.drop_path_rate,
            pos_embed=hp.pos_embed,
        )

    def forward(self, x: Tensor) -> Tensor:
        hp = self.hparams
        if self.training and (hp.mask_t_prob > 0 or hp.mask_f_prob > 0):
            return forward_with_patch_masking(self.backbone, x, hp.mask_t_prob, hp.mask_f_prob)
        return self.backbone(x)

    def example_input_shape(self) -> tuple[int, ...]:
        return (1, self.hparams.target_length, self.hparams.num_mel_bins)

    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        data_multilabel = getattr(datamodule, "multilabel", None)
        if data_multilabel is not None and bool(data_multilabel) != bool(self.hparams.multilabel):
            raise ValueError(
                f"model.multilabel={self.hparams.multilabel} but the data format '{datamodule.format}' is "
                f"{'multi' if data_multilabel else 'single'}-label: set model.multilabel: {bool(data_multilabel)}"
            )
