"""Sizes the model must share with its data are given once, in ``data:``, and linked to the model by the CLI."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from Image.datamodule import ImageDataModule
from Image.model import ImageClassifier
from pathway.cli import run_cli
from Video.datamodule import VideoDataModule
from Video.model import VideoClassifier
from Video.synthetic import make_video_dataset

REPO = Path(__file__).resolve().parents[1]


def test_image_size_comes_from_the_data(monkeypatch: pytest.MonkeyPatch, digits_root: Path) -> None:
    monkeypatch.setattr(sys, "argv", ["python"])
    cli = run_cli(ImageClassifier, ImageDataModule, run=False, args=[
        "--config", str(REPO / "Image" / "configs" / "demo.yaml"), "--data.root", str(digits_root),
        "--model.aux_ckpts", "[]", "--data.img_size", "24"])
    assert cli.model.hparams.img_size == 24 and cli.model.example_input_shape()[-1] == 24


def test_video_clip_size_comes_from_the_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "argv", ["python"])
    make_video_dataset(tmp_path, classes=2, per_class=1, frames=8, size=(16, 16), fps=10, seed=0)
    cli = run_cli(VideoClassifier, VideoDataModule, run=False, args=[
        "--config", str(REPO / "Video" / "configs" / "demo.yaml"), "--data.root", str(tmp_path),
        "--model.aux_ckpts", "[]", "--data.num_frames", "4", "--data.img_size", "16"])
    assert (cli.model.hparams.num_frames, cli.model.hparams.img_size) == (4, 16)
    assert cli.model.example_input_shape() == (3, 4, 16, 16)
