"""Resuming: which file ``--ckpt_path last`` means, a checkpoint on SIGTERM so a stopped job loses no steps, and
every rank's random state and data position in checkpoints, so a resumed run is the run that was not interrupted.

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

from torchdata.stateful_dataloader import StatefulDataLoader

from pathway.random_state import get_random_state, set_random_state

log = logging.getLogger(__name__)

EXIT_SIGTERM = 128 + signal.SIGTERM


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

    ``{monitor}`` in ``filename`` stands for the monitored metric and its value, named without ``/`` (which would
    make a folder): with ``monitor: val/mAP``, ``best-epoch={epoch}-{monitor}`` names ``best-epoch=3-val_mAP=0.3512``
    (without a monitor, the step: ``best-epoch=3-step=120``).
    """

    MONITOR_FIELD = "{monitor}"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.filename and self.MONITOR_FIELD in self.filename:
            value = f"{self.monitor.replace('/', '_')}={{{self.monitor}:.4f}}" if self.monitor else "step={step}"
            self.filename = self.filename.replace(self.MONITOR_FIELD, value)
        super().setup(trainer, pl_module, stage)

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
    file is the ``ModelCheckpoint``'s last checkpoint, which ``--ckpt_path last`` picks up, and the process exits
    with ``EXIT_SIGTERM`` (143, the shell's code for a SIGTERM death), so a preempted job does not look finished
    (Lightning's ``SIGTERMException`` is a ``SystemExit`` that would exit 0).  Outside of training
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
            raise SIGTERMException(EXIT_SIGTERM)

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


class RankStates(L.Callback):
    """Saves each rank's random state and training-data position in checkpoints and gives every rank its own back.

    Lightning checkpoints hold no random state (dropout, drop path, mixup) and only per-rank data of rank 0, the
    only writer: the training loader's state it saves (a ``StatefulDataLoader``'s position, sampler and worker random
    streams, see ``pathway.data``) is rank 0's, and it restores that state only for a checkpoint written mid-epoch,
    into a loader whose ``DistributedSampler`` is still at epoch 0.  Here every rank's states are gathered when a
    checkpoint is written (all ranks take part in ``save_checkpoint``), and when training starts on resume each rank
    (1) sets its sampler to the epoch about to run and loads its own loader state, or, when the saved epoch had
    ended, that state moved on to the start of the next epoch, as the uninterrupted run's persistent workers are;
    (2) starts the loader again from that state; (3) sets its random state, last, because starting a loader draws
    from it.  That is the point where the interrupted run saved it: between two training steps.  A checkpoint written
    by another number of processes cannot be continued exactly: that is logged, and the run goes on with its own
    streams.  (Steps (1)-(2) use two private names of Lightning 2.6's fit loop, ``_combined_loader`` and
    ``_data_fetcher``: it has no public way to start a loader again.)
    """

    KEY = "pathway_rank_states"

    def __init__(self) -> None:
        self._own: Optional[dict[str, Any]] = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        fit_state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        own = {"random": get_random_state(), "train_loaders": fit_state.get("combined_loader", [])}
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, own)
        else:
            gathered = [own]
        checkpoint[self.KEY] = gathered

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # validate/test/predict read the weights only
        states = checkpoint.get(self.KEY)
        if states is None:
            log.warning("the checkpoint has no per-rank random states and data positions (written before they were "
                        "saved): the resumed run's random streams differ from the interrupted run's")
            return
        if len(states) != trainer.world_size:
            log.warning("the checkpoint was written by %d processes, this run has %d: the resumed run's random "
                        "streams and data order differ from the interrupted run's (Lightning restores rank 0's data "
                        "position on every rank)", len(states), trainer.world_size)
            return
        self._own = states[trainer.global_rank]
        fit_state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        fit_state.pop("combined_loader", None)  # rank 0's: each rank loads its own in on_train_start

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        own, self._own = self._own, None
        if own is None:
            return
        loop = trainer.fit_loop
        loaders = [dl for dl in (loop._combined_loader.flattened if loop._combined_loader else [])
                   if isinstance(dl, StatefulDataLoader)]
        if own["train_loaders"] and len(loaders) == len(own["train_loaders"]):
            epoch_ended = loop.epoch_loop.batch_progress.current.ready >= trainer.num_training_batches
            for loader, state in zip(loaders, own["train_loaders"]):
                for sampler in (getattr(loader, "sampler", None), getattr(loader.batch_sampler, "sampler", None)):
                    if hasattr(sampler, "set_epoch"):
                        sampler.set_epoch(trainer.current_epoch)
                loader.load_state_dict({**state, "_iterator_finished": True} if epoch_ended else state)
            iter(loop._data_fetcher)  # the loader iterator Lightning started before this hook, from these states
        set_random_state(own["random"])
