"""``python -m Point fit|validate|test|predict --config Point/configs/<name>.yaml``: point-cloud classification."""
from pathway.cli import run_cli
from Point.datamodule import PointDataModule
from Point.model import PointClassifier

if __name__ == "__main__":
    run_cli(PointClassifier, PointDataModule)
