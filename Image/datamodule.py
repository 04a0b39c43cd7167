"""ImageFolder train/val data with timm's train/eval transforms; unreadable images are skipped and counted."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from timm.data import create_transform
from torchvision.datasets import ImageFolder

from pathway.data import SkippingDataset, SplitDataModule

log = logging.getLogger(__name__)


def _class_folders(path: Path) -> list[str]:
    if not path.is_dir():
        raise FileNotFoundError(f"image split folder {path} does not exist (expected {path}/<class>/<image>)")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"image split folder {path} has no class sub-folders")
    return classes


class ImageDataModule(SplitDataModule):
    """``root/<train_split>/<class>/*`` and ``root/<val_split>/<class>/*`` (the ImageNet layout).

    Args:
        num_classes: checked against the class folders when given; otherwise taken from them.
        scale / hflip: random-resized-crop area range and horizontal-flip probability (training).
        auto_augment: timm RandAugment spec for training (paper: ``rand-m9-mstd0.5-inc1``).
        re_prob: random-erasing probability (training).
        crop_pct: eval centre-crop fraction.
        on_bad_file: ``skip`` (log + count) or ``error`` for unreadable images.
    """

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
        interpolation: str = "bicubic",
        crop_pct: float = 0.875,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        on_bad_file: str = "skip",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore="num_classes")  # the model's num_classes is linked from the resolved value
        self.root = Path(root)
        self.classes = _class_folders(self.root / train_split)
        if num_classes is not None and num_classes != len(self.classes):
            raise ValueError(
                f"data.num_classes={num_classes} but {self.root / train_split} has {len(self.classes)} class folders"
            )
        self.num_classes = len(self.classes)
        self.batch_size = batch_size

    def _dataset(self, split: str, training: bool) -> SkippingDataset:
        hp = self.hparams
        classes = _class_folders(self.root / split)
        if classes != self.classes:
            raise ValueError(
                f"{self.root / split} classes differ from {self.root / hp.train_split}: "
                f"{sorted(set(classes) ^ set(self.classes))[:10]}"
            )
        transform = create_transform(
            hp.img_size, is_training=training, scale=tuple(hp.scale), hflip=hp.hflip,
            auto_augment=hp.auto_augment if training else None,
            re_prob=hp.re_prob if training else 0.0, interpolation=hp.interpolation, crop_pct=hp.crop_pct,
            mean=hp.mean, std=hp.std,
        )
        dataset = ImageFolder(str(self.root / split), transform=transform)
        return SkippingDataset(dataset, lambda i: dataset.samples[i][0], hp.on_bad_file)

    def setup(self, stage: Optional[str] = None) -> None:
        hp = self.hparams
        if stage in (None, "fit"):
            self.train_set = self._dataset(hp.train_split, training=True)
        if stage in (None, "fit", "validate"):
            self.val_set = self._dataset(hp.val_split, training=False)
        if stage in (None, "test", "predict"):
            self.test_set = self._dataset(hp.test_split or hp.val_split, training=False)
