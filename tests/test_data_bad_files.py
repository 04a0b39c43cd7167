"""Bad data never makes a "successful" run (pathway.data): per-epoch skipped metric, one log line per bad file, a
stop on an epoch without readable samples, on too many unreadable ones and on a split smaller than one batch;
evaluation reads only the split it evaluates; images over Pillow's decompression-bomb limit are bad samples naming
file and limit, and 16-bit images are scaled by their bit depth."""
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


def _image_data(root: Path, policy: str) -> ImageDataModule:
    data = ImageDataModule(str(root), img_size=8, num_workers=0, pin_memory=False, batch_size=8, crop_pct=1.0,
                           interpolation="nearest", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), on_bad_file=policy)
    data.setup("validate")
    return data


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_decompression_bomb_is_a_bad_sample_naming_file_and_limit(tmp_path: Path, policy: str,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Pillow refuses an image over twice MAX_IMAGE_PIXELS (a 196-MP PNG at the default): skipped and named under
    skip, the run stopped naming it under error; the limit is scaled down so that the test writes a 24x24 PNG."""
    from PIL import Image
    _image_folder(tmp_path, "val")
    Image.new("RGB", (24, 24)).save(tmp_path / "val" / "dog" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 250)
    data = _image_data(tmp_path, policy)
    if policy == "error":
        with pytest.raises(BadSampleError, match=r"bomb\.png.*exceeds limit of 500 pixels.*MAX_IMAGE_PIXELS = 250"):
            list(data.val_dataloader())
        return
    with caplog.at_level(logging.WARNING, logger="pathway.data"):
        (images, _), = list(data.val_dataloader())
    assert images.shape[0] == 4 and data.val_set.skipped == 1
    assert any("bomb.png" in r.getMessage() and "MAX_IMAGE_PIXELS" in r.getMessage() for r in caplog.records)


def test_sixteen_bit_png_is_scaled_by_its_bit_depth(tmp_path: Path) -> None:
    from PIL import Image
    from Image.datamodule import load_rgb
    ramp = (np.arange(64, dtype=np.uint32) * 1040).reshape(8, 8).astype(np.uint16)  # 0 .. 65520
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    rgb = np.asarray(load_rgb(str(path)))
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], np.round(ramp / 257.0).astype(np.uint8))
    assert (rgb[..., 0] == rgb[..., 2]).all() and rgb.min() == 0 and rgb.max() == 255 and 100 < rgb.mean() < 155
    _image_folder(tmp_path / "data", "val")
    Image.fromarray(ramp).save(tmp_path / "data" / "val" / "cat" / "0.png")
    images, _ = next(iter(_image_data(tmp_path / "data", "error").val_dataloader()))
    assert torch.allclose(images[0, 0] * 255, torch.from_numpy(np.round(ramp / 257.0)).float(), atol=1e-3)


def test_images_without_a_bit_depth_are_refused_naming_the_file(tmp_path: Path) -> None:
    from PIL import Image
    from Image.datamodule import ImageFileError, load_rgb
    path = tmp_path / "float.tiff"
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(path)
    with pytest.raises(ImageFileError, match=r"float\.tiff: TIFF image of mode F"):
        load_rgb(str(path))
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (32, 32), (9, 9, 9)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ImageFileError, match=r"cut\.png: cannot decode image"):
        load_rgb(str(truncated))


def test_a_bad_file_read_on_another_rank_is_named_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI prints rank 0's lines only; a file that only rank 1 read must still be named, marked with the rank."""
    from lightning.pytorch.utilities import rank_zero_only

    from pathway.cli import _RankZeroAndOwnFiles
    from pathway.data import EVERY_RANK

    def record(extra: Optional[dict]) -> logging.LogRecord:
        return logging.getLogger("pathway.data").makeRecord("pathway.data", logging.WARNING, __file__, 1,
                                                             "skipping unreadable sample %s", ("a.png",), None,
                                                             extra=extra)

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    about_a_file, other = record(EVERY_RANK), record(None)
    assert _RankZeroAndOwnFiles().filter(about_a_file) and about_a_file.rank_prefix == "[rank: 1] "
    assert not _RankZeroAndOwnFiles().filter(other)
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert _RankZeroAndOwnFiles().filter(record(None)) and _RankZeroAndOwnFiles().filter(record(EVERY_RANK))
