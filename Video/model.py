"""Video target: the VideoMAE ViT (``Video.backbone.VideoViT``) on the shared pathway classifier.

VideoMAE checkpoints (pre-training or fine-tuning, nested under ``model``/``module``) load as the target through
``Video.backbone.checkpoint_filter_fn``; as auxiliary models any format ``pathway.checkpoint.aux_state_dict``
reads works (only the block linears are used, and they have the same names and shapes in every ViT).

A Kinetics-710 checkpoint (VideoMAE V2's ``vit_b_k710_dl_from_giant.pth``) keeps its trained head when
``head_label_map`` names VideoMAE V2's label map (``label_710to400.json``: the K710 row of each K400 class), as the
reference's fine-tuning does; without a map a head of another class count starts fresh.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal, Optional

from torch import Tensor, nn

from pathway.classifier import PathwayClassifier
from pathway.size import TransformerSize
from Video.backbone import VideoViT, checkpoint_filter_fn

__all__ = ["VideoClassifier", "VideoViT", "read_label_map"]

log = logging.getLogger(__name__)


def read_label_map(path: str, num_classes: int) -> list[int]:
    """The JSON list of ``num_classes`` row indices (one per target class) in a checkpoint's head."""
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"model.head_label_map {path}: not a readable JSON file ({err})") from err
    if not isinstance(rows, list) or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in rows):
        raise ValueError(f"model.head_label_map {path}: expected a JSON list of non-negative integers (head rows)")
    if len(rows) != num_classes:
        raise ValueError(f"model.head_label_map {path}: {len(rows)} entries, but the model has {num_classes} classes")
    return rows


class VideoClassifier(PathwayClassifier):
    """Video classification with the pathway; sizes default to ViT-B/16 on 16×224² clips.

    Args:
        img_size / num_frames: clip size the model is built for (must match the data's).
        patch_size / tubelet_size: spatial and temporal size of a token's tube (16 and 2 in VideoMAE).
        embed_dim / depth / num_heads / mlp_ratio: transformer size (768 / 12 / 12 / 4 for ViT-B).
        drop_path_rate: stochastic depth (0.1 in the VideoMAE ViT-B recipe).
        head_drop_rate: dropout before the head.
        head_label_map: JSON list giving, for each class, its row in the target checkpoint's head; a checkpoint
            head with another class count (K710) is then loaded through it (VideoMAE V2 ``label_710to400.json``)
            instead of being re-initialised.
    Remaining arguments go to ``PathwayClassifier``/``PathwayModule`` (video default: VideoMAE's lr schedule).
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
        head_label_map: Optional[str] = None,
        lr_schedule: Literal["mae", "videomae", "point_mae"] = "videomae",
        **kwargs: Any,
    ) -> None:
        super().__init__(lr_schedule=lr_schedule, **kwargs)

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

    def checkpoint_filter_fn(self, state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        """VideoMAE keys to ours, and the head's rows picked through ``head_label_map`` when one is given."""
        state = checkpoint_filter_fn(state_dict, model)
        path = self.hparams.head_label_map
        if not path:
            return state
        num_classes = self.hparams.num_classes
        if "head.weight" not in state:
            raise ValueError(f"model.head_label_map {path} is set, but the target checkpoint "
                             f"{self.hparams.target_ckpt} has no 'head.weight' to map")
        if state["head.weight"].shape[0] == num_classes:
            log.info("target head already has %d classes: model.head_label_map %s not applied", num_classes, path)
            return state
        rows = read_label_map(path, num_classes)
        head_rows = state["head.weight"].shape[0]
        if max(rows) >= head_rows:
            raise ValueError(f"model.head_label_map {path}: row {max(rows)} does not exist in the target checkpoint's "
                             f"head of {head_rows} classes")
        for key in ("head.weight", "head.bias"):
            if key in state:
                state[key] = state[key][rows]
        log.info("target head: %d of its %d classes selected by %s", num_classes, head_rows, path)
        return state
