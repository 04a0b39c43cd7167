"""Lightning callbacks: write a merged (plain-backbone) checkpoint, watch the λ values, write predictions.

Under DDP every hook runs on every rank: folders are resolved in ``setup`` (``trainer.log_dir`` is a collective)
and only the writing is left to rank 0, so no rank ever waits in a collective the others never reach.
"""
from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from pathway.atomic import atomic_write
from pathway.merge import plain_state_dict
from pathway.surgery import lambda_table

log = logging.getLogger(__name__)


def _out_dir(trainer: L.Trainer, dirpath: Optional[str]) -> Path:
    """The folder a callback writes to.  ``trainer.log_dir`` is a collective under DDP (it broadcasts rank 0's
    folder), so this must run on every rank, in a hook every rank calls (``setup``), never in rank-zero-only code."""
    return Path(dirpath or trainer.log_dir or trainer.default_root_dir)


class MergedCheckpoint(L.Callback):
    """On train end, save the backbone with every pathway folded in, as plain-architecture safetensors.

    Like Lightning's ``ModelPruning`` with ``make_pruning_permanent`` for masks, but on a folded copy: the live
    model keeps training/testing unmerged.  The file loads ``strict=True`` into the plain architecture.
    """

    def __init__(self, dirpath: Optional[str] = None, filename: str = "merged.safetensors") -> None:
        self.dirpath = dirpath
        self.filename = filename
        self.last_path: Optional[Path] = None
        self._dir: Optional[Path] = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._dir = _out_dir(trainer, self.dirpath)

    def export(self, pl_module: L.LightningModule, folder: Path) -> Path:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in plain_state_dict(pl_module.backbone).items()}
        path = folder / self.filename
        atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
        self.last_path = path
        log.info("wrote merged backbone to %s", path)
        return path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self._dir is not None:
            self.export(pl_module, self._dir)


class LambdaMonitor(L.Callback):
    """Logs every λ (per block, layer type and aux) each epoch and optionally saves a blocks × layers heatmap."""

    def __init__(self, heatmap: bool = True, dirpath: Optional[str] = None) -> None:
        self.heatmap = heatmap
        self.dirpath = dirpath
        self._dir: Optional[Path] = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._dir = _out_dir(trainer, self.dirpath)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        table = lambda_table(pl_module.backbone)
        if not table:
            return
        values = {
            f"lambda/{name}" + (f"/aux{i}" if len(lams) > 1 else ""): lam
            for name, lams in table.items() for i, lam in enumerate(lams)
        }
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
        if self.heatmap and trainer.is_global_zero and self._dir is not None:
            save_lambda_heatmap(table, self._dir / "lambdas.png",
                                title=f"λ after epoch {trainer.current_epoch}")


def lambda_grid(table: dict[str, list[float]]) -> tuple[list[int], list[str], torch.Tensor]:
    """(block ids, layer types, tensor[aux, block, layer]) from a ``lambda_table``."""
    pattern = re.compile(r"^(.*?)(\d+)\.(.+)$")
    parsed = []
    for name, lams in table.items():
        match = pattern.match(name)
        if match is None:
            raise ValueError(f"cannot read a block index from pathway layer name '{name}'")
        parsed.append((int(match.group(2)), match.group(3), lams))
    blocks = sorted({b for b, _, _ in parsed})
    layers = list(dict.fromkeys(layer for _, layer, _ in parsed))
    grid = torch.full((len(parsed[0][2]), len(blocks), len(layers)), float("nan"))
    for block, layer, lams in parsed:
        grid[:, blocks.index(block), layers.index(layer)] = torch.tensor(lams)
    return blocks, layers, grid


def save_lambda_heatmap(table: dict[str, list[float]], path: Path, title: str = "λ") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks, layers, grid = lambda_grid(table)
    num_aux = grid.shape[0]
    fig, axes = plt.subplots(1, num_aux, figsize=(1.2 * len(layers) * num_aux + 1.5, 0.35 * len(blocks) + 1.5),
                             squeeze=False)
    bound = float(grid.nan_to_num(0).abs().max()) or 1.0
    for i, ax in enumerate(axes[0]):
        image = ax.imshow(grid[i].numpy(), cmap="coolwarm", vmin=-bound, vmax=bound, aspect="auto")
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right")
        ax.set_yticks(range(len(blocks)), [str(b) for b in blocks])
        ax.set_ylabel("block")
        ax.set_title(f"{title} (aux {i})" if num_aux > 1 else title)
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


class PredictionWriter(BasePredictionWriter):
    """``predict`` writes ``predictions.csv`` to the run folder: one row per sample, from every DDP rank.

    A row holds the sample (its file where the dataset can name it, else its index), the true label when the batch
    carries one, and the top-``top_k`` classes with their scores, or every class's score for multi-label models.
    Views of one sample (video clips × crops, point-cloud votes: the batch's ``sample_ids``) are averaged into one
    row, as in evaluation.  Predictions that are not per-class scores (part segmentation's part per point) are
    written as space-separated values.
    """

    def __init__(self, filename: str = "predictions.csv", top_k: int = 5) -> None:
        super().__init__(write_interval="batch")
        self.filename = filename
        self.top_k = top_k
        self.last_path: Optional[Path] = None
        self._dir: Optional[Path] = None
        self._rows: list[tuple[Tensor, Tensor, Tensor]] = []
        self._scores = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "predict":
            self._dir = _out_dir(trainer, None)
            self._rows = []

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Optional[Sequence[int]], batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        if batch is None or not isinstance(prediction, Tensor):
            return
        n = prediction.shape[0]
        self._scores = prediction.is_floating_point()
        if batch_indices is not None and len(batch_indices) == n:
            indices = torch.as_tensor(list(batch_indices), dtype=torch.long)
        else:  # unreadable samples were dropped from this batch: the files of its rows are unknown
            indices = torch.full((n,), -1, dtype=torch.long)
        fields = list(batch) if isinstance(batch, (list, tuple)) else [batch]
        views = fields[2] if len(fields) > 2 and isinstance(fields[2], Tensor) and fields[2].ndim == 1 else None
        samples = torch.stack([views.cpu() if views is not None else indices, indices], 1)
        target = fields[1] if len(fields) > 1 and isinstance(fields[1], Tensor) and fields[1].shape[0] == n else None
        target = torch.full((n, 1), float("nan")) if target is None else target.detach().float().reshape(n, -1)
        device = pl_module.device
        self._rows.append((samples.to(device), prediction.detach().float().flatten(1), target.to(device)))

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        samples, predictions, targets = self._gather(pl_module)
        self._rows = []
        if trainer.is_global_zero and self._dir is not None and samples.numel():
            dataset = _predict_dataset(trainer)
            classes = getattr(trainer.datamodule, "classes", None) or getattr(dataset, "classes", None)
            self.last_path = self._write(self._dir / self.filename, samples, predictions, targets,
                                         bool(getattr(pl_module.hparams, "multilabel", False)),
                                         getattr(dataset, "describe", None), classes)
            log.info("wrote the predictions of %d samples to %s", samples[:, 0].unique().numel(), self.last_path)

    def _gather(self, pl_module: L.LightningModule) -> tuple[Tensor, Tensor, Tensor]:
        """Every rank's rows (padded to one length for ``all_gather``), padding removed."""
        rows, device = self._rows, pl_module.device
        widths = (rows[0][1].shape[1], rows[0][2].shape[1]) if rows else (0, 0)
        shape = torch.tensor([sum(r[0].shape[0] for r in rows), *widths], device=device)
        most, width, target_width = (int(v) for v in pl_module.all_gather(shape).reshape(-1, 3).max(0).values)
        samples = torch.full((most, 2), -2, dtype=torch.long, device=device)
        predictions = torch.zeros(most, width, device=device)
        targets = torch.zeros(most, target_width, device=device)
        count = int(shape[0])
        if rows:
            samples[:count] = torch.cat([r[0] for r in rows])
            predictions[:count] = torch.cat([r[1] for r in rows])
            targets[:count] = torch.cat([r[2] for r in rows])
        if pl_module.trainer.world_size > 1:
            samples, predictions, targets = (pl_module.all_gather(t).flatten(0, 1)
                                             for t in (samples, predictions, targets))
        keep = samples[:, 0] != -2
        return samples[keep].cpu(), predictions[keep].cpu(), targets[keep].cpu()

    def _write(self, path: Path, samples: Tensor, predictions: Tensor, targets: Tensor, multilabel: bool,
               describe: Optional[Callable[[int], str]], classes: Optional[Sequence[str]]) -> Path:
        width = predictions.shape[1]
        name = (lambda c: str(classes[c])) if classes is not None and len(classes) == width else str
        keys, inverse = torch.unique(samples[:, 0], return_inverse=True)
        first = torch.full((keys.numel(),), samples.shape[0], dtype=torch.long).scatter_reduce_(
            0, inverse, torch.arange(samples.shape[0]), reduce="amin")
        views = torch.zeros(keys.numel()).index_add_(0, inverse, torch.ones(samples.shape[0]))
        mean = torch.zeros(keys.numel(), width).index_add_(0, inverse, predictions) / views[:, None]
        k = min(self.top_k, width)
        if not self._scores:
            header = ["sample", "label", "prediction"]
        elif multilabel:
            header = ["sample", "labels"] + [f"score_{name(c)}" for c in range(width)]
        else:
            header = ["sample", "label"] + [f"{kind}_{i + 1}" for i in range(k) for kind in ("class", "score")]
        lines = [header]
        for row in range(keys.numel()):
            index = int(samples[first[row], 1])
            item = (describe(index) if describe is not None else str(index)) if index >= 0 else ""
            target = targets[first[row]]
            if target.isnan().any():
                label = ""
            elif multilabel:
                label = " ".join(name(c) for c in torch.nonzero(target > 0.5).flatten().tolist())
            else:
                label = name(int(target[0])) if target.numel() == 1 else " ".join(str(int(v)) for v in target.tolist())
            if not self._scores:
                lines.append([item, label, " ".join(str(int(v)) for v in predictions[first[row]].tolist())])
            elif multilabel:
                lines.append([item, label] + [f"{v:.6f}" for v in mean[row].tolist()])
            else:
                top = mean[row].topk(k)
                lines.append([item, label] + [x for c, v in zip(top.indices.tolist(), top.values.tolist())
                                              for x in (name(c), f"{v:.6f}")])

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as fh:
                csv.writer(fh).writerows(lines)

        return atomic_write(path, write)


def _predict_dataset(trainer: L.Trainer) -> Any:
    loaders = trainer.predict_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    return getattr(loader, "dataset", None)
