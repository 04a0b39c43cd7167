"""Kinetics-style video data for LightningCLI: list files or class folders, clip sampling, multi-view test."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, Optional

from pathway.data import (
    DEFAULT_MAX_BAD_FRACTION, DEFAULT_ON_BAD_FILE, BadFilePolicy, SkippingDataset, Split, SplitDataModule,
    class_folders, first_split_folder,
)
from Video.dataset import (
    READ_ERRORS, VideoClipDataset, VideoRecord, collate_repeated, read_list_file, scan_class_folders,
)
from Video.decoding import Backend, resolve_backend
from Video.transforms import TrainClipTransform

log = logging.getLogger(__name__)


def _read_label_names(path: Path, labels: int, num_classes: Optional[int]) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if not names or len(names) < labels or (num_classes is not None and len(names) != num_classes):
        raise ValueError(f"data.label_names {path}: expected one class name per line for labels 0..{labels - 1}"
                         f"{f' (data.num_classes={num_classes})' if num_classes is not None else ''}, "
                         f"found {len(names)} names")
    return names


class VideoDataModule(SplitDataModule):
    """Video clips for fit/validate/test/predict.

    Layouts (``format``):
      * ``list``: ``<list_dir or root>/<split>.csv`` with ``<path> <label>`` lines (space or comma separated),
        paths relative to ``root`` (the VideoMAE Kinetics lists);
      * ``folder``: ``<root>/<split>/<class>/<video>``, labels from the sorted class folders.

    The class count and list come from the first split that exists (train, val, test), so evaluating needs only
    the split it evaluates.  ``num_frames`` and ``img_size`` are linked to the model by the CLI.

    Args:
        num_classes: number of classes; when unset, the largest label of the list + 1 (or the number of
            class folders).  Linked to ``model.num_classes`` by the CLI.
        label_names: for ``list``: a text file naming the classes, one per line, line ``i`` naming label ``i``
            (e.g. Kinetics-400's class list); ``predictions.csv`` and exports then name the classes.
        num_frames / sampling_rate: clip length and frame stride (16 and 4 for Kinetics-400).
        img_size: crop size; ``train_short_side`` the shorter side frames are decoded at for training (default
            ``img_size · 256/224``); evaluation decodes at ``img_size`` and crops ``img_size`` squares.
        test_num_clips / test_num_crops: views per video in ``test`` (the paper: 5 × 3); scores are averaged
            per video by the classifier.
        auto_augment / scale / ratio / hflip / re_prob: training augmentation (timm RandAugment string,
            random-resized-crop scale and aspect range, flip and random-erasing probabilities).  ``re_prob`` is
            VideoMAE's ``--reprob`` under timm's (and Image's) name; ``reprob``, its former name here, still works
            with a warning.
        num_sample: repeated augmentation (VideoMAE ``--num_sample``, 2 in its Kinetics fine-tuning): each
            training video is decoded once and augmented ``num_sample`` times independently, so a step sees
            ``batch_size · num_sample`` clips.  As in VideoMAE, ``batch_size`` (videos) is what the lr scaling
            (``blr · batch / 256``) and the steps per epoch count.
        on_bad_file / max_bad_fraction: unreadable videos, see ``pathway.data``.
        decoder: ``auto`` (torchcodec when usable, else PyAV), ``pyav`` or ``torchcodec``.
    """

    linked_to_model = {"num_frames": "parse", "img_size": "parse"}

    def __init__(
        self,
        root: str,
        format: Literal["list", "folder"] = "list",
        num_classes: Optional[int] = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        list_dir: Optional[str] = None,
        label_names: Optional[str] = None,
        batch_size: int = 8,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 8,
        pin_memory: bool = True,
        num_frames: int = 16,
        sampling_rate: int = 4,
        img_size: int = 224,
        train_short_side: Optional[int] = None,
        test_num_clips: int = 5,
        test_num_crops: int = 3,
        auto_augment: Optional[str] = "rand-m7-n4-mstd0.5-inc1",
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (0.75, 1.3333333),
        hflip: float = 0.5,
        re_prob: float = 0.25,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        num_sample: int = 1,
        on_bad_file: BadFilePolicy = DEFAULT_ON_BAD_FILE,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
        decoder: Backend = "auto",
        reprob: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["num_classes", "reprob"])  # num_classes: the model's is linked from ours
        if reprob is not None:
            if re_prob not in (reprob, 0.25):
                raise ValueError(f"data.reprob={reprob} and data.re_prob={re_prob}: reprob is the former name of "
                                 "re_prob; set re_prob only")
            log.warning("data.reprob is the former name of data.re_prob (timm's and Image's name): set "
                        "data.re_prob: %s instead", reprob)
            self.hparams.re_prob = reprob
        if num_sample < 1:
            raise ValueError(f"data.num_sample must be >= 1, got {num_sample}")
        if format not in ("list", "folder"):
            raise ValueError(f"data.format must be 'list' or 'folder', got {format!r}")
        self.root = Path(root)
        self.list_dir = Path(list_dir) if list_dir else self.root
        self.batch_size = batch_size
        self.classes: Optional[list[str]] = None
        splits = (train_split, val_split, test_split)
        if format == "folder":
            source = first_split_folder(self.root, splits)
            self.classes = class_folders(source)
            found = len(self.classes)
        else:
            source = next((s for s in splits if (self.list_dir / f"{s}.csv").is_file()), train_split)
            found = max(r.label for r in self._records(source)) + 1
            if label_names:
                self.classes = _read_label_names(Path(label_names), found, num_classes)
                found = len(self.classes)
        if num_classes is not None and num_classes < found:
            raise ValueError(f"data.num_classes={num_classes} but the {source} split has labels up to {found - 1}")
        self.num_classes = num_classes if num_classes is not None else found
        log.info("video decoder: %s", resolve_backend(decoder))

    def _records(self, split: str) -> list[VideoRecord]:
        if self.hparams.format == "folder":
            return scan_class_folders(self.root / split, self.classes)
        return read_list_file(self.list_dir / f"{split}.csv", self.root)

    def build_split(self, split: Split) -> SkippingDataset:
        hp = self.hparams
        records = self._records({"train": hp.train_split, "val": hp.val_split, "test": hp.test_split}[split])
        too_large = [r for r in records if r.label >= self.num_classes]
        if too_large:
            raise ValueError(f"split '{split}': label {too_large[0].label} of {too_large[0].path} is >= "
                             f"num_classes {self.num_classes}")
        transform = None
        if split == "train":
            transform = TrainClipTransform(hp.img_size, tuple(hp.scale), tuple(hp.ratio), hp.hflip, hp.auto_augment,
                                           hp.re_prob, hp.mean, hp.std)
        dataset = VideoClipDataset(
            records, split, hp.num_frames, hp.sampling_rate, hp.img_size, transform,
            hp.train_short_side or round(hp.img_size * 256 / 224), hp.test_num_clips, hp.test_num_crops,
            hp.num_sample if split == "train" else 1, hp.decoder, tuple(hp.mean), tuple(hp.std),
        )
        views = dataset.num_clips * dataset.num_crops
        return self.skipping(dataset, dataset.describe, read_errors=READ_ERRORS, items_per_file=views)

    def loader_kwargs(self, train: bool) -> dict[str, Any]:
        hp = self.hparams
        if train:
            return {"collate_fn": collate_repeated} if hp.num_sample > 1 else {}
        return {"batch_size": hp.eval_batch_size or hp.batch_size}
