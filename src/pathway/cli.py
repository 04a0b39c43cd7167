"""The LightningCLI every modality runs through: ``python -m <Modality> fit|validate|test|predict --config ...``."""
from __future__ import annotations

import os
from typing import Any, Optional

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from pathway.callbacks import LambdaMonitor, MergedCheckpoint
from pathway.checkpoint_io import AtomicCheckpointIO
from pathway.resume import SigtermCheckpoint, resolve_last_checkpoint


class PathwayCLI(LightningCLI):
    """Adds the always-on callbacks as their own config sections, and links the class count data → model.

    Checkpoints are written atomically (``AtomicCheckpointIO``, unless a ``CheckpointIO`` plugin is configured),
    a SIGTERM writes the last checkpoint, and ``--ckpt_path last`` resumes from the newest checkpoint of the run
    (see ``pathway.resume``).
    """

    monitor: str = "val/acc1"

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        # Settings a modality's model must share with its data (e.g. Audio's fbank grid) are given once, in `data:`.
        for name, apply_on in getattr(self.datamodule_class, "linked_to_model", {}).items():
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on=apply_on)
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": self.monitor,
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-{epoch}-{step}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(LambdaMonitor, "lambda_monitor")
        parser.add_lightning_class_args(MergedCheckpoint, "merged_export")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        callbacks: list = [SigtermCheckpoint()]
        if config.trainer.get("enable_progress_bar") is not False:
            callbacks.append(RichProgressBar())
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": callbacks}
        if config.get("ckpt_path") == "last":
            root = config.trainer.get("default_root_dir") or os.getcwd()
            config.ckpt_path = resolve_last_checkpoint(root, config.checkpoint.get("dirpath"))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        plugins = kwargs.pop("plugins", None)
        if plugins is None:
            plugins = self._get(self.config_init, "trainer", default={}).get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        return super().instantiate_trainer(plugins=plugins, **kwargs)


def run_cli(model_class: type, datamodule_class: type, args: Optional[list[str]] = None,
            monitor: str = "val/acc1", run: bool = True) -> LightningCLI:
    """Run the CLI for one modality; ``monitor`` is the metric that picks the best checkpoint."""
    cli_class = type("PathwayCLI", (PathwayCLI,), {"monitor": monitor})
    return cli_class(
        model_class,
        datamodule_class,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
    )
