"""``python -m Video fit|validate|test|predict --config Video/configs/<name>.yaml``."""
import pathway.entry  # first: sets the CPU-thread environment before torch loads

from Video.datamodule import VideoDataModule
from Video.model import VideoClassifier
from pathway.cli import run_cli

if __name__ == "__main__":
    with pathway.entry.errors_as_messages():
        run_cli(VideoClassifier, VideoDataModule, command="Video")
