"""Small synthetic image-folder data sets for tests, benchmarks and smoke runs (no downloads).

``make_image_dataset`` writes the ``root/{train,val}/<class>/<n>.<suffix>`` layout ``Image.datamodule`` reads,
either uniform noise (cheapest to write) or smooth random colour textures with noise, which JPEG-decode at the
cost of photos of the same size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image


def random_image(rng: np.random.Generator, width: int, height: int, textured: bool = False) -> Image.Image:
    """An RGB image of noise or (``textured``) of a bicubic-upsampled 16x12 colour grid plus noise."""
    if not textured:
        return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-20, 20, (height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def make_image_dataset(root: Union[str, Path], classes: int = 3, per_class: int = 6, width: int = 16,
                       height: int = 16, textured: bool = False, suffix: str = ".png") -> Path:
    """``root/{train,val}/class<c>/<n><suffix>`` with ``per_class`` images per class and split (seeded);
    ``.jpg`` files are saved at quality 90."""
    root = Path(root)
    rng = np.random.default_rng(0)
    options = {"quality": 90} if suffix == ".jpg" else {}
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(per_class):
                random_image(rng, width, height, textured).save(folder / f"{n:04d}{suffix}", **options)
    return root
