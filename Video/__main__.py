"""``python -m Video fit|validate|test|predict --config Video/configs/<name>.yaml``."""
from pathway.cli import run_cli
from Video.datamodule import VideoDataModule
from Video.model import VideoClassifier

if __name__ == "__main__":
    run_cli(VideoClassifier, VideoDataModule)
