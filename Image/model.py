"""Image target: a timm ViT with the MAE fine-tuning head (global average pool → fc_norm → linear)."""
from __future__ import annotations

from typing import Any, Optional

import timm
from torch import Tensor, nn

from pathway.classifier import PathwayClassifier


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """MAE pre-training checkpoints carry the decoder and a mask token; the classifier needs neither."""
    return {k: v for k, v in state_dict.items() if not k.startswith(("decoder", "mask_token"))}


class ImageClassifier(PathwayClassifier):
    """Any timm ViT by name; ``model_kwargs`` shrinks it for tiny configs (embed_dim, depth, num_heads ...).

    Args:
        model_name: a timm model name, e.g. ``vit_base_patch16_224``.
        img_size: input resolution (position embeddings of a checkpoint at another size are interpolated).
        drop_path_rate: stochastic depth.
        global_pool: ``avg`` (MAE fine-tuning: mean of patch tokens + fc_norm) or ``token`` (cls token).
    """

    def __init__(
        self,
        model_name: str = "vit_base_patch16_224",
        img_size: int = 224,
        drop_path_rate: float = 0.1,
        global_pool: str = "avg",
        model_kwargs: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)

    def build_backbone(self) -> nn.Module:
        hp = self.hparams
        return timm.create_model(
            hp.model_name, pretrained=False, num_classes=hp.num_classes, img_size=hp.img_size,
            drop_path_rate=hp.drop_path_rate, global_pool=hp.global_pool, **(hp.model_kwargs or {}),
        )

    def example_input_shape(self) -> tuple[int, ...]:
        hp = self.hparams
        return (int((hp.model_kwargs or {}).get("in_chans", 3)), hp.img_size, hp.img_size)

    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)
