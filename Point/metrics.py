"""Part-segmentation IoU on ShapeNetPart: instance mIoU (mean over shapes) and class mIoU (mean over categories
of the mean over their shapes).

A shape's IoU is the mean over the parts *of its category* only; a part absent from both the prediction and
the ground truth counts IoU 1 (the benchmark convention).  Predictions are restricted to the category's parts
before the argmax, as in the benchmark's evaluation.  Per-category sums and counts are the metric state, so
DDP ranks are combined by summation before ``compute``.
"""
from __future__ import annotations

import torch
import torchmetrics
from torch import Tensor

from Point.parts import category_part_mask


def restrict_to_category(logits: Tensor, category: Tensor, part_mask: Tensor) -> Tensor:
    """Part predictions (B, N) from logits (B, N, P), considering only the parts of each shape's category."""
    allowed = part_mask.to(logits.device)[category].unsqueeze(1)
    return logits.masked_fill(~allowed, float("-inf")).argmax(dim=-1)


def shape_ious(pred: Tensor, target: Tensor, category: Tensor, part_mask: Tensor) -> Tensor:
    """Per-shape mean IoU (B,) over the parts of each shape's category."""
    num_parts = part_mask.shape[1]
    pred_hot = torch.nn.functional.one_hot(pred, num_parts).bool()
    target_hot = torch.nn.functional.one_hot(target, num_parts).bool()
    inter = (pred_hot & target_hot).sum(dim=1).float()
    union = (pred_hot | target_hot).sum(dim=1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    mask = part_mask.to(pred.device)[category].float()
    return (iou * mask).sum(dim=1) / mask.sum(dim=1)


class PartIoU(torchmetrics.Metric):
    """Accumulates per-shape IoUs by category; ``compute`` returns ``{'cls_miou', 'ins_miou'}``."""

    full_state_update = False

    def __init__(self, part_counts: list[int]) -> None:
        super().__init__()
        self.register_buffer("part_mask", category_part_mask(part_counts), persistent=False)
        num_categories = len(part_counts)
        self.add_state("iou_sum", torch.zeros(num_categories, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(num_categories, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, category: Tensor, target: Tensor) -> None:
        mask = self.part_mask.to(target.device)
        if target.min() < 0 or target.max() >= mask.shape[1]:
            raise ValueError(
                f"part labels must lie in 0..{mask.shape[1] - 1}, got {int(target.min())}..{int(target.max())}"
            )
        outside = ~mask[category].gather(1, target)
        if outside.any():
            b = int(outside.any(dim=1).nonzero()[0, 0])
            raise ValueError(
                f"shape {b} of the batch (category {int(category[b])}) has part labels "
                f"{sorted(set(target[b][outside[b]].tolist()))} outside its category's parts"
            )
        ious = shape_ious(restrict_to_category(logits, category, mask), target, category, mask)
        self.iou_sum.index_add_(0, category, ious.double())
        self.count.index_add_(0, category, torch.ones_like(ious, dtype=torch.float64))

    def compute(self) -> dict[str, Tensor]:
        seen = self.count > 0
        return {
            "cls_miou": (self.iou_sum[seen] / self.count[seen]).mean().float(),
            "ins_miou": (self.iou_sum.sum() / self.count.sum()).float(),
        }
