"""Which frames of a video make up a clip: dense sampling of ``num_frames`` frames ``sampling_rate`` apart.

Training takes a random window, validation the centred one, and the multi-view test ``num_clips`` windows spread
evenly from the first to the last possible start.  A video shorter than the window is read from its first frame and
padded by repeating its last frame, so every clip has exactly ``num_frames`` frames.
"""
from __future__ import annotations

import random
from typing import Literal, Optional

Mode = Literal["train", "val", "test"]


def clip_span(num_frames: int, sampling_rate: int) -> int:
    """Number of video frames a clip covers, first to last sampled frame inclusive."""
    return (num_frames - 1) * sampling_rate + 1


def clip_indices(
    video_frames: int,
    num_frames: int,
    sampling_rate: int,
    mode: Mode,
    clip_index: int = 0,
    num_clips: int = 1,
    rng: Optional[random.Random] = None,
) -> list[int]:
    """The ``num_frames`` frame indices of one clip, each in ``[0, video_frames)``.

    The window starts at random (train), centred (val) or at the ``clip_index``-th of ``num_clips`` evenly spaced
    starts (test); it never starts before 0 nor ends after the video when the video is long enough.
    """
    if video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {video_frames}")
    if num_frames < 1 or sampling_rate < 1:
        raise ValueError(f"num_frames and sampling_rate must be >= 1, got {num_frames} and {sampling_rate}")
    slack = max(0, video_frames - clip_span(num_frames, sampling_rate))
    if mode == "train":
        start = (rng or random).randint(0, slack)
    elif mode == "val":
        start = slack // 2
    elif mode == "test":
        if not 0 <= clip_index < num_clips:
            raise ValueError(f"clip_index {clip_index} out of range for {num_clips} test clips")
        start = slack // 2 if num_clips == 1 else round(clip_index * slack / (num_clips - 1))
    else:
        raise ValueError(f"unknown sampling mode {mode!r}; expected 'train', 'val' or 'test'")
    return [min(start + i * sampling_rate, video_frames - 1) for i in range(num_frames)]
