"""Resuming: which file ``--ckpt_path last`` means, and a checkpoint on SIGTERM so a stopped job loses no steps.

Lightning resolves ``ckpt_path="last"`` only inside the current logger version's ``checkpoints/`` folder, and every
restart gets a new logger version, so a plain restart would silently start from scratch; it also ignores the
``hpc_ckpt_*.ckpt`` file its own SLURM handler writes on the requeue signal.  ``resolve_last_checkpoint`` looks at
all of them and takes the newest.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Optional

import lightning as L
import torch
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
    """On SIGTERM (``kill``, ``timeout``, ``docker stop``, SLURM at the time limit) stop every rank at the same step and
    write the last checkpoint, then exit.

    Lightning's own SIGTERM handler broadcasts from inside the signal handler: under DDP that broadcast pairs with
    whatever collective the other ranks are in (a gradient all-reduce, a barrier), and a run that gets the signal
    mid-step can hang instead of stopping.  Here the handler only records the signal; after every training batch the
    ranks agree (an all-reduce of the flag, so a signal that reached only one rank, e.g. ``kill <rank-0 pid>``, still
    stops all of them) and all raise Lightning's ``SIGTERMException`` at that same step.  The run then stops within
    one training batch (or the validation epoch in progress) and every rank takes part in ``save_checkpoint``.  The
    file is the ``ModelCheckpoint``'s last checkpoint, which ``--ckpt_path last`` picks up.  Outside of training
    (validate/test/predict) there is nothing to save: SIGTERM ends the ranks at once, as it would without Lightning.
    """

    def __init__(self) -> None:
        self._received = False

    def _install(self, trainer: L.Trainer) -> None:
        """Replace Lightning's handler, which it registers just before the loops start (after ``setup``)."""
        if threading.current_thread() is not threading.main_thread():
            return
        fitting = trainer.state.fn == TrainerFn.FITTING

        def on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
            if fitting:
                self._received = True
                return
            launcher = trainer.strategy.launcher
            if launcher is not None:
                launcher.kill(signal.SIGTERM)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_sigterm)

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        stop = self._received
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            flag = torch.tensor([float(stop)], device=pl_module.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            raise SIGTERMException()

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
