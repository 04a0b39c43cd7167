"""``python -m Audio fit|validate|test|predict --config Audio/configs/<name>.yaml``."""
from Audio.datamodule import AudioDataModule
from Audio.model import AudioClassifier
from pathway.cli import run_cli

if __name__ == "__main__":
    run_cli(AudioClassifier, AudioDataModule)
