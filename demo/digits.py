"""A small real image set that ships with scikit-learn: the 1,797 8x8 handwritten digits, as an ImageFolder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image as PILImage


def make_digits_imagefolder(root: str | Path, size: int = 32, val_fraction: float = 0.25, seed: int = 0) -> Path:
    """Write ``root/{train,val}/<digit>/<n>.png`` (grey scans upscaled to ``size``); a no-op when present.

    The split is stratified and fixed by ``seed`` so baseline and pathway runs see the same images.
    """
    from sklearn.datasets import load_digits

    root = Path(root)
    marker = root / ".complete"
    if marker.exists():
        return root
    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == label))
        n_val = int(round(len(indices) * val_fraction))
        for split, chosen in (("val", indices[:n_val]), ("train", indices[n_val:])):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] / 16.0 * 255).astype(np.uint8)
                PILImage.fromarray(pixels, mode="L").resize((size, size), PILImage.BICUBIC).convert("RGB").save(
                    folder / f"{i:04d}.png"
                )
    marker.touch()
    return root
