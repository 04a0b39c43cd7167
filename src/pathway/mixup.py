"""Batch mixup / cutmix for inputs of any rank and for single- or multi-label targets.

timm's ``Mixup`` one-hot encodes integer targets and cuts dims 2-3, which breaks multi-hot AudioSet targets and
(B, C, T, H, W) video clips.  Here the cut is on the last two dims, so a clip is cut identically in every frame,
and targets may be class indices or (soft) multi-hot vectors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def soft_targets(target: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """Class indices or soft/multi-hot targets -> float targets, with label smoothing for the index case."""
    if target.is_floating_point():
        return target
    off = smoothing / num_classes
    out = torch.full((target.shape[0], num_classes), off, device=target.device)
    return out.scatter_(1, target.long().view(-1, 1), 1.0 - smoothing + off)


@dataclass(frozen=True)
class BatchMixup:
    """Mixes a batch with its reverse, choosing mixup or cutmix per batch (the MAE fine-tuning convention).

    Args:
        mixup_alpha / cutmix_alpha: Beta(α, α) of the mixing weight; 0 turns that kind off.
        prob: chance that a batch is mixed at all; switch_prob: chance of cutmix when both are on.
        label_smoothing: applied to class-index targets before they are mixed.
    """

    num_classes: int
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        if self.mixup_alpha <= 0 and self.cutmix_alpha <= 0:
            raise ValueError("BatchMixup needs mixup_alpha > 0 or cutmix_alpha > 0")

    def _cut_box(self, lam: float, height: int, width: int) -> tuple[int, int, int, int, float]:
        ratio = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = np.random.randint(height), np.random.randint(width)
        y0, y1 = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
        x0, x1 = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
        area_lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
        return int(y0), int(y1), int(x0), int(x1), area_lam

    @torch.no_grad()
    def __call__(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        target = soft_targets(target, self.num_classes, self.label_smoothing)
        if np.random.rand() >= self.prob:
            return x, target
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or np.random.rand() < self.switch_prob)
        if use_cutmix:
            lam = float(np.random.beta(self.cutmix_alpha, self.cutmix_alpha))
            y0, y1, x0, x1, lam = self._cut_box(lam, x.shape[-2], x.shape[-1])
            x = x.clone()
            x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
        else:
            lam = float(np.random.beta(self.mixup_alpha, self.mixup_alpha))
            x = x * lam + x.flip(0) * (1.0 - lam)
        return x, target * lam + target.flip(0) * (1.0 - lam)
