"""ImageFolder train/val data with timm's train/eval transforms; unreadable images are skipped and counted."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from timm.data import create_transform
from torchvision.datasets import ImageFolder

from pathway.data import (
    DEFAULT_MAX_BAD_FRACTION, DEFAULT_ON_BAD_FILE, BadFilePolicy, SkippingDataset, Split, SplitDataModule,
    class_folders, first_split_folder,
)

log = logging.getLogger(__name__)


class ImageDataModule(SplitDataModule):
    """``root/<train_split>/<class>/*`` and ``root/<val_split>/<class>/*`` (the ImageNet layout).

    Args:
        num_classes: checked against the class folders when given; otherwise taken from them.
        scale / hflip: random-resized-crop area range and horizontal-flip probability (training).
        auto_augment: timm RandAugment spec for training (paper: ``rand-m9-mstd0.5-inc1``).
        re_prob / re_mode / re_count: random erasing (training): probability, fill (``pixel``: per-pixel normal
            noise, MAE's ``--remode pixel``; ``const``: zeros, timm's default) and count.
        crop_pct: eval centre-crop fraction.
        on_bad_file / max_bad_fraction: unreadable images, see ``pathway.data``.

    ``img_size`` is linked to ``model.img_size`` by the CLI.  The class list comes from the first class-folder
    split that exists (train, then val, then test), so ``test`` needs only the split it evaluates.
    """

    linked_to_model = {"img_size": "parse"}

    def __init__(
        self,
        root: str,
        num_classes: Optional[int] = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: Optional[str] = None,
        img_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 8,
        pin_memory: bool = True,
        scale: tuple[float, float] = (0.08, 1.0),
        hflip: float = 0.5,
        auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
        re_prob: float = 0.25,
        re_mode: str = "pixel",
        re_count: int = 1,
        interpolation: str = "bicubic",
        crop_pct: float = 0.875,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        on_bad_file: BadFilePolicy = DEFAULT_ON_BAD_FILE,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore="num_classes")  # the model's num_classes is linked from the resolved value
        self.root = Path(root)
        self.class_source = first_split_folder(self.root, (train_split, val_split, test_split))
        self.classes = class_folders(self.class_source)
        if num_classes is not None and num_classes != len(self.classes):
            raise ValueError(
                f"data.num_classes={num_classes} but {self.class_source} has {len(self.classes)} class folders"
            )
        self.num_classes = len(self.classes)
        self.batch_size = batch_size

    def build_split(self, split: Split) -> SkippingDataset:
        hp = self.hparams
        folder = {"train": hp.train_split, "val": hp.val_split, "test": hp.test_split or hp.val_split}[split]
        training = split == "train"
        classes = class_folders(self.root / folder)
        if classes != self.classes:
            raise ValueError(
                f"{self.root / folder} classes differ from {self.class_source}: "
                f"{sorted(set(classes) ^ set(self.classes))[:10]}"
            )
        transform = create_transform(
            hp.img_size, is_training=training, scale=tuple(hp.scale), hflip=hp.hflip,
            auto_augment=hp.auto_augment if training else None,
            re_prob=hp.re_prob if training else 0.0, re_mode=hp.re_mode, re_count=hp.re_count,
            interpolation=hp.interpolation, crop_pct=hp.crop_pct,
            mean=hp.mean, std=hp.std,
        )
        dataset = ImageFolder(str(self.root / folder), transform=transform)
        return self.skipping(dataset, lambda i: dataset.samples[i][0])
