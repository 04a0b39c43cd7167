"""A tiny synthetic video classification set written with PyAV, for tests, the CPU demo and benchmarks.

Each class is a direction of motion: a coloured square drifts across a noisy background along that class's
direction (wrapping around the borders), so a class is only recognisable from motion, not from one frame.
The set is laid out in both supported formats at once: ``<root>/<split>/<class>/<name>.mp4`` (folder-per-class)
and ``<root>/<split>.csv`` list files with ``<relative path> <label>`` lines.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np

SPLITS: tuple[str, ...] = ("train", "val", "test")


def _moving_square(
    rng: np.random.Generator, direction: float, frames: int, height: int, width: int, speed: float
) -> np.ndarray:
    """``(frames, height, width, 3)`` uint8: one square moving ``speed`` pixels per frame along ``direction``."""
    side = max(2, min(height, width) // 4)
    colour = rng.integers(128, 256, size=3, dtype=np.uint8)
    start = rng.uniform(0, 1, size=2) * (width, height)
    step = speed * np.array([math.cos(direction), math.sin(direction)])
    video = rng.integers(0, 48, size=(frames, height, width, 3), dtype=np.uint8)
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    for t in range(frames):
        x, y = start + t * step
        inside_x = (cols - int(x)) % width < side
        inside_y = (rows - int(y)) % height < side
        video[t][inside_y & inside_x] = colour
    return video


def write_video(path: Union[str, os.PathLike], video: np.ndarray, fps: int = 25, gop_size: int = 12) -> None:
    """Write ``(T, H, W, 3)`` uint8 RGB frames as an H.264 mp4 (even H and W, as yuv420p requires)."""
    import av

    frames, height, width, _ = video.shape
    if height % 2 or width % 2:
        raise ValueError(f"{path}: H.264/yuv420p needs even frame sizes, got {height}x{width}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop_size
        stream.options = {"preset": "ultrafast", "bf": "0"}
        for t in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(video[t]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def make_video_dataset(
    root: Union[str, os.PathLike],
    classes: Union[int, Sequence[str]] = 4,
    per_class: int = 4,
    frames: int = 40,
    size: Union[int, tuple[int, int]] = 32,
    fps: int = 25,
    seed: int = 0,
    splits: Sequence[str] = SPLITS,
) -> list[str]:
    """Write ``per_class`` videos per class for each split under ``root`` and the ``<split>.csv`` list files.

    ``classes`` is a number of classes or their names; class ``k`` moves along angle ``2πk/len(classes)``.
    ``size`` is the frame side or ``(height, width)`` (both even).
    Returns the class names (label ``k`` is ``names[k]``).
    """
    names = [f"class_{k}" for k in range(classes)] if isinstance(classes, int) else list(classes)
    if len(names) < 1 or per_class < 1 or frames < 1:
        raise ValueError("make_video_dataset needs at least one class, one video per class and one frame")
    height, width = (size, size) if isinstance(size, int) else size
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split in splits:
        lines = []
        for label, name in enumerate(names):
            direction = 2 * math.pi * label / len(names)
            for i in range(per_class):
                relative = Path(split) / name / f"{name}_{i:03d}.mp4"
                speed = rng.uniform(0.05, 0.1) * min(height, width)
                video = _moving_square(rng, direction, frames, height, width, speed)
                write_video(root / relative, video, fps=fps)
                lines.append(f"{relative.as_posix()} {label}\n")
        (root / f"{split}.csv").write_text("".join(lines))
    return names
