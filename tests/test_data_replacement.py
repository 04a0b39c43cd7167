"""Training replaces an unreadable sample by the next readable one (``pathway.data``), so no batch is ever empty and
every DDP rank takes every step (the 2-process hang itself: tests/test_launch_ddp_demos.py); evaluation still drops
it, so no sample is scored twice."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from pathway.data import BadDataError, BadSampleError, SkippingDataset


class Numbers(Dataset):
    def __init__(self, size: int, bad: set[int]) -> None:
        self.size, self.bad = size, bad

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> torch.Tensor:
        if index in self.bad:
            raise BadSampleError(f"file{index}.bin: corrupt")
        return torch.tensor(index)


def test_training_replaces_unreadable_samples_by_the_next_readable_one() -> None:
    data = SkippingDataset(Numbers(6, {2, 3, 5}), lambda i: f"file{i}.bin")
    assert data[2] is None  # evaluation: dropped by the collate
    data.replace_unreadable("train")
    assert [int(data[i]) for i in range(6)] == [0, 1, 4, 4, 4, 0]  # wraps around at the end
    assert data.epoch_counts() == (7, 4)  # asked for and unreadable (not the replacements tried): 2, 2, 3, 5


def test_training_split_without_a_readable_sample_is_an_error() -> None:
    data = SkippingDataset(Numbers(4, {0, 1, 2, 3}), lambda i: f"file{i}.bin")
    data.replace_unreadable("train")
    with pytest.raises(BadDataError, match="the train split had no readable sample: all 4 items unreadable"):
        data[1]
