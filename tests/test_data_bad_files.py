"""Bad data never makes a "successful" run (pathway.data): per-epoch skipped metric, one log line per bad file, a
stop on an epoch without readable samples, on too many unreadable ones and on a split smaller than one batch; and
evaluation reads only the split it evaluates."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn
from torch.utils.data import Dataset

from Audio.datamodule import AudioDataModule
from Audio.model import AudioClassifier
from Image.datamodule import ImageDataModule
from pathway.cli import run_cli
from pathway.data import (
    MAX_CONSECUTIVE_BAD, BadDataError, BadSampleError, SkippingDataset, SplitDataModule, class_folders,
    first_split_folder,
)
from Point.datamodule import PointDataModule
from Point.synthetic import make_shape_dataset
from Video.datamodule import VideoDataModule
from Video.synthetic import make_video_dataset

CONFIGS = Path(__file__).resolve().parents[1]


class Numbers(Dataset):
    """``(x, y)`` pairs; the items in ``bad`` raise ``BadSampleError`` like an unreadable file."""

    def __init__(self, size: int, bad: set[int]) -> None:
        self.size, self.bad = size, bad

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index in self.bad:
            raise BadSampleError(f"file{index}.bin: corrupt")
        return torch.full((2,), float(index)), index % 2


class NumbersData(SplitDataModule):
    def __init__(self, size: int = 8, bad: tuple[int, ...] = (), batch_size: int = 4,
                 max_bad_fraction: float = 0.05, bad_val: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.hparams.update(num_workers=0, pin_memory=False, on_bad_file="skip")

    def build_split(self, split: str) -> SkippingDataset:
        """The bad files are in the training split, and (with ``bad_val``) in the validation split too."""
        bad = set(self.hparams.bad) if split == "train" or self.hparams.bad_val else set()
        return self.skipping(Numbers(self.hparams.size, bad), lambda i: f"file{i}.bin")


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)

    def training_step(self, batch: Optional[Any], batch_idx: int) -> torch.Tensor:
        if batch is None:
            return self.layer.weight.sum() * 0.0
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch: Optional[Any], batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(data: SplitDataModule, epochs: int = 1) -> L.Trainer:
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Tiny(), data)
    return trainer


def test_skipped_samples_are_a_metric_and_each_bad_file_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pathway.data"):
        trainer = _fit(NumbersData(size=8, bad=(3,), max_bad_fraction=0.5, bad_val=True), epochs=3)
    assert trainer.callback_metrics["data/train_skipped"].item() == 1.0  # per epoch, not accumulated
    assert trainer.callback_metrics["data/val_skipped"].item() == 1.0
    assert caplog.text.count("skipping unreadable sample file3.bin") == 2  # once for train, once for val


def test_unreadable_fraction_above_the_limit_stops_the_run() -> None:
    with pytest.raises(BadDataError, match=r"train split: 1 of 8 samples unreadable.*max_bad_fraction=0.1"):
        _fit(NumbersData(size=8, bad=(3,), max_bad_fraction=0.1))


def test_epoch_without_a_readable_sample_stops_the_run() -> None:
    with pytest.raises(BadDataError, match="train split had no readable sample"):
        _fit(NumbersData(size=8, bad=tuple(range(8)), max_bad_fraction=1.0))


def test_many_unreadable_in_a_row_stop_at_once() -> None:
    with pytest.raises(ValueError, match="on_bad_file must be 'skip' or 'error', got 'ignore'"):
        SkippingDataset(Numbers(1, set()), str, on_bad_file="ignore")  # type: ignore[arg-type]
    data = SkippingDataset(Numbers(100, set(range(100))), lambda i: f"file{i}.bin")
    for index in range(MAX_CONSECUTIVE_BAD - 1):
        assert data[index] is None
    with pytest.raises(BadDataError, match=f"{MAX_CONSECUTIVE_BAD} unreadable samples in a row.*file19.bin"):
        data[MAX_CONSECUTIVE_BAD - 1]


def test_split_smaller_than_a_batch_is_an_error_naming_split_size_and_batch() -> None:
    with pytest.raises(BadDataError, match=r"train split has 3 samples.*data.batch_size=4"):
        _fit(NumbersData(size=3, batch_size=4))


def _write_wav(path: Path, seconds: float = 0.5) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(0).normal(size=int(16000 * seconds)).astype(np.float32) * 0.1, 16000)


def test_all_unreadable_audio_folder_fails_without_writing_models(tmp_path: Path, aux_ckpt: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case: every file unreadable, on_bad_file skip -> a clear error, no merged export."""
    monkeypatch.setattr(sys, "argv", ["python"])
    for split in ("train", "val"):
        for cls in ("a", "b"):
            for i in range(2):
                (tmp_path / "data" / split / cls).mkdir(parents=True, exist_ok=True)
                (tmp_path / "data" / split / cls / f"{i}.wav").write_bytes(b"RIFF not audio")
    args = [
        "fit", "--config", str(CONFIGS / "Audio" / "configs" / "demo.yaml"),
        "--model.embed_dim", "32", "--model.depth", "2", "--model.num_heads", "2",
        "--model.aux_ckpts", json.dumps([str(aux_ckpt)]), "--data.on_bad_file", "skip",
        "--data.root", str(tmp_path / "data"), "--data.target_length", "64", "--data.num_mel_bins", "32",
        "--data.batch_size", "2", "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "run"),
    ]
    with pytest.raises(BadDataError, match="no readable sample"):
        run_cli(AudioClassifier, AudioDataModule, args=args)
    assert not list((tmp_path / "run").rglob("*.safetensors")) and not list((tmp_path / "run").rglob("*.ckpt"))


def _image_folder(root: Path, split: str) -> None:
    for cls in ("cat", "dog"):
        (root / split / cls).mkdir(parents=True)
        for i in range(2):
            from PIL import Image
            Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(root / split / cls / f"{i}.png")


def test_evaluating_needs_only_the_evaluated_split(tmp_path: Path) -> None:
    _image_folder(tmp_path / "img", "val")
    image = ImageDataModule(str(tmp_path / "img"), img_size=8, num_workers=0, pin_memory=False)
    image.setup("test")
    assert image.num_classes == 2 and len(image.test_set) == 4 and image.train_set is None
    with pytest.raises(FileNotFoundError, match=r"img/train: split folder not found"):
        image.setup("fit")

    for cls in ("a", "b"):
        _write_wav(tmp_path / "audio" / "val" / cls / "x.wav")
    audio = AudioDataModule(format="folder", root=str(tmp_path / "audio"), num_workers=0, pin_memory=False)
    audio.setup("validate")
    assert audio.num_classes == 2 and len(audio.val_set) == 2 and audio.train_set is None

    make_video_dataset(tmp_path / "video", classes=2, per_class=1, frames=8, size=(16, 16), fps=10, seed=0)
    (tmp_path / "video" / "train.csv").unlink()
    video = VideoDataModule(str(tmp_path / "video"), num_frames=2, sampling_rate=1, img_size=16, num_workers=0,
                            pin_memory=False, test_num_clips=1, test_num_crops=1)
    video.setup("test")
    assert video.num_classes == 2 and len(video.test_set) == 2 and video.train_set is None

    root = make_shape_dataset(tmp_path / "points", classes=2, per_class=1, points=40)
    for path in sorted((root / "train").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (root / "train").rmdir()
    point = PointDataModule(str(root), format="folder", num_points=32, num_workers=0, pin_memory=False)
    point.setup("test")
    assert point.num_classes == 2 and len(point.test_set) == 2 and point.train_set is None


def test_class_folders_name_the_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere: split folder not found"):
        class_folders(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no class sub-folders"):
        class_folders(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"none of the split folders"):
        first_split_folder(tmp_path, ("train", "val"))
