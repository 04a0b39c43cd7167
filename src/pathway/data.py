"""Data-loading pieces shared by the modalities: skipping unreadable samples without killing an epoch."""
from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any, Optional

import lightning as L
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

log = logging.getLogger(__name__)


class BadSampleError(RuntimeError):
    """A sample file that cannot be read or decoded; the message names the file.

    Modality readers raise (subclasses of) this for bad files, so that ``SkippingDataset`` can skip exactly those
    and let every other exception, e.g. a bug in an augmentation, stop the run instead of being counted as a bad file.
    """


class SkippingDataset(Dataset):
    """Wraps a dataset whose ``__getitem__`` may raise one of ``read_errors`` on a bad file.

    With ``on_bad_file='skip'`` the failure is logged with its path, counted (a counter shared with the
    DataLoader workers) and the item becomes ``None``, which ``collate_skipping_none`` drops; with ``'error'``
    it raises a ``BadSampleError`` naming the file.
    """

    def __init__(
        self,
        dataset: Dataset,
        describe: Callable[[int], str],
        on_bad_file: str = "skip",
        read_errors: tuple[type[BaseException], ...] = (BadSampleError, OSError),
    ) -> None:
        if on_bad_file not in ("skip", "error"):
            raise ValueError(f"on_bad_file must be 'skip' or 'error', got {on_bad_file!r}")
        self.read_errors = read_errors
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
        except self.read_errors as err:
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


class SplitDataModule(L.LightningDataModule):
    """The loader side every modality shares: ``setup`` fills ``train_set``/``val_set``/``test_set``; this class
    turns them into DataLoaders (shuffle + drop_last in training, bad samples dropped by ``collate_skipping_none``)
    and counts skipped samples.  Subclasses adjust a loader through ``loader_kwargs``.

    Expects ``batch_size``, ``num_workers`` and ``pin_memory`` among the subclass's saved hyper-parameters.
    """

    def loader_kwargs(self, train: bool) -> dict[str, Any]:
        """Extra or overriding DataLoader arguments (e.g. an eval batch size, a worker_init_fn)."""
        return {}

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        hp = self.hparams
        kwargs: dict[str, Any] = dict(
            batch_size=hp.batch_size, shuffle=train, drop_last=train, num_workers=hp.num_workers,
            pin_memory=hp.pin_memory, persistent_workers=hp.num_workers > 0, collate_fn=collate_skipping_none,
        )
        kwargs.update(self.loader_kwargs(train))
        return DataLoader(dataset, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def skipped(self) -> int:
        """Unreadable samples skipped so far, over all splits and workers."""
        return sum(getattr(getattr(self, name), "skipped", 0)
                   for name in ("train_set", "val_set", "test_set") if hasattr(self, name))
