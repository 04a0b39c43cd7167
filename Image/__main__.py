from Image.datamodule import ImageDataModule
from Image.model import ImageClassifier
from pathway.cli import run_cli

if __name__ == "__main__":
    run_cli(ImageClassifier, ImageDataModule)
