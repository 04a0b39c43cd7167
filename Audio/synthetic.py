"""A small, deterministic folder-per-class set of synthetic sounds (tones, chirps, AM tones, noise bursts, clicks).

It stands in for real audio in the CPU demo, the tests and the benchmarks (as the "other modality" data): the
classes differ clearly in their spectrograms, every clip gets random pitch/onset/gain jitter, and the same seed
always writes the same files.  Layout: ``root/train/<class>/NNNN.wav`` and ``root/val/<class>/NNNN.wav``
(16-bit PCM).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np
import soundfile as sf

Generator = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def _sine(t: np.ndarray, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    return np.sin(2 * np.pi * rng.uniform(low, high) * t + rng.uniform(0, 2 * np.pi))


def _chirp(t: np.ndarray, start: float, stop: float) -> np.ndarray:
    duration = max(float(t[-1]), 1e-3)
    return np.sin(2 * np.pi * (start * t + (stop - start) * t ** 2 / (2 * duration)))


def _am_tone(t: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    envelope = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(4, 8) * t))
    return envelope * _sine(t, 900, 1100, rng)


def _noise_bursts(t: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros_like(t)
    burst = int(0.1 * rate)
    for _ in range(3):
        start = int(rng.integers(0, max(1, t.size - burst)))
        out[start:start + burst] = rng.standard_normal(min(burst, t.size - start)) * 0.5
    return out


def _clicks(t: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros_like(t)
    out[:: max(1, int(rate / rng.uniform(10, 20)))] = 1.0
    return out


SOUNDS: dict[str, Generator] = {
    "tone_low": lambda t, rate, rng: _sine(t, 200, 300, rng),
    "tone_mid": lambda t, rate, rng: _sine(t, 700, 900, rng),
    "tone_high": lambda t, rate, rng: _sine(t, 2000, 2600, rng),
    "chirp_up": lambda t, rate, rng: _chirp(t, rng.uniform(250, 350), rng.uniform(2800, 3200)),
    "chirp_down": lambda t, rate, rng: _chirp(t, rng.uniform(2800, 3200), rng.uniform(250, 350)),
    "am_tone": _am_tone,
    "noise_burst": _noise_bursts,
    "click_train": _clicks,
}


def _write_split(split_dir: Path, classes: Sequence[str], count: int, num_samples: int, sample_rate: int,
                 rng: np.random.Generator) -> None:
    t = np.arange(num_samples) / sample_rate
    for name in classes:
        class_dir = split_dir / name
        class_dir.mkdir(parents=True)
        for i in range(count):
            clip = SOUNDS[name](t, sample_rate, rng) * rng.uniform(0.3, 0.8)
            clip = np.roll(clip, int(rng.integers(0, num_samples // 4)))
            clip = clip + rng.standard_normal(num_samples) * 0.01
            sf.write(class_dir / f"{i:04d}.wav", np.clip(clip, -1, 1).astype(np.float32), sample_rate, subtype="PCM_16")


def make_tone_dataset(
    root: Union[str, os.PathLike],
    classes: Optional[Sequence[str]] = None,
    per_class: int = 20,
    seconds: float = 1.0,
    sample_rate: int = 16000,
    seed: int = 0,
    val_per_class: Optional[int] = None,
) -> Path:
    """Write ``per_class`` training and ``val_per_class`` (default ``max(1, per_class // 4)``) validation clips
    per class.

    ``classes`` picks from ``SOUNDS`` (default: all eight).  The tree is built in a temporary sibling folder and
    renamed into place, so concurrent callers (DDP ranks) never see a half-written set; an existing ``root`` is
    left untouched and returned.
    """
    root = Path(root)
    classes = list(SOUNDS) if classes is None else list(classes)
    unknown = [c for c in classes if c not in SOUNDS]
    if unknown or not classes:
        raise ValueError(f"unknown synthetic sound class(es) {unknown or classes}; choose from {list(SOUNDS)}")
    if per_class < 1 or seconds <= 0:
        raise ValueError(f"per_class must be >= 1 and seconds > 0, got {per_class} and {seconds}")
    if root.exists():
        return root
    val_per_class = max(1, per_class // 4) if val_per_class is None else val_per_class
    num_samples = int(round(seconds * sample_rate))
    rng = np.random.default_rng(seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        _write_split(staging / "train", classes, per_class, num_samples, sample_rate, rng)
        _write_split(staging / "val", classes, val_per_class, num_samples, sample_rate, rng)
        os.rename(staging, root)
    except OSError:
        if not root.exists():
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return root
