"""ImageFolder train/val data with timm's train/eval transforms; unreadable images are skipped and counted."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image
from timm.data import create_transform
from torchvision.datasets import ImageFolder

from pathway.data import (
    DEFAULT_MAX_BAD_FRACTION, DEFAULT_ON_BAD_FILE, BadFilePolicy, BadSampleError, SkippingDataset, Split,
    SplitDataModule, class_folders, first_split_folder,
)

log = logging.getLogger(__name__)

# Modes Pillow opens 16-bit grayscale files in (PNG, TIFF); 16-bit RGB(A) files already open as 8-bit RGB(A).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageFileError(BadSampleError, ValueError):
    """An image file that cannot be decoded into RGB; the message names the file and the reason."""


def _to_rgb(image: Image.Image, path: str) -> Image.Image:
    """``image`` as 8-bit RGB, scaling 16-bit grayscale by its bit depth (``convert`` would clip it to white).

    Pillow older than 10 opens 16-bit grayscale PNGs as mode ``I``; PNG has no deeper integer format, so ``I`` from
    a PNG is 16-bit too.  Other 32-bit integer or float images have no bit depth to scale by: refused.
    """
    if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG"):
        values = np.asarray(image, dtype=np.uint32)
        return Image.fromarray(((values + 128) // 257).astype(np.uint8)).convert("RGB")  # 2-D uint8: mode L
    if image.mode in ("I", "F"):
        raise ImageFileError(f"{path}: {image.format} image of mode {image.mode} (32-bit integer or float pixels) "
                             "has no bit depth to scale to 8-bit RGB by; convert it to 8- or 16-bit first")
    return image.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    """The ImageFolder loader: an 8-bit RGB image, or an ``ImageFileError`` naming ``path``.

    Pillow's decompression-bomb guard stays on: an image of more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels
    is refused (a sample, skipped or stopping the run by ``on_bad_file``) instead of being decoded.
    """
    try:
        with Image.open(path) as image:
            return _to_rgb(image, path)
    except ImageFileError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageFileError(f"{path}: {err} (Pillow's limit: PIL.Image.MAX_IMAGE_PIXELS = "
                             f"{Image.MAX_IMAGE_PIXELS}, refused above twice that)") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # what Pillow raises on corrupt or truncated files
        raise ImageFileError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err


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
        dataset = ImageFolder(str(self.root / folder), transform=transform, loader=load_rgb)
        return self.skipping(dataset, lambda i: dataset.samples[i][0])
