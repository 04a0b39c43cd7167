"""The reference recipes' data features: Video repeated augmentation (VideoMAE ``--num_sample``), the class-balanced
weighted sampler of AudioSet-2M (AudioMAE ``--weight_sampler``) and its DDP sharding, AudioMAE's roll with random
magnitude, MAE's ``--remode pixel`` random erasing, and progress lines for long data preparation."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from timm.data.random_erasing import RandomErasing

import Video.dataset as video_dataset
from Audio.datamodule import AudioDataModule
from Audio.dataset import draw_roll
from Audio.labels import AudioRecord, class_balanced_weights
from Audio.stats import fbank_stats
from Image.datamodule import ImageDataModule
from pathway.data import WeightedDistributedSampler, log_progress
from Point.datasets import FixedSizeCloudSampler
from Video.datamodule import VideoDataModule
from Video.synthetic import make_video_dataset


def test_repeated_augmentation_decodes_once_and_augments_each_copy(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    make_video_dataset(tmp_path, classes=2, per_class=2, frames=12, size=(24, 32), fps=10, seed=0)
    dm = VideoDataModule(str(tmp_path), num_frames=4, sampling_rate=2, img_size=16, batch_size=2, num_workers=0,
                         pin_memory=False, num_sample=2)
    dm.setup("fit")
    opened = []
    real_open = video_dataset.open_video
    monkeypatch.setattr(video_dataset, "open_video", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    clips, labels = dm.train_set[3]
    assert len(opened) == 1 and clips.shape == (2, 3, 4, 16, 16) and labels.tolist() == [1, 1]
    assert not torch.equal(clips[0], clips[1])  # independently augmented
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 4, 16, 16) and y.shape == (4,)
    assert y[0] == y[1] and y[2] == y[3]  # video by video, as VideoMAE's multiple_samples_collate
    assert dm.batch_size == 2  # lr scaling and steps per epoch count videos, as VideoMAE does
    assert dm.val_set[0][0].shape == (3, 4, 16, 16)  # evaluation is not repeated


def test_class_balanced_weights_follow_gen_weight() -> None:
    records = [AudioRecord(Path("a"), (0,)), AudioRecord(Path("b"), (0,)), AudioRecord(Path("c"), (0, 1))]
    weights = class_balanced_weights(records, 3)
    assert weights == pytest.approx([1000 / 3.01, 1000 / 3.01, 1000 / 3.01 + 1000 / 1.01])


def test_weighted_sampler_shards_one_draw_over_ranks() -> None:
    weights = torch.tensor([0.0] + [1.0] * 9 + [50.0] * 10)
    shards = [list(WeightedDistributedSampler(weights, 12, num_replicas=2, rank=r)) for r in (0, 1)]
    single = list(WeightedDistributedSampler(weights, 12))
    assert [len(s) for s in shards] == [6, 6]
    assert sorted(shards[0] + shards[1]) == sorted(single)  # disjoint parts of the same global draw
    assert len(set(single)) == 12 and 0 not in single  # without replacement; weight 0 never drawn
    assert sum(i >= 10 for i in single) >= 9  # drawn by weight
    sampler = WeightedDistributedSampler(weights, 12)
    sampler.set_epoch(1)
    assert list(sampler) != single  # a new draw every epoch
    with pytest.raises(ValueError, match="cannot draw 20 samples without replacement from 19"):
        WeightedDistributedSampler(weights, 20)


def _tones(root: Path, counts: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls, count in counts.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count if split == "train" else 1):
                sf.write(root / split / cls / f"{i}.wav", rng.normal(size=8000).astype(np.float32) * 0.1, 16000)


def test_audio_datamodule_uses_the_weighted_sampler(tmp_path: Path) -> None:
    _tones(tmp_path, {"common": 9, "rare": 1})
    dm = AudioDataModule(format="folder", root=str(tmp_path), target_length=32, num_mel_bins=16, num_workers=0,
                         pin_memory=False, batch_size=2, weight_sampler=True, epoch_len=4)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, WeightedDistributedSampler) and len(loader) == 2
    rare = [i for i, r in enumerate(dm.train_set.records) if r.labels == (1,)]
    draws = [i for epoch in range(20) for i in (loader.sampler.set_epoch(epoch), list(loader.sampler))[1]]
    assert sum(i in rare for i in draws) / len(draws) > 0.2  # 1 of 10 clips, but half of the class weight
    (tmp_path / "w.csv").write_text("1\n" * 3)
    with pytest.raises(ValueError, match=r"w\.csv: 3 weights but the training split has 10 clips"):
        bad = AudioDataModule(format="folder", root=str(tmp_path), num_workers=0, pin_memory=False, batch_size=2,
                              weight_sampler=True, weight_csv=str(tmp_path / "w.csv"))
        bad.setup("fit")
        bad.train_dataloader()


def test_roll_has_a_random_magnitude() -> None:
    """``draw_roll`` gives where ``wave.roll(shift)`` starts, for the shift and magnitude AudioMAE's roll draws."""
    wave = torch.arange(1.0, 101.0)
    scales, starts = [], []
    for seed in range(5):
        np.random.seed(seed)
        shift, magnitude = int(np.random.randint(100)), float(np.random.beta(10, 10) + 0.5)
        np.random.seed(seed)
        start, scale = draw_roll(100)
        assert scale == magnitude
        torch.testing.assert_close(torch.cat([wave[start:], wave[:start]]), wave.roll(shift))
        scales.append(scale)
        starts.append(start)
    assert all(0.5 <= s <= 1.5 for s in scales) and len(set(scales)) == 5 and all(s != 1.0 for s in scales)
    assert len(set(starts)) == 5


def test_image_random_erasing_is_pixel_mode(tmp_path: Path) -> None:
    for split in ("train", "val"):
        (tmp_path / split / "gray").mkdir(parents=True)
        Image.new("RGB", (32, 32), (128, 128, 128)).save(tmp_path / split / "gray" / "0.png")
    dm = ImageDataModule(str(tmp_path), img_size=32, num_workers=0, pin_memory=False, batch_size=1,
                         auto_augment=None, re_prob=1.0, hflip=0.0, scale=(1.0, 1.0))
    dm.setup("fit")
    erasing = [t for t in dm.train_set.dataset.transform.transforms if isinstance(t, RandomErasing)]
    assert [e.mode for e in erasing] == ["pixel"]
    torch.manual_seed(0)
    image, _ = dm.train_set[0]
    changed = image[image != image[:, 0, 0].view(3, 1, 1).expand_as(image)]
    assert changed.numel() > 0 and changed.std() > 0.5  # per-pixel normal noise, not a constant fill


def test_progress_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pathway.data"):
        assert list(log_progress(range(3), 3, "counting", every_s=1e9)) == [0, 1, 2]
        clouds = [np.random.default_rng(i).normal(size=(40, 3)).astype(np.float32) for i in range(5)]
        FixedSizeCloudSampler(clouds, [str(i) for i in range(5)], num_points=16, oversample=1.0).precompute()
        _tones(tmp_path, {"a": 2})
        dm = AudioDataModule(format="folder", root=str(tmp_path), num_workers=0, pin_memory=False)
        fbank_stats(dm.build_dataset("train", augment=False))
    assert "counting: 3/3 (100%)" in caplog.text
    assert "FPS orders of 5 clouds on cpu, batches of 4 clouds done: 2/2 (100%)" in caplog.text
    assert "fbank_stats: clips read: 2/2 (100%)" in caplog.text
