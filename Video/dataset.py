"""Video classification datasets: Kinetics-style list files or class folders, decoded clip by clip.

Training and validation give one clip per video, ``(clip, label)``; with repeated augmentation (``num_sample > 1``,
VideoMAE's ``--num_sample``) a training item is ``(clips (num_sample, C, T, H, W), labels (num_sample,))``: one
decode, ``num_sample`` independent augmentations, flattened into the batch by ``collate_repeated``.  The multi-view
test gives every ``(temporal clip, spatial crop)`` view of every video as its own item, ``(clip, label,
video_index)``, so the shared classifier averages the views' scores per video (its ``sample_ids``).

An unreadable video (corrupt, truncated, missing) raises one of ``READ_ERRORS``; the DataModule wraps every split in
``pathway.data.SkippingDataset``, which skips and counts it or stops the run (``on_bad_file``).
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import av
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pathway.data import class_folders, collate_skipping_none
from Video.decoding import Backend, VideoDecodeError, open_video
from Video.sampling import Mode, clip_indices
from Video.transforms import EvalClipTransform, TrainClipTransform

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")
PathLike = Union[str, os.PathLike]
READ_ERRORS = (VideoDecodeError, av.FFmpegError, OSError, EOFError)


@dataclass(frozen=True)
class VideoRecord:
    path: Path
    label: int


def read_list_file(list_file: PathLike, root: PathLike) -> list[VideoRecord]:
    """Parse ``<path> <label>`` lines (space or comma separated; paths relative to ``root`` or absolute).

    Blank lines and ``#`` comments are ignored, and so is a first line whose label field is not an integer
    (a CSV header); any other malformed line is an error naming the file and line.
    """
    list_file, root = Path(list_file), Path(root)
    if not list_file.is_file():
        raise FileNotFoundError(f"{list_file}: list file not found (expected '<path> <label>' lines)")
    records = []
    for number, raw in enumerate(list_file.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.rsplit(",", 1)] if "," in line else line.rsplit(None, 1)
        if len(fields) != 2 or not fields[0]:
            raise ValueError(f"{list_file}:{number}: expected '<path> <label>', got {raw!r}")
        path, label = fields
        if not re.fullmatch(r"-?\d+", label):
            if not records and number == 1:
                continue
            raise ValueError(f"{list_file}:{number}: label {label!r} is not an integer class index")
        if int(label) < 0:
            raise ValueError(f"{list_file}:{number}: negative label {label}")
        records.append(VideoRecord(root / path, int(label)))
    if not records:
        raise ValueError(f"{list_file}: no '<path> <label>' entries")
    return records


def scan_class_folders(split_dir: PathLike, classes: Optional[list[str]] = None) -> list[VideoRecord]:
    """Every video under ``<split_dir>/<class>/``; ``classes`` fixes the label order (default: sorted folders)."""
    split_dir = Path(split_dir)
    classes = classes or class_folders(split_dir)
    records = []
    for label, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: class folder missing (the training split has class '{name}')")
        records.extend(
            VideoRecord(p, label) for p in sorted(folder.rglob("*")) if p.suffix.lower() in VIDEO_EXTENSIONS
        )
    if not records:
        raise ValueError(f"{split_dir}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in its class folders")
    return records


class VideoClipDataset(Dataset):
    """Clips of ``num_frames`` frames, ``sampling_rate`` apart, from the videos of ``records``."""

    def __init__(
        self,
        records: list[VideoRecord],
        mode: Mode,
        num_frames: int = 16,
        sampling_rate: int = 4,
        img_size: int = 224,
        train_transform: Optional[TrainClipTransform] = None,
        train_short_side: Optional[int] = None,
        test_num_clips: int = 5,
        test_num_crops: int = 3,
        num_sample: int = 1,
        decoder: Backend = "auto",
        mean: tuple[float, ...] = (0.485, 0.456, 0.406),
        std: tuple[float, ...] = (0.229, 0.224, 0.225),
    ) -> None:
        if mode not in ("train", "val", "test"):
            raise ValueError(f"unknown dataset mode {mode!r}; expected 'train', 'val' or 'test'")
        if num_sample < 1 or (num_sample > 1 and mode != "train"):
            raise ValueError(f"num_sample={num_sample}: repeated augmentation needs num_sample >= 1, in training only")
        self.records = records
        self.mode = mode
        self.num_frames, self.sampling_rate = num_frames, sampling_rate
        self.num_clips = test_num_clips if mode == "test" else 1
        self.num_crops = test_num_crops if mode == "test" else 1
        self.num_sample = num_sample
        self.decoder = decoder
        if mode == "train":
            self.transform = train_transform or TrainClipTransform(img_size, mean=mean, std=std)
            self.short_side = train_short_side
        else:
            self.eval_transform = EvalClipTransform(img_size, self.num_crops, mean=mean, std=std)
            self.short_side = img_size
        self._cache: Optional[tuple[tuple[int, int], Union[np.ndarray, Exception]]] = None

    def __len__(self) -> int:
        return len(self.records) * self.num_clips * self.num_crops

    def _frames(self, video: int, clip_index: int) -> np.ndarray:
        """The frames of one clip of one video.  The test asks for each clip once per crop, in a row, so the
        last result (frames or the decoding error) is kept and each video is opened once per clip."""
        key = (video, clip_index)
        if self._cache is not None and self._cache[0] == key:
            if isinstance(self._cache[1], Exception):
                raise self._cache[1]
            return self._cache[1]
        try:
            frames = self._decode(video, clip_index)
        except READ_ERRORS as err:
            if self.mode == "test":
                self._cache = (key, err)
            raise
        if self.mode == "test":
            self._cache = (key, frames)
        return frames

    def _decode(self, video: int, clip_index: int) -> np.ndarray:
        reader = open_video(self.records[video].path, short_side=self.short_side, backend=self.decoder)
        try:
            indices = clip_indices(
                reader.num_frames, self.num_frames, self.sampling_rate, self.mode, clip_index, self.num_clips
            )
            return reader.frames(indices)
        finally:
            reader.close()

    def __getitem__(self, index: int) -> tuple:
        if self.mode == "train":
            return self._train_item(index)
        views = self.num_clips * self.num_crops
        video, view = divmod(index, views)
        clip_index, crop_index = divmod(view, self.num_crops)
        frames = self._frames(video, clip_index)
        clip = self.eval_transform(frames, crop_index)
        label = self.records[video].label
        return (clip, label, video) if self.mode == "test" else (clip, label)

    def _train_item(self, video: int) -> tuple[Tensor, Tensor | int]:
        frames = self._frames(video, 0)
        label = self.records[video].label
        if self.num_sample == 1:
            return self.transform(frames), label
        clips = torch.stack([self.transform(frames) for _ in range(self.num_sample)])
        return clips, torch.full((self.num_sample,), label, dtype=torch.long)

    def describe(self, index: int) -> str:
        """The file behind item ``index`` (for skip logs)."""
        return str(self.records[index // (self.num_clips * self.num_crops)].path)


def collate_repeated(batch: Sequence[Optional[tuple[Tensor, Tensor]]]) -> Optional[tuple[Tensor, Tensor]]:
    """Repeated-augmentation items -> one batch of ``len(batch) · num_sample`` clips, video by video (as VideoMAE's
    ``multiple_samples_collate``); unreadable items (``None``) are dropped."""
    collated = collate_skipping_none(batch)
    if collated is None:
        return None
    clips, labels = collated
    return clips.flatten(0, 1), labels.flatten(0, 1)
