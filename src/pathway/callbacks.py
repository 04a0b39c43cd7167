"""Lightning callbacks: write a merged (plain-backbone) checkpoint, watch the λ values, write predictions, and
summarise a fit.

Under DDP every hook runs on every rank: folders are resolved in ``setup`` (``trainer.log_dir`` is a collective)
and only the writing is left to rank 0, so no rank ever waits in a collective the others never reach.
"""
from __future__ import annotations

import csv
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
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
    model keeps training/testing unmerged.  The file loads ``strict=True`` into the plain architecture.  Every
    checkpoint also records the data's class names (``label_names``, from the datamodule's ``classes``), so that
    ``python -m pathway export`` can name the classes where the data is no longer at hand.
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

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        classes = getattr(getattr(trainer, "datamodule", None), "classes", None)
        if classes and len(classes) == getattr(pl_module.hparams, "num_classes", None):
            checkpoint["label_names"] = [str(c) for c in classes]


class RunSummary(L.Callback):
    """At the end of a fit, rank 0 prints what a user looks for first and writes it to ``run_summary.json``: the
    best value of the monitored metric, its epoch, the best checkpoint, the merged export, wall time and training
    samples per second (all ranks, over the fit's wall time, validation included)."""

    def __init__(self, filename: str = "run_summary.json") -> None:
        self.filename = filename
        self.last_summary: Optional[dict[str, Any]] = None
        self._dir: Optional[Path] = None
        self._start = 0.0
        self._samples = 0
        self._scores: list[tuple[int, float]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._dir = _out_dir(trainer, None)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._samples, self._scores = time.monotonic(), 0, []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        first = batch[0] if isinstance(batch, (list, tuple)) else batch
        if isinstance(first, Tensor):
            self._samples += first.shape[0] * trainer.world_size

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        monitor = getattr(checkpoint, "monitor", None)
        value = trainer.callback_metrics.get(monitor) if monitor else None
        if not trainer.sanity_checking and value is not None:
            self._scores.append((trainer.current_epoch, float(value)))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        seconds = time.monotonic() - self._start
        checkpoint = trainer.checkpoint_callback
        merged = next((c.last_path for c in trainer.callbacks if isinstance(c, MergedCheckpoint)), None)
        summary: dict[str, Any] = {"monitor": None, "best": None, "best_epoch": None, "best_checkpoint": None}
        if isinstance(checkpoint, ModelCheckpoint):
            score = checkpoint.best_model_score
            best = float(score) if score is not None else None
            epoch = next((e for e, v in self._scores if v == best), _epoch_in_name(checkpoint.best_model_path))
            summary.update(monitor=checkpoint.monitor, best=best, best_epoch=epoch,
                           best_checkpoint=checkpoint.best_model_path or None,
                           last_checkpoint=checkpoint.last_model_path or None)
        summary.update(merged_export=str(merged) if merged else None, epochs=trainer.current_epoch,
                       steps=trainer.global_step, wall_seconds=round(seconds, 1), train_samples=self._samples,
                       samples_per_second=round(self._samples / seconds, 2) if seconds > 0 else None)
        self.last_summary = summary
        lines = ["", "Run summary"] + [f"  {key:18s} {f'{value:.6g}' if isinstance(value, float) else value}"
                                       for key, value in summary.items()]
        print("\n".join(lines), flush=True)
        if self._dir is not None:
            atomic_write(self._dir / self.filename, lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))


def _epoch_in_name(path: str) -> Optional[int]:
    """The epoch a checkpoint file name carries (``epoch=3``), for a best checkpoint of an earlier, resumed run."""
    match = re.search(r"epoch=(\d+)", Path(path).name) if path else None
    return int(match.group(1)) if match else None


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
    """``predict`` writes ``predictions.csv`` to the run folder: one row per sample (per point for part
    segmentation), from every DDP rank.

    One schema for every model: ``sample`` (its file where the dataset can name it, else its index), ``label`` (the
    true label when the batch carries one; for multi-label models every true class, space-separated), then
    ``class_1, score_1, ..., class_k, score_k``, the top-``top_k`` classes by score (softmax, or sigmoid for
    multi-label models: ``top_k`` at least the class count writes every class's score).  Classes are named by the
    datamodule's (or dataset's) ``classes`` where the data has names, by index otherwise.  Views of one sample
    (video clips × crops, point-cloud votes: the batch's ``sample_ids``) are averaged into one row, as in
    evaluation.  Per-point predictions (part segmentation: ``predict_step`` returns ``{"prediction", "point",
    "label"}``) get one row per point, with a ``point`` column after ``sample``: the point's row in the sample's
    file, so predictions map back to the points they are for; ``class_1`` is the predicted part.
    """

    def __init__(self, filename: str = "predictions.csv", top_k: int = 5) -> None:
        super().__init__(write_interval="batch")
        self.filename = filename
        self.top_k = top_k
        self.last_path: Optional[Path] = None
        self._dir: Optional[Path] = None
        self._rows: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        self._per_point = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "predict":
            self._dir = _out_dir(trainer, None)
            self._rows = []

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Optional[Sequence[int]], batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        if batch is None:
            return
        fields = list(batch) if isinstance(batch, (list, tuple)) else [batch]
        if isinstance(prediction, dict):
            self._per_point = True
            values, points, target = prediction["prediction"], prediction["point"], prediction.get("label")
            views = None
        elif isinstance(prediction, Tensor):
            values, points = prediction, None
            target = fields[1] if len(fields) > 1 and isinstance(fields[1], Tensor) else None
            views = fields[2] if len(fields) > 2 and isinstance(fields[2], Tensor) and fields[2].ndim == 1 else None
        else:
            return
        n = values.shape[0]
        if batch_indices is not None and len(batch_indices) == n:
            indices = torch.as_tensor(list(batch_indices), dtype=torch.long)
        else:  # unreadable samples were dropped from this batch: the files of its rows are unknown
            indices = torch.full((n,), -1, dtype=torch.long)
        samples = torch.stack([views.cpu() if views is not None else indices, indices], 1)
        if target is None or target.shape[0] != n:
            target = torch.full((n, 1), float("nan"))
        points = torch.zeros(n, 0, dtype=torch.long) if points is None else points.detach().long().reshape(n, -1)
        device = pl_module.device
        self._rows.append((samples.to(device), values.detach().float().flatten(1),
                           target.detach().float().reshape(n, -1).to(device), points.to(device)))

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        samples, predictions, targets, points = self._gather(pl_module)
        self._rows = []
        if trainer.is_global_zero and self._dir is not None and samples.numel():
            dataset = _predict_dataset(trainer)
            classes = getattr(trainer.datamodule, "classes", None) or getattr(dataset, "classes", None)
            self.last_path = self._write(self._dir / self.filename, samples, predictions, targets, points,
                                         bool(getattr(pl_module.hparams, "multilabel", False)),
                                         getattr(dataset, "describe", None), classes)
            log.info("wrote the predictions of %d samples to %s", samples[:, 0].unique().numel(), self.last_path)

    def _gather(self, pl_module: L.LightningModule) -> tuple[Tensor, ...]:
        """Every rank's rows (padded to one length and width for ``all_gather``), padding removed."""
        rows, device = self._rows, pl_module.device
        widths = [2] + [rows[0][i].shape[1] if rows else 0 for i in range(1, 4)]
        shape = torch.tensor([sum(r[0].shape[0] for r in rows), *widths[1:]], device=device)
        most, *widths[1:] = (int(v) for v in pl_module.all_gather(shape).reshape(-1, 4).max(0).values)
        count = int(shape[0])
        fills = (-2, 0, 0, 0)
        tensors = []
        for i, fill in enumerate(fills):
            dtype = torch.long if i in (0, 3) else torch.float
            padded = torch.full((most, widths[i]), fill, dtype=dtype, device=device)
            if rows:
                stacked = torch.cat([r[i] for r in rows])
                padded[:count, :stacked.shape[1]] = stacked
            tensors.append(padded)
        if pl_module.trainer.world_size > 1:
            tensors = [pl_module.all_gather(t).flatten(0, 1) for t in tensors]
        keep = tensors[0][:, 0] != -2
        return tuple(t[keep].cpu() for t in tensors)

    def _write(self, path: Path, samples: Tensor, predictions: Tensor, targets: Tensor, points: Tensor,
               multilabel: bool, describe: Optional[Callable[[int], str]], classes: Optional[Sequence[str]]) -> Path:
        width = predictions.shape[1]
        name = (lambda c: str(classes[c])) if classes is not None and len(classes) == width else str
        keys, inverse = torch.unique(samples[:, 0], return_inverse=True)
        first = torch.full((keys.numel(),), samples.shape[0], dtype=torch.long).scatter_reduce_(
            0, inverse, torch.arange(samples.shape[0]), reduce="amin")
        views = torch.zeros(keys.numel()).index_add_(0, inverse, torch.ones(samples.shape[0]))
        mean = torch.zeros(keys.numel(), width).index_add_(0, inverse, predictions) / views[:, None]
        k = min(self.top_k, width)
        if self._per_point:
            lines = [["sample", "point", "label", "class_1"]]
        else:
            lines = [["sample", "label"] + [f"{kind}_{i + 1}" for i in range(k) for kind in ("class", "score")]]
        for row in range(keys.numel()):
            index = int(samples[first[row], 1])
            item = (describe(index) if describe is not None else str(index)) if index >= 0 else ""
            target = targets[first[row]]
            known = not target.isnan().any()
            if self._per_point:
                parts = predictions[first[row]].long().tolist()
                truth = target.long().tolist() if known else [""] * len(parts)
                lines += [[item, p, t, v] for p, t, v in zip(points[first[row]].tolist(), truth, parts)]
                continue
            if not known:
                label = ""
            elif multilabel:
                label = " ".join(name(c) for c in torch.nonzero(target > 0.5).flatten().tolist())
            else:
                label = name(int(target.argmax() if target.numel() > 1 else target[0]))
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
