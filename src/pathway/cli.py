"""The LightningCLI every modality runs through: ``python -m <Modality> fit|validate|test|predict --config ...``."""
from __future__ import annotations

from typing import Optional

from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI

from pathway.callbacks import LambdaMonitor, MergedCheckpoint


class PathwayCLI(LightningCLI):
    """Adds the always-on callbacks as their own config sections, and links the class count data → model."""

    monitor: str = "val/acc1"

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
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
        if config.trainer.get("enable_progress_bar") is not False:
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": [RichProgressBar()]}


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
