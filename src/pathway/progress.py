"""Progress for a log file (a SLURM ``.out``, CI output): whole lines instead of a redrawn bar.

A TQDM bar redrawn into a file leaves ``\\r``-joined updates and cursor-up codes, and warnings land mid-line.
``LineProgressBar`` prints one line every ``every_n_batches`` batches and one per epoch with the epoch's metrics;
``pathway.cli`` picks it whenever stdout is not a terminal.
"""
from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.trainer.states import TrainerFn


def _format(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        if key == "v_num":
            continue
        value = value.item() if hasattr(value, "item") else value
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


class LineProgressBar(ProgressBar):
    """One line every ``every_n_batches`` batches, one at the end of each training epoch with its train and
    validation metrics, one at the end of a validate/test/predict run; rank 0 only (``ProgressBar.setup`` disables
    the others)."""

    def __init__(self, every_n_batches: int = 50) -> None:
        super().__init__()
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches must be >= 1, got {every_n_batches}")
        self.every_n_batches = every_n_batches
        self._enabled = True
        self._started = time.monotonic()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _line(self, text: str) -> None:
        if self._enabled:
            print(text, flush=True)

    def _batch_line(self, stage: str, batch_idx: int, total: float, metrics: str = "", last: bool = True) -> None:
        """A line every ``every_n_batches`` batches, and at the last one when ``last`` (training has its epoch
        line instead)."""
        done = batch_idx + 1
        if done % self.every_n_batches and not (last and done == total):
            return
        seconds = time.monotonic() - self._started
        of = f"/{int(total)}" if total != float("inf") else ""
        self._line(f"{stage} {done}{of} batches, {seconds:.0f}s, {done / max(seconds, 1e-9):.2f} batch/s"
                   + (f" | {metrics}" if metrics else ""))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._batch_line(f"epoch {trainer.current_epoch} train", batch_idx, self.total_train_batches,
                         _format(self.get_metrics(trainer, pl_module)), last=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = time.monotonic() - self._started
        self._line(f"epoch {trainer.current_epoch} done in {seconds:.0f}s | "
                   f"{_format(self.get_metrics(trainer, pl_module))}")

    def _eval_start(self) -> None:
        if self.trainer.state.fn != TrainerFn.FITTING:
            self._started = time.monotonic()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start()

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # inside fit, the epoch line carries the val metrics
            self._batch_line("validate", batch_idx, trainer.num_val_batches[dataloader_idx])

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_line("test", batch_idx, trainer.num_test_batches[dataloader_idx])

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_line("predict", batch_idx, trainer.num_predict_batches[dataloader_idx])
