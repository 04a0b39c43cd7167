"""Classification on top of ``PathwayModule``: losses, mixup/cutmix, metrics and multi-view evaluation.

Multi-view evaluation (video clips × crops, point-cloud votes) is one mechanism for every modality: a batch may
carry ``sample_ids``; scores of all views of a sample are averaged (after gathering across DDP ranks, so a video
whose views land on different ranks is still scored once) before any metric is computed.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from pathway.mixup import BatchMixup
from pathway.module import PathwayModule


def _metrics(num_classes: int, multilabel: bool, top_k: int, macro_acc: bool) -> torchmetrics.MetricCollection:
    if multilabel:
        return torchmetrics.MetricCollection(
            {"mAP": torchmetrics.classification.MultilabelAveragePrecision(num_labels=num_classes, average="macro")}
        )
    metrics: dict[str, torchmetrics.Metric] = {
        "acc1": torchmetrics.classification.MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro")
    }
    if top_k > 1 and num_classes > top_k:
        metrics[f"acc{top_k}"] = torchmetrics.classification.MulticlassAccuracy(
            num_classes=num_classes, top_k=top_k, average="micro"
        )
    if macro_acc:
        metrics["macc"] = torchmetrics.classification.MulticlassAccuracy(num_classes=num_classes, average="macro")
    return torchmetrics.MetricCollection(metrics)


def check_finite_outputs(module: PathwayModule, outputs: Tensor, stage: str) -> None:
    """Refuse to evaluate or predict on non-finite outputs: metrics of NaN logits are NaN or meaningless and
    predictions of them arbitrary, yet the run would exit 0.  Names the checkpoint and any non-finite weights."""
    if not outputs.is_floating_point() or bool(torch.isfinite(outputs).all()):
        return
    trainer = module._trainer
    source = getattr(trainer, "ckpt_path", None) or module.hparams.get("target_ckpt")
    weights = [k for k, v in module.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    raise FloatingPointError(
        f"{stage}: {int((~torch.isfinite(outputs)).sum())} of {outputs.numel()} model outputs are non-finite"
        + (f" (weights from {source})" if source else "")
        + (f"; non-finite weights: {weights[:5]}{' ...' if len(weights) > 5 else ''}" if weights else
           "; the weights are finite, so the inputs or the computation overflowed")
    )


class PathwayClassifier(PathwayModule):
    """Single-label (CE) or multi-label (BCE) classification with the pathway.

    Args:
        label_smoothing: for CE on hard targets and inside mixup targets.
        mixup / cutmix: Beta alphas; either > 0 turns batch mixing on in training.
        multilabel: BCE on multi-hot targets and macro mAP (AudioSet).
        top_k: the second accuracy reported (top-5 by default).
        macro_acc: also report mean class accuracy (point clouds).
    """

    def __init__(
        self,
        label_smoothing: float = 0.1,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        multilabel: bool = False,
        top_k: int = 5,
        macro_acc: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        num_classes = self.hparams.num_classes
        self.mixup = (
            BatchMixup(num_classes, mixup, cutmix, mixup_prob, mixup_switch_prob, label_smoothing)
            if mixup > 0 or cutmix > 0 else None
        )
        metrics = _metrics(num_classes, multilabel, top_k, macro_acc)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self._views: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {"val": [], "test": []}

    def loss(self, logits: Tensor, target: Tensor, smoothing: float = 0.0) -> Tensor:
        if self.hparams.multilabel:
            return F.binary_cross_entropy_with_logits(logits, target.float())
        if target.is_floating_point():
            return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(logits.float(), target, label_smoothing=smoothing)

    def scores(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits.float()) if self.hparams.multilabel else logits.float().softmax(-1)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        return self.log_train_loss(self.loss(self(x), y, self.hparams.label_smoothing), x.shape[0])

    def eval_step(self, batch: Any, stage: str) -> None:
        x, y = batch[0], batch[1]
        logits = self(x)
        check_finite_outputs(self, logits, stage)
        self.log(f"{stage}/loss", self.loss(logits, y), sync_dist=True, batch_size=x.shape[0])
        if len(batch) > 2:
            self._views[stage].append((batch[2].detach(), self.scores(logits).detach(), y.detach()))
            return
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(self.scores(logits), self._metric_target(y))
        self.log_dict(metrics, batch_size=x.shape[0], prog_bar=True)

    def _metric_target(self, y: Tensor) -> Tensor:
        if self.hparams.multilabel:
            return (y > 0.5).long()
        return y.argmax(-1) if y.is_floating_point() else y

    def _gather_views(self, stage: str) -> Optional[tuple[Tensor, Tensor, Tensor]]:
        """All views of this epoch from every rank, padded to a common length for ``all_gather``."""
        views = self._views[stage]
        self._views[stage] = []
        count = torch.tensor(sum(v[0].numel() for v in views), device=self.device)
        counts = self.all_gather(count).reshape(-1)
        if int(counts.sum()) == 0:
            return None
        width = self.hparams.num_classes
        ids = torch.cat([v[0] for v in views]) if views else torch.zeros(0, dtype=torch.long, device=self.device)
        scores = torch.cat([v[1] for v in views]) if views else torch.zeros(0, width, device=self.device)
        targets = torch.cat([self._metric_target(v[2]) for v in views]) if views else torch.zeros(
            (0, width) if self.hparams.multilabel else (0,), dtype=torch.long, device=self.device)
        pad = int(counts.max()) - ids.shape[0]
        ids = F.pad(ids, (0, pad), value=-1)
        scores = F.pad(scores, (0, 0, 0, pad))
        targets = F.pad(targets, (0, 0, 0, pad) if targets.ndim == 2 else (0, pad))
        if self.trainer.world_size > 1:
            ids, scores, targets = (self.all_gather(t).flatten(0, 1) for t in (ids, scores, targets))
        keep = ids >= 0
        return ids[keep], scores[keep], targets[keep]

    def _aggregate_views(self, stage: str) -> None:
        gathered = self._gather_views(stage)
        if gathered is None:
            return
        ids, scores, targets = gathered
        unique, inverse = torch.unique(ids, return_inverse=True)
        summed = torch.zeros(unique.numel(), scores.shape[1], device=scores.device).index_add_(0, inverse, scores)
        views = torch.zeros(unique.numel(), device=scores.device).index_add_(0, inverse, torch.ones_like(ids, dtype=torch.float))
        per_sample_target = torch.zeros((unique.numel(),) + targets.shape[1:], dtype=targets.dtype, device=targets.device)
        per_sample_target[inverse] = targets
        metrics = (self.val_metrics if stage == "val" else self.test_metrics).to(scores.device)
        metrics.reset()
        values = {k: v for k, v in metrics(summed / views.unsqueeze(1), per_sample_target).items()}
        metrics.reset()
        self.log_dict(values, rank_zero_only=True, prog_bar=True)
        self.log(f"{stage}/num_samples", float(unique.numel()), rank_zero_only=True)

    def on_validation_epoch_end(self) -> None:
        self._aggregate_views("val")

    def on_test_epoch_end(self) -> None:
        self._aggregate_views("test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        logits = self(x)
        check_finite_outputs(self, logits, "predict")
        return self.scores(logits)
