"""Data-loading pieces shared by the modalities: skipping unreadable samples without killing an epoch."""
from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any, Optional

from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

log = logging.getLogger(__name__)


class BadSampleError(RuntimeError):
    """A sample file that cannot be decoded; the message names the file."""


class SkippingDataset(Dataset):
    """Wraps a dataset whose ``__getitem__`` may raise on a bad file.

    With ``on_bad_file='skip'`` the failure is logged with its path, counted (a counter shared with the
    DataLoader workers) and the item becomes ``None``, which ``collate_skipping_none`` drops; with ``'error'``
    it raises a ``BadSampleError`` naming the file.
    """

    def __init__(self, dataset: Dataset, describe: Callable[[int], str], on_bad_file: str = "skip") -> None:
        if on_bad_file not in ("skip", "error"):
            raise ValueError(f"on_bad_file must be 'skip' or 'error', got {on_bad_file!r}")
        self.dataset = dataset
        self.describe = describe
        self.on_bad_file = on_bad_file
        self._skipped = multiprocessing.Value("i", 0)

    @property
    def skipped(self) -> int:
        return int(self._skipped.value)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Optional[Any]:
        try:
            return self.dataset[index]
        except Exception as err:
            if self.on_bad_file == "error":
                raise BadSampleError(f"{self.describe(index)}: cannot be read ({err})") from err
            with self._skipped.get_lock():
                self._skipped.value += 1
            log.warning("skipping unreadable sample %s (%s)", self.describe(index), err)
            return None

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def collate_skipping_none(batch: Sequence[Any]) -> Optional[Any]:
    """``default_collate`` over the items that loaded; ``None`` when none did (the steps skip such a batch)."""
    items = [item for item in batch if item is not None]
    return default_collate(items) if items else None
