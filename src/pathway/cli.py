"""The LightningCLI every modality runs through: ``python -m <Modality> fit|validate|test|predict --config ...``."""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any, Optional

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from pathway.callbacks import LambdaMonitor, MergedCheckpoint, PredictionWriter
from pathway.checkpoint_io import AtomicCheckpointIO
from pathway.module import PathwayModule
from pathway.resume import LastAndBestCheckpoint, SigtermCheckpoint, resolve_last_checkpoint


# In a file (a SLURM .out) every redraw of the bar is kept: redraw less often there than on a terminal.
FILE_PROGRESS_REFRESH_RATE = 50


class _RankZero(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return rank_zero_only.rank == 0


def show_project_logs(names: Iterable[str]) -> None:
    """Print the INFO lines of the project's loggers (``pathway`` and the modality packages) on rank 0.

    They carry what a user checks first in a run's output (effective lr, layers with a pathway, dataset sizes,
    skipped files, the point-ops backend).  Where the program already configured logging (a root handler, e.g.
    pytest's capture), the records just propagate to it.
    """
    if logging.getLogger().handlers:
        for name in names:
            logging.getLogger(name).setLevel(logging.INFO)
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RankZero())
    for name in names:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        if not logger.handlers:
            logger.addHandler(handler)
        logger.propagate = False


def default_progress_bar() -> ProgressBar:
    """Lightning's TQDM bar, keeping one line per epoch (with the val metrics) so the history stays readable, and
    redrawn every ``FILE_PROGRESS_REFRESH_RATE`` batches when the output is a file rather than a terminal."""
    return TQDMProgressBar(refresh_rate=1 if sys.stdout.isatty() else FILE_PROGRESS_REFRESH_RATE, leave=True)


def default_loggers(root: str) -> list[Logger]:
    """CSV (``metrics.csv``) and TensorBoard, in the same ``lightning_logs/version_N`` folder of the run."""
    csv = CSVLogger(root)
    return [csv, TensorBoardLogger(root, version=csv.version, sub_dir="tensorboard", default_hp_metric=False)]


class PathwayCLI(LightningCLI):
    """Adds the always-on callbacks as their own config sections, and links the class count data → model.

    Checkpoints are written atomically (``AtomicCheckpointIO``, unless a ``CheckpointIO`` plugin is configured),
    a SIGTERM writes the last checkpoint, and ``--ckpt_path last`` resumes from the newest checkpoint of the run
    (see ``pathway.resume``).  Unless configured otherwise, runs log to CSV and TensorBoard, show Lightning's TQDM
    bar (any ``ProgressBar`` in ``trainer.callbacks`` replaces it) and ``predict`` writes ``predictions.csv``.
    The optimizer is the model's (layer-decay AdamW with warmup + cosine): ``--optimizer``/``--lr_scheduler`` are
    refused instead of silently replacing it.
    """

    monitor: str = "val/acc1"

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        # Settings a modality's model must share with its data (e.g. Audio's fbank grid) are given once, in `data:`.
        for name, apply_on in getattr(self.datamodule_class, "linked_to_model", {}).items():
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on=apply_on)
        parser.add_lightning_class_args(LastAndBestCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": self.monitor,
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-{epoch}-{step}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(LambdaMonitor, "lambda_monitor")
        parser.add_lightning_class_args(MergedCheckpoint, "merged_export")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        replaced = [key for key in ("optimizer", "lr_scheduler") if config.get(key) is not None]
        if replaced:
            self._parser(self.subcommand).error(
                f"--{' / --'.join(replaced)} would replace the model's optimizer (AdamW with layer-wise lr decay, λ "
                "without weight decay) and its warmup + cosine schedule; set model.lr or model.blr, "
                "model.layer_decay, model.weight_decay, model.betas, model.warmup_epochs and model.min_lr instead"
            )
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": [SigtermCheckpoint()]}
        if config.get("ckpt_path") == "last":
            root = config.trainer.get("default_root_dir") or os.getcwd()
            config.ckpt_path = resolve_last_checkpoint(root, config.checkpoint.get("dirpath"))

    def instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand in ("validate", "test", "predict") and config.get("ckpt_path"):
            with PathwayModule.restoring():  # the trained weights and the pathway come from the checkpoint
                super().instantiate_classes()
        else:
            super().instantiate_classes()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        plugins = kwargs.pop("plugins", None)
        if plugins is None:
            plugins = self._get(self.config_init, "trainer", default={}).get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(trainer_config.get("default_root_dir") or os.getcwd())
        callbacks = trainer_config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if trainer_config.get("enable_progress_bar") is not False and not any(
                isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, default_progress_bar()]
        return super().instantiate_trainer(plugins=plugins, **kwargs)


def run_cli(model_class: type, datamodule_class: type, args: Optional[list[str]] = None,
            monitor: str = "val/acc1", run: bool = True) -> LightningCLI:
    """Run the CLI for one modality; ``monitor`` is the metric that picks the best checkpoint."""
    show_project_logs(dict.fromkeys(["pathway", model_class.__module__.split(".")[0],
                                     datamodule_class.__module__.split(".")[0]]))
    cli_class = type("PathwayCLI", (PathwayCLI,), {"monitor": monitor})
    return cli_class(
        model_class,
        datamodule_class,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
    )
