"""Clip sampling: which frames a training / validation / test clip reads, and the spatial test crops."""
from __future__ import annotations

import random

import numpy as np
import pytest

from Video.sampling import clip_indices, clip_span
from Video.transforms import EvalClipTransform, spatial_crop_offsets


def test_train_windows_are_random_and_inside_the_video() -> None:
    rng = random.Random(0)
    starts = set()
    for _ in range(200):
        idx = clip_indices(100, num_frames=16, sampling_rate=4, mode="train", rng=rng)
        assert len(idx) == 16
        assert idx[0] >= 0 and idx[-1] <= 99
        assert np.all(np.diff(idx) == 4)
        starts.add(idx[0])
    assert starts == set(range(0, 100 - clip_span(16, 4) + 1))  # every legal start (0..39) is drawn


def test_val_window_is_centred() -> None:
    idx = clip_indices(100, 16, 4, "val")
    span = clip_span(16, 4)
    assert idx == list(range((100 - span) // 2, (100 - span) // 2 + span, 4))
    assert abs(idx[0] - (99 - idx[-1])) <= 1  # as many frames before the window as after it


def test_test_clips_spread_from_first_to_last_window() -> None:
    starts = [clip_indices(100, 16, 4, "test", clip_index=k, num_clips=5)[0] for k in range(5)]
    assert starts == [0, 10, 20, 29, 39]  # 39 = last legal start; spacing 39/4
    assert clip_indices(100, 16, 4, "test", clip_index=4, num_clips=5)[-1] == 99
    assert clip_indices(100, 16, 4, "test", clip_index=0, num_clips=1) == clip_indices(100, 16, 4, "val")
    with pytest.raises(ValueError, match="clip_index 5 out of range"):
        clip_indices(100, 16, 4, "test", clip_index=5, num_clips=5)


@pytest.mark.parametrize("mode", ["train", "val", "test"])
def test_short_video_is_padded_by_repeating_its_last_frame(mode: str) -> None:
    idx = clip_indices(10, num_frames=8, sampling_rate=4, mode=mode, clip_index=1, num_clips=3)
    assert idx == [0, 4, 8, 9, 9, 9, 9, 9]


def test_bad_arguments_are_errors() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        clip_indices(0, 16, 4, "val")
    with pytest.raises(ValueError, match="unknown sampling mode"):
        clip_indices(50, 16, 4, "eval")  # type: ignore[arg-type]


def test_three_spatial_crops_cover_both_ends_and_the_centre() -> None:
    assert spatial_crop_offsets(298, 224, 3) == [0, 37, 74]
    assert spatial_crop_offsets(298, 224, 1) == [37]
    frames = np.zeros((2, 8, 12, 3), dtype=np.uint8)
    frames[:, :, :, 0] = np.arange(12, dtype=np.uint8)  # red channel = column index
    transform = EvalClipTransform(img_size=8, num_crops=3, mean=(0, 0, 0), std=(1 / 255, 1, 1))
    left_columns = [transform(frames, crop_index=k)[0, 0, 0, 0].item() for k in range(3)]
    assert left_columns == [0, 2, 4]
