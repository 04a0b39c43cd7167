"""``python -m Point fit|validate|test|predict --config Point/configs/<name>.yaml``: point-cloud classification."""
import pathway.entry  # first: sets the CPU-thread environment before torch loads

from Point.datamodule import PointDataModule
from Point.model import PointClassifier
from pathway.cli import run_cli

if __name__ == "__main__":
    with pathway.entry.errors_as_messages():
        run_cli(PointClassifier, PointDataModule, command="Point")
