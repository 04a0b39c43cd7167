"""Data-loading pieces every modality shares: the split/loader contract, class folders, and bad-file handling.

Bad files.  A reader raises ``BadSampleError`` (naming the file) for a file it cannot use.  ``SkippingDataset``
turns that into a hard error (``on_bad_file='error'``) or a skip (``'skip'``, ``DEFAULT_ON_BAD_FILE`` in every
modality: a days-long run should not die on one corrupt file among millions): the file is logged once (per DDP
rank, shared with the DataLoader workers; not again every epoch) and counted.  In training the item is replaced by
the next readable one of the split, so every batch keeps its size and no rank is ever left without a batch (under
DDP a rank whose batch were empty would skip a step the others take, and the gradient all-reduce would wait
forever); in evaluation the item becomes ``None`` and the collate drops it, so no sample is scored twice.  A skip
never hides a broken data set:

* ``MAX_CONSECUTIVE_BAD`` unreadable samples in a row stop the run at once (a wrong root, an unmounted disk);
* at the end of every epoch ``BadSampleMonitor`` logs ``data/<split>_skipped`` and stops the run when the epoch
  had no readable sample, or when the unreadable fraction passes ``max_bad_fraction``
  (``DEFAULT_MAX_BAD_FRACTION`` = 5%: a few corrupt files are normal in a large video or audio copy; losing more
  than one in twenty means the copy or the list is wrong, and the results would not be comparable).

Resuming.  The training loader is torchdata's ``StatefulDataLoader``, whose position Lightning saves in checkpoints
and restores, so a run resumed mid-epoch continues the epoch where it stopped instead of starting its data order
again.  ``SkippingDataset`` is stateful too: its state is the random state of the process that loads it (each
DataLoader worker's, captured after each batch), so augmentations resume the interrupted run's random streams.
"""
from __future__ import annotations

import atexit
import functools
import json
import logging
import math
import multiprocessing
import multiprocessing.util
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar, Union

import lightning as L
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torch.utils.data._utils.collate import default_collate
from torchdata.stateful_dataloader import StatefulDataLoader

from pathway.random_state import get_random_state, set_random_state

log = logging.getLogger(__name__)

BadFilePolicy = Literal["skip", "error"]
DEFAULT_ON_BAD_FILE: BadFilePolicy = "skip"
DEFAULT_MAX_BAD_FRACTION = 0.05
MAX_CONSECUTIVE_BAD = 20
Split = Literal["train", "val", "test"]
STAGE_SPLITS: dict[str, tuple[Split, ...]] = {
    "fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",),
}
T = TypeVar("T")
# ``extra=`` of a log record about a file this rank read: the DDP ranks read different files, so such a record is
# printed on every rank (prefixed with the rank), where the run's other lines are printed on rank 0 only.
EVERY_RANK_KEY = "every_rank"
EVERY_RANK = {EVERY_RANK_KEY: True}


class BadSampleError(RuntimeError):
    """A sample file that cannot be read or decoded; the message names the file.

    Modality readers raise (subclasses of) this for bad files, so that ``SkippingDataset`` can skip exactly those
    and let every other exception, e.g. a bug in an augmentation, stop the run instead of being counted as a bad file.
    """


class BadDataError(RuntimeError):
    """The data as a whole is unusable (too many unreadable files, a split smaller than one batch): stop the run."""


def read_json(path: Union[str, os.PathLike], what: str, invalid: type[Exception],
              missing: type[Exception] = FileNotFoundError) -> Any:
    """The parsed JSON file ``path``; a missing file raises ``missing``, an unparsable one ``invalid``, both naming
    the file (as a ``what``)."""
    path = Path(path)
    if not path.is_file():
        raise missing(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise invalid(f"{path}: not valid JSON ({err})") from err


def class_folders(split_dir: Union[str, os.PathLike]) -> list[str]:
    """Sorted class folder names of a folder-per-class split (hidden folders ignored); label ``k`` is name ``k``."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: split folder not found (expected {split_dir}/<class>/<file>)")
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise FileNotFoundError(f"{split_dir}: no class sub-folders (expected {split_dir}/<class>/<file>)")
    return names


def first_split_folder(root: Union[str, os.PathLike], splits: Sequence[Optional[str]]) -> Path:
    """The first of ``root/<split>`` that exists, so that evaluating needs only the split it evaluates."""
    candidates = [Path(root) / s for s in dict.fromkeys(s for s in splits if s)]
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"none of the split folders {[str(c) for c in candidates]} exists")


def log_progress(items: Iterable[T], total: int, what: str, every_s: float = 10.0) -> Iterator[T]:
    """Yields ``items``, logging ``what: done/total (pct)`` at most every ``every_s`` seconds and at the end.

    Log lines (not a redrawn bar) so that progress stays readable in a SLURM ``.out`` file.
    """
    last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if done == total or now - last >= every_s:
            log.info("%s: %d/%d (%.0f%%)", what, done, total, 100.0 * done / max(total, 1))
            last = now


class SkippingDataset(Dataset):
    """Wraps a dataset whose ``__getitem__`` may raise one of ``read_errors`` on a bad file.

    With ``on_bad_file='skip'`` the file is logged once and counted in counters shared with the DataLoader workers,
    and the item becomes ``None`` (dropped by ``collate_skipping_none``) or, once ``replace_unreadable(split)`` was
    called (training), the next readable item of the dataset.  ``MAX_CONSECUTIVE_BAD`` failures in a row raise
    ``BadDataError``.  With ``'error'`` a bad file raises a ``BadSampleError`` naming it.

    ``state_dict``/``load_state_dict`` (torchdata's ``Stateful``) hold the random state of the process that reads
    the items: a ``StatefulDataLoader`` asks each worker for it after every batch and gives it back to the worker
    on resume, so random augmentations continue the interrupted run's streams.

    Args:
        describe: item index -> the file behind it (for messages).
        items_per_file: items that come from one file (multi-view test sets), so each file is logged once.
    """

    def __init__(
        self,
        dataset: Dataset,
        describe: Callable[[int], str],
        on_bad_file: BadFilePolicy = DEFAULT_ON_BAD_FILE,
        read_errors: tuple[type[BaseException], ...] = (BadSampleError, OSError),
        items_per_file: int = 1,
    ) -> None:
        if on_bad_file not in ("skip", "error"):
            raise ValueError(f"on_bad_file must be 'skip' or 'error', got {on_bad_file!r}")
        self.on_bad_file = on_bad_file
        self.read_errors = read_errors
        self.dataset = dataset
        self.describe = describe
        self.items_per_file = items_per_file
        self._counts = multiprocessing.Array("q", 3)  # items fetched, items skipped, skipped in a row
        self._logged = multiprocessing.RawArray("b", max(1, math.ceil(len(self) / items_per_file)))  # per file
        self._epoch_start = (0, 0)
        self._replacing_in: Optional[str] = None

    def replace_unreadable(self, split: str) -> None:
        """Replace an unreadable item by the next readable one (``split`` names the data in errors)."""
        self._replacing_in = split

    def state_dict(self) -> dict[str, Any]:
        return {"random": get_random_state(include_cuda=False)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_random_state(state["random"])

    @property
    def fetched(self) -> int:
        return int(self._counts[0])

    @property
    def skipped(self) -> int:
        return int(self._counts[1])

    def epoch_counts(self) -> tuple[int, int]:
        """``(fetched, skipped)`` since the previous call: the epoch that just ended, over all workers."""
        now = (self.fetched, self.skipped)
        fetched, skipped = now[0] - self._epoch_start[0], now[1] - self._epoch_start[1]
        self._epoch_start = now
        return fetched, skipped

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Optional[Any]:
        with self._counts.get_lock():
            self._counts[0] += 1
        for attempt in range(len(self) if self._replacing_in else 1):
            candidate = (index + attempt) % len(self)
            try:
                item = self.dataset[candidate]
            except self.read_errors as err:
                if self.on_bad_file == "error":
                    raise BadSampleError(f"{self.describe(candidate)}: cannot be read ({err})") from err
                self._skip(candidate, err, counted=attempt == 0)
                continue
            with self._counts.get_lock():
                self._counts[2] = 0
            return item
        if self._replacing_in:
            raise BadDataError(f"the {self._replacing_in} split had no readable sample: all {len(self)} items "
                               "unreadable; see the 'skipping unreadable sample' lines above")
        return None

    def _skip(self, index: int, err: BaseException, counted: bool) -> None:
        """``counted``: ``index`` is the sample asked for, not a replacement tried for it (that one is counted when
        it is asked for itself), so the skipped fraction stays the fraction of unreadable samples."""
        with self._counts.get_lock():
            self._counts[1] += counted
            self._counts[2] += 1
            in_a_row = int(self._counts[2])
        file = index // self.items_per_file
        if not self._logged[file]:
            self._logged[file] = 1
            log.warning("skipping unreadable sample %s (%s)", self.describe(index), err, extra=EVERY_RANK)
        if in_a_row >= MAX_CONSECUTIVE_BAD:
            raise BadDataError(
                f"{in_a_row} unreadable samples in a row (last: {self.describe(index)}: {err}); "
                "is the data root right?"
            )

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def collate_skipping_none(batch: Sequence[Any]) -> Optional[Any]:
    """``default_collate`` over the items that loaded; ``None`` when none did (an evaluation batch of unreadable
    files, which the eval steps skip; training items are replaced, never ``None``)."""
    items = [item for item in batch if item is not None]
    return default_collate(items) if items else None


def init_loader_worker(worker_id: int, rank: int, seed_workers: bool) -> None:
    """A DataLoader worker leaves SIGTERM and SIGUSR1 to the main process, then seeds itself as Lightning does.

    SLURM signals every process of a job step (the time limit's and a preemption's SIGTERM, ``--signal`` USR1 for the
    requeue); a worker that such a signal ended would make the main process fail ("DataLoader worker killed by
    signal") instead of writing its checkpoint.  The main process ends its workers itself, and a worker ends on its
    own when the main process is gone.  ``seed_workers``: ``seed_everything(workers=True)`` was called, whose
    ``pl_worker_init_function`` Lightning adds only to a loader without a ``worker_init_fn``.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if seed_workers:
        pl_worker_init_function(worker_id, rank)


def _kill_loader_workers() -> None:
    """At exit, ``multiprocessing`` ends its daemonic children (DataLoader workers) with SIGTERM and then waits for
    them, and ours ignore SIGTERM (``init_loader_worker``): a process whose persistent workers were still running at
    exit would wait forever.  Registered after ``multiprocessing.util``'s own exit hook, this one runs first and ends
    them with SIGKILL, which for a daemonic child is the same end as the SIGTERM it would otherwise get."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join()


atexit.register(_kill_loader_workers)


class WeightedDistributedSampler(DistributedSampler):
    """``num_samples`` indices per epoch drawn by weight (``torch.multinomial``), sharded over DDP ranks.

    Every rank draws the same global list from a generator seeded by ``seed + epoch`` (Lightning calls
    ``set_epoch``), pads it to a multiple of the world size by repeating its head, and keeps every
    ``num_replicas``-th index from its rank on, as ``DistributedSampler`` does: the ranks see disjoint parts of one
    weighted draw.  Being a ``DistributedSampler``, Lightning uses it as is instead of wrapping it.
    """

    def __init__(
        self,
        weights: torch.Tensor,
        num_samples: int,
        num_replicas: int = 1,
        rank: int = 0,
        replacement: bool = False,
        seed: int = 0,
    ) -> None:
        weights = torch.as_tensor(weights, dtype=torch.double)
        if weights.ndim != 1 or not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("sample weights must be a 1-D vector of finite, non-negative numbers")
        if not replacement and num_samples > int((weights > 0).sum()):
            raise ValueError(f"cannot draw {num_samples} samples without replacement from "
                             f"{int((weights > 0).sum())} with a non-zero weight")
        super().__init__(range(len(weights)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.weights = weights
        self.replacement = replacement
        self.num_samples = math.ceil(num_samples / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.draws = num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = torch.multinomial(self.weights, self.draws, self.replacement, generator=generator).tolist()
        indices += indices[: self.total_size - len(indices)]
        return iter(indices[self.rank:self.total_size:self.num_replicas])


class SplitDataModule(L.LightningDataModule):
    """The loader side every modality shares.

    A subclass provides ``build_split(split)`` (a ``SkippingDataset``, see ``skipping``) and keeps among its saved
    hyper-parameters ``batch_size``, ``num_workers``, ``pin_memory``, ``on_bad_file`` and ``max_bad_fraction``.
    ``setup(stage)`` builds only the splits the stage needs (``STAGE_SPLITS``: fit trains and validates, validate
    needs ``val``, test and predict need ``test``), and attaches ``BadSampleMonitor`` to the trainer.  Loaders
    shuffle and drop the last partial batch in training and drop unreadable samples; a subclass adjusts a loader
    through ``loader_kwargs`` and may give a training ``sampler`` through ``train_sampler``.
    """

    train_set: Optional[Dataset] = None
    val_set: Optional[Dataset] = None
    test_set: Optional[Dataset] = None

    def build_split(self, split: Split) -> Dataset:
        """The dataset of one split, wrapped by ``skipping``."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_split()")

    def skipping(self, dataset: Dataset, describe: Callable[[int], str], **kwargs: Any) -> SkippingDataset:
        """``dataset`` wrapped with this DataModule's ``on_bad_file`` policy (``kwargs`` as ``SkippingDataset``)."""
        return SkippingDataset(dataset, describe, self.hparams.on_bad_file, **kwargs)

    def setup(self, stage: Optional[str] = None) -> None:
        for split in STAGE_SPLITS.get(stage or "", ("train", "val", "test")):
            if getattr(self, f"{split}_set") is None:
                dataset = self.build_split(split)
                if split == "train" and isinstance(dataset, SkippingDataset):
                    dataset.replace_unreadable(split)
                setattr(self, f"{split}_set", dataset)
                log.info("%s split: %d samples", split, len(dataset))
        trainer = self.trainer
        if trainer is not None and not any(isinstance(c, BadSampleMonitor) for c in trainer.callbacks):
            trainer.callbacks.insert(0, BadSampleMonitor(self))  # first: stop before a checkpoint is written

    def loader_kwargs(self, train: bool) -> dict[str, Any]:
        """Extra or overriding DataLoader arguments (e.g. an eval batch size, a collate_fn)."""
        return {}

    def train_sampler(self) -> Optional[Sampler]:
        """A training sampler replacing shuffling (e.g. ``WeightedDistributedSampler``); ``None``: shuffle."""
        return None

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        """Training reads through a ``StatefulDataLoader``: Lightning checkpoints its position (see the module
        docstring)."""
        hp = self.hparams
        kwargs: dict[str, Any] = dict(
            batch_size=hp.batch_size, shuffle=train, drop_last=train, num_workers=hp.num_workers,
            pin_memory=hp.pin_memory, persistent_workers=hp.num_workers > 0, collate_fn=collate_skipping_none,
        )
        world, rank = self._world()
        kwargs["worker_init_fn"] = functools.partial(
            init_loader_worker, rank=rank, seed_workers=bool(int(os.environ.get("PL_SEED_WORKERS", 0))))
        sampler = self.train_sampler() if train else None
        if train and sampler is None and world > 1:
            # What Lightning would insert, given here so that it does not wrap the loader's own shuffling sampler in a
            # ``DistributedSamplerWrapper``, whose order comes from a generator no checkpoint holds.
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                         seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
        if sampler is not None:
            kwargs.update(sampler=sampler, shuffle=False)
        kwargs.update(self.loader_kwargs(train))
        if train:
            self._check_one_batch(dataset, sampler, kwargs["batch_size"])
            return StatefulDataLoader(dataset, **kwargs)
        # Starting an evaluation loader's workers draws their seed from this generator, not from the global one the
        # training steps use: a run resumed at an epoch's end starts its validation workers once more than the run
        # that was not interrupted, and must not draw differently from it.
        return DataLoader(dataset, generator=torch.Generator().manual_seed(0), **kwargs)

    def _check_one_batch(self, dataset: Dataset, sampler: Optional[Sampler], batch_size: int) -> None:
        world, _ = self._world()
        size = len(dataset)  # type: ignore[arg-type]
        per_device = len(sampler) if sampler is not None else math.ceil(size / world)  # type: ignore[arg-type]
        if per_device < batch_size:
            raise BadDataError(
                f"the train split has {size} samples ({per_device} per device on {world} device(s)), "
                f"fewer than data.batch_size={batch_size}: training drops the last partial batch, so no batch "
                "would be left; lower data.batch_size or use more data"
            )

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
        return sum(getattr(getattr(self, name), "skipped", 0) for name in ("train_set", "val_set", "test_set"))


class BadSampleMonitor(L.Callback):
    """At each epoch end: logs ``data/<split>_skipped`` (summed over ranks) and stops the run with ``BadDataError``
    when that epoch had no readable sample or more than ``data.max_bad_fraction`` unreadable ones.

    Every rank reaches the same verdict from the summed counts, so DDP stops on all ranks together.
    ``SplitDataModule.setup`` attaches it; it reads the counters of the DataModule's ``SkippingDataset``s.
    """

    def __init__(self, datamodule: SplitDataModule) -> None:
        self.datamodule = datamodule

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule, split: Split, log_metric: bool = True) -> None:
        dataset = getattr(self.datamodule, f"{split}_set", None)
        if not isinstance(dataset, SkippingDataset):
            return
        counts = torch.tensor(dataset.epoch_counts(), dtype=torch.float64, device=pl_module.device)
        if trainer.sanity_checking:
            return
        fetched, skipped = (int(v) for v in trainer.strategy.reduce(counts, reduce_op="sum").tolist())
        if log_metric:
            # Summed over ranks above; sync_dist=True only tells Lightning so (rank_zero_only skips its reduction).
            pl_module.log(f"data/{split}_skipped", float(skipped), on_epoch=True, rank_zero_only=True, sync_dist=True)
        if not skipped:
            return
        limit = self.datamodule.hparams.max_bad_fraction
        log.warning("%s split: %d of %d samples unreadable and skipped this epoch", split, skipped, fetched)
        if skipped == fetched:
            raise BadDataError(f"the {split} split had no readable sample this epoch ({skipped} unreadable); "
                               "see the 'skipping unreadable sample' lines above")
        if skipped > limit * fetched:
            raise BadDataError(
                f"the {split} split: {skipped} of {fetched} samples unreadable this epoch "
                f"({skipped / fetched:.1%}), more than data.max_bad_fraction={limit:g}; fix or remove the files "
                "logged as 'skipping unreadable sample', or raise data.max_bad_fraction"
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer, pl_module, "test")

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer, pl_module, "test", log_metric=False)
