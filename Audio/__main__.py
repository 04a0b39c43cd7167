"""``python -m Audio fit|validate|test|predict --config Audio/configs/<name>.yaml``."""
import pathway.entry  # first: sets the CPU-thread environment before torch loads

from Audio.datamodule import AudioDataModule
from Audio.model import AudioClassifier
from pathway.cli import run_cli

if __name__ == "__main__":
    with pathway.entry.errors_as_messages():
        run_cli(AudioClassifier, AudioDataModule, command="Audio")
