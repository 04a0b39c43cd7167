"""``python -m Image fit|validate|test|predict --config Image/configs/<name>.yaml``."""
import pathway.entry  # first: sets the CPU-thread environment before torch loads

from Image.datamodule import ImageDataModule
from Image.model import ImageClassifier
from pathway.cli import run_cli

if __name__ == "__main__":
    with pathway.entry.errors_as_messages():
        run_cli(ImageClassifier, ImageDataModule, command="Image")
