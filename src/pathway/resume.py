"""Resuming: which file ``--ckpt_path last`` means, and a checkpoint on SIGTERM so a stopped job loses no steps.

Lightning resolves ``ckpt_path="last"`` only inside the current logger version's ``checkpoints/`` folder, and every
restart gets a new logger version, so a plain restart would silently start from scratch; it also ignores the
``hpc_ckpt_*.ckpt`` file its own SLURM handler writes on the requeue signal.  ``resolve_last_checkpoint`` looks at
all of them and takes the newest.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


def resume_candidates(default_root_dir: str, checkpoint_dirpath: Optional[str] = None) -> list[Path]:
    """``last*.ckpt`` in the checkpoint folder (or, when it follows the logger, in every ``*/checkpoints/`` below
    ``default_root_dir``) and Lightning's SLURM ``hpc_ckpt_*.ckpt`` in ``default_root_dir``."""
    root = Path(default_root_dir)
    found = list(root.glob("hpc_ckpt_*.ckpt")) if root.is_dir() else []
    if checkpoint_dirpath:
        folder = Path(checkpoint_dirpath)
        found += list(folder.glob("last*.ckpt")) if folder.is_dir() else []
    elif root.is_dir():
        found += [p for p in root.rglob("last*.ckpt") if p.parent.name == "checkpoints"]
    return [p for p in found if p.is_file()]


def resolve_last_checkpoint(default_root_dir: str, checkpoint_dirpath: Optional[str] = None) -> Optional[str]:
    """The newest resumable checkpoint (by modification time), or ``None`` on a first run."""
    candidates = resume_candidates(default_root_dir, checkpoint_dirpath)
    if not candidates:
        log.info("ckpt_path=last: no checkpoint under %s yet, starting a new run",
                 checkpoint_dirpath or default_root_dir)
        return None
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    log.info("ckpt_path=last: resuming from %s", newest)
    return str(newest)


class LastAndBestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is refreshed after every validation, as its name promises.

    Lightning 2.6 rewrites ``last.ckpt`` only when a top-k checkpoint was saved at the same step, so an epoch that
    does not improve the monitored metric leaves ``last.ckpt`` at an older epoch, and ``--ckpt_path last`` (resume,
    validate, test, predict) would silently go back in time.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def _refresh_last(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class SigtermCheckpoint(L.Callback):
    """On SIGTERM (``kill``, ``docker stop``, SLURM at the time limit) write the last checkpoint before exiting.

    Lightning turns SIGTERM into a ``SIGTERMException`` on every rank at the end of the current batch, so the state
    saved here is consistent; the file is the ``ModelCheckpoint``'s last checkpoint, which ``--ckpt_path last``
    picks up.
    """

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        callback = trainer.checkpoint_callback
        if not isinstance(callback, ModelCheckpoint) or callback.dirpath is None:
            return
        name = f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
        path = callback.last_model_path or str(Path(callback.dirpath) / name)
        trainer.save_checkpoint(path)
        callback.last_model_path = path
        log.warning("SIGTERM: saved %s at step %d", path, trainer.global_step)
