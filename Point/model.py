"""Point-cloud LightningModules on the shared pathway base: classification and part segmentation.

Both build a ``Point.backbone`` model whose ``blocks`` carry the pathway, so ``aux_ckpts`` really reach the
computation in either task (the reference code built the pathway for point classification but never used it).
Point-MAE checkpoints (``base_model``/``MAE_encoder`` prefixes, ``blocks.blocks``, ``cls_head_finetune``) load
as the target through ``Point.backbone.checkpoint_filter_fn`` (as auxiliary models through
``pathway.checkpoint.aux_state_dict``, like every format).
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathway.classifier import PathwayClassifier, check_finite_outputs
from pathway.module import PathwayModule
from pathway.size import TransformerSize
from Point.backbone import PointPartSegmenter, PointTransformer, checkpoint_filter_fn
from Point.metrics import PartIoU, restrict_to_category
from Point.parts import SHAPENETPART_CATEGORIES


class PointModule(PathwayModule):
    """The Point-MAE-style backbone's hyper-parameters, shared by the point classifier and segmenter.

    Args:
        num_groups / group_size: FPS centres and kNN group size (64/32 for ModelNet40, 128/32 ScanObjectNN).
        embed_dim / depth / num_heads / mlp_ratio: transformer size (768/12/6/4: ViT-B width and depth with the 6
            heads of M2PT's widened Point-MAE, whose weights 12 heads would load without error and misread).
        qkv_bias: Point-MAE has none; the pathway works either way.
        drop_path_rate: stochastic depth; head_dropout: dropout in the head.
    Remaining arguments go to ``PathwayModule`` (point defaults: no layer decay, Point-MAE's schedule: timm's
    cosine stepped per epoch, 10 warmup epochs from 1e-6).
    """

    def __init__(
        self,
        num_groups: int = 64,
        group_size: int = 32,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_path_rate: float = 0.1,
        head_dropout: float = 0.5,
        layer_decay: float = 1.0,
        warmup_epochs: float = 10.0,
        lr_schedule: Literal["mae", "videomae", "point_mae"] = "point_mae",
        warmup_lr: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__(layer_decay=layer_decay, warmup_epochs=warmup_epochs, lr_schedule=lr_schedule,
                         warmup_lr=warmup_lr, **kwargs)

    def backbone_arguments(self) -> dict[str, Any]:
        """``PointTransformer`` keywords from the flat hyper-parameters (every point backbone takes them)."""
        hp = self.hparams
        return dict(num_groups=hp.num_groups, group_size=hp.group_size, size=TransformerSize.from_hparams(hp),
                    head_dropout=hp.head_dropout)

    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)

    def is_tokenizer_key(self, key: str) -> bool:
        """The mini-PointNet that embeds each group and the centres' position MLP: what a target must fill."""
        return key.startswith(("encoder.", "pos_embed."))


class PointClassifier(PointModule, PathwayClassifier):
    """Point-MAE-style transformer (ViT-B width by default) classifying clouds (B, N, 3).

    Backbone arguments as in ``PointModule``; the rest go to ``PathwayClassifier``/``PathwayModule`` (point
    defaults: no label smoothing, mean class accuracy reported).
    """

    def __init__(self, label_smoothing: float = 0.0, macro_acc: bool = True, **kwargs: Any) -> None:
        super().__init__(label_smoothing=label_smoothing, macro_acc=macro_acc, **kwargs)

    def build_backbone(self) -> nn.Module:
        return PointTransformer(num_classes=self.hparams.num_classes, **self.backbone_arguments())

    def example_input_shape(self) -> tuple[int, ...]:
        """A 1,024-point cloud (ModelNet40/ScanObjectNN size); the model itself takes any N ≥ group_size."""
        return (1024, 3)


class PointSegmenter(PointModule):
    """ShapeNetPart part segmentation; ``num_classes`` is the number of parts (50, linked from the data).

    Batches are ``(points (B, N, 3), category (B,), parts (B, N))``.  Logged: ``<stage>/loss``,
    ``<stage>/cls_miou`` and ``<stage>/ins_miou`` (see ``Point.metrics``).

    Args:
        feature_levels: blocks whose normed outputs feed the head (Point-MAE: 3, 7, 11 of 12).
        propagation_dims / head_dims: widths of the per-point MLPs after propagation and of the classifier.
        part_counts: parts per category in label order; the ShapeNetPart table by default.
    Backbone arguments as in ``PointModule`` (128 groups of 32 points by default).
    """

    def __init__(
        self,
        num_groups: int = 128,
        feature_levels: Sequence[int] = (3, 7, 11),
        propagation_dims: Sequence[int] = (3072, 1024),
        head_dims: Sequence[int] = (512, 256),
        part_counts: Optional[Sequence[int]] = None,
        label_smoothing: float = 0.0,
        num_classes: int = 50,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_groups=num_groups, num_classes=num_classes, **kwargs)
        counts = list(part_counts) if part_counts is not None else [c for _, c in SHAPENETPART_CATEGORIES.values()]
        if sum(counts) != num_classes:
            raise ValueError(f"part_counts {counts} sum to {sum(counts)}, but num_classes (parts) is {num_classes}")
        self.val_iou = PartIoU(counts)
        self.test_iou = PartIoU(counts)

    def build_backbone(self) -> nn.Module:
        hp = self.hparams
        counts = hp.part_counts if hp.part_counts is not None else [c for _, c in SHAPENETPART_CATEGORIES.values()]
        return PointPartSegmenter(
            num_parts=hp.num_classes, num_categories=len(counts), feature_levels=hp.feature_levels,
            propagation_dims=hp.propagation_dims, head_dims=hp.head_dims, **self.backbone_arguments(),
        )

    def is_head_key(self, key: str) -> bool:
        return key.startswith(("seg_head.", "category_embed.", "propagation."))

    def example_inputs(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """2,048-point clouds (the ShapeNetPart size) and their object categories, for export and its checks."""
        points = torch.randn(batch_size, 2048, 3, generator=generator)
        return points, torch.randint(0, self.backbone.num_categories, (batch_size,), generator=generator)

    def forward(self, points: Tensor, category: Tensor) -> Tensor:  # type: ignore[override]
        return self.backbone(points, category)

    def loss(self, logits: Tensor, parts: Tensor, smoothing: float = 0.0) -> Tensor:
        return F.cross_entropy(logits.float().flatten(0, 1), parts.flatten(), label_smoothing=smoothing)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        points, category, parts = batch[:3]
        return self.log_train_loss(self.loss(self(points, category), parts, self.hparams.label_smoothing),
                                   points.shape[0])

    def eval_step(self, batch: Any, stage: str) -> None:
        points, category, parts = batch[:3]
        logits = self(points, category)
        check_finite_outputs(self, logits, stage)
        self.log(f"{stage}/loss", self.loss(logits, parts), sync_dist=True, batch_size=points.shape[0])
        (self.val_iou if stage == "val" else self.test_iou).update(logits, category, parts)

    def _log_iou(self, stage: str) -> None:
        metric = self.val_iou if stage == "val" else self.test_iou
        values = metric.compute()
        metric.reset()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()})

    def on_validation_epoch_end(self) -> None:
        self._log_iou("val")

    def on_test_epoch_end(self) -> None:
        self._log_iou("test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Part id per point (B, N), chosen among the parts of each cloud's category, with the points' file rows
        and true parts (``pathway.callbacks.PredictionWriter`` writes one row per point)."""
        points, category, parts, rows = batch
        logits = self(points, category)
        check_finite_outputs(self, logits, "predict")
        prediction = restrict_to_category(logits, category, self.val_iou.part_mask)
        return {"prediction": prediction, "point": rows, "label": parts}
