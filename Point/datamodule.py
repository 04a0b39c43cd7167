"""LightningDataModules for point-cloud classification (ModelNet40, ScanObjectNN, class folders) and
ShapeNetPart part segmentation.  Layouts are documented in ``Point/README.md``.

Classification formats (``format``):

* ``modelnet40_dat``: Point-MAE's ``<variant>_{train,test}_8192pts_fps.dat`` pickles, read by an unpickler that
  builds numpy arrays and lists only (``Point.readers.load_modelnet_dat``): a file naming anything else is refused.
* ``modelnet40_txt``: ``modelnet40_normal_resampled``: ``<variant>_shape_names.txt``,
  ``<variant>_{train,test}.txt`` and ``<class>/<class>_0001.txt`` rows ``x,y,z,nx,ny,nz``.
* ``scanobjectnn``: the h5 files of variant ``hardest`` (PB_T50_RS), ``objbg`` or ``objonly``.
* ``folder``: ``root/{train,test}/<class>/*.{npy,txt,ply}`` (``val`` is accepted for ``test``).

Validation uses the test split (as in Point-MAE; these benchmarks have no separate validation split); the
test loader yields ``vote_num`` views per cloud when ``vote_num > 1``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from pathway.data import (
    DEFAULT_MAX_BAD_FRACTION, DEFAULT_ON_BAD_FILE, BadFilePolicy, SkippingDataset, Split, SplitDataModule,
    class_folders, first_split_folder,
)
from Point.datasets import PointClassificationDataset, ShapeNetPartDataset
from Point.parts import NUM_CATEGORIES, NUM_PARTS, SHAPENETPART_CATEGORIES
from Point.readers import (
    POINT_FILE_SUFFIXES,
    PointDataError,
    load_modelnet_dat,
    load_scanobjectnn_h5,
    read_json_list,
    read_lines,
)

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("modelnet40_dat", "modelnet40_txt", "scanobjectnn", "folder")
SCANOBJECTNN_FILES: dict[str, tuple[str, str]] = {
    "hardest": ("main_split", "{split}_objectdataset_augmentedrot_scale75.h5"),
    "objbg": ("main_split", "{split}_objectdataset.h5"),
    "objonly": ("main_split_nobg", "{split}_objectdataset.h5"),
}
DEFAULT_CLASSES: dict[str, int] = {"modelnet40": 40, "modelnet10": 10, "scanobjectnn": 15}


def _scanobjectnn_file(root: Path, variant: str, split: str) -> Path:
    if variant not in SCANOBJECTNN_FILES:
        raise ValueError(f"unknown ScanObjectNN variant '{variant}' (expected one of {sorted(SCANOBJECTNN_FILES)})")
    folder, pattern = SCANOBJECTNN_FILES[variant]
    name = pattern.format(split="training" if split == "train" else "test")
    for candidate in (root / folder / name, root / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"ScanObjectNN {variant} {split} file not found: tried {root / folder / name} and {root / name}"
    )


class PointDataModule(SplitDataModule):
    """Point-cloud classification data; see the module docstring for ``format`` and layouts.

    Args:
        variant: ``modelnet40`` (default) / ``modelnet10`` for the ModelNet formats; ``hardest`` (default),
            ``objbg`` or ``objonly`` for ScanObjectNN; unused for ``folder``.
        num_classes: checked against the data's class list when that is cheap to read, else trusted.
        num_points: points per cloud fed to the model (FPS subset; padded by repetition when fewer).
        vote_num: views per test cloud; scores are averaged per cloud (view 0 is un-augmented).
        oversample: training draws ``num_points`` of the first ``oversample * num_points`` FPS points.
        on_bad_file / max_bad_fraction: unreadable clouds, see ``pathway.data``.

    For ``folder`` the class list comes from the first of ``train``/``test``/``val`` that exists, so evaluating
    needs only the split it evaluates.
    """

    def __init__(
        self,
        root: str,
        format: str = "modelnet40_dat",
        variant: Optional[str] = None,
        num_classes: Optional[int] = None,
        num_points: int = 1024,
        batch_size: int = 32,
        num_workers: int = 8,
        pin_memory: bool = True,
        vote_num: int = 1,
        oversample: float = 1.2,
        on_bad_file: BadFilePolicy = DEFAULT_ON_BAD_FILE,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore="num_classes")
        if format not in FORMATS:
            raise ValueError(f"unknown point data format '{format}' (expected one of {list(FORMATS)})")
        self.root = Path(root)
        self.format = format
        self.variant = variant or ("hardest" if format == "scanobjectnn" else "modelnet40")
        self.classes = self._class_names()
        found = len(self.classes) if self.classes else DEFAULT_CLASSES.get(
            "scanobjectnn" if format == "scanobjectnn" else self.variant)
        if found is None:
            raise ValueError(f"cannot tell the number of classes of variant '{self.variant}': set data.num_classes")
        if num_classes is not None and self.classes and num_classes != found:
            raise ValueError(f"data.num_classes={num_classes} but {self.root} lists {found} classes")
        self.num_classes = num_classes if num_classes is not None else found
        self.batch_size = batch_size

    def _class_names(self) -> Optional[list[str]]:
        """Class names where the layout lists them (folder, ModelNet txt); ``None`` for label-only formats."""
        if self.format == "folder":
            return class_folders(first_split_folder(self.root, ("train", "test", "val")))
        if self.format == "modelnet40_txt":
            return read_lines(self.root / f"{self.variant}_shape_names.txt")
        return None

    def _split_folder(self, split: str) -> Path:
        if split == "test" and not (self.root / "test").is_dir() and (self.root / "val").is_dir():
            return self.root / "val"
        return self.root / split

    def _items(self, split: str) -> tuple[list, list[int], list[str]]:
        """``(clouds or files, labels, names for messages)`` of one split."""
        if self.format == "modelnet40_dat":
            path = self.root / f"{self.variant}_{split}_8192pts_fps.dat"
            clouds, labels = load_modelnet_dat(path)
            return clouds, labels.tolist(), [f"{path}[{i}]" for i in range(len(clouds))]
        if self.format == "scanobjectnn":
            path = _scanobjectnn_file(self.root, self.variant, split)
            clouds, labels = load_scanobjectnn_h5(path)
            return clouds, labels.tolist(), [f"{path}[{i}]" for i in range(len(clouds))]
        if self.format == "modelnet40_txt":
            index = {name: i for i, name in enumerate(self.classes)}
            files, labels = [], []
            for shape in read_lines(self.root / f"{self.variant}_{split}.txt"):
                cls = shape.rsplit("_", 1)[0]
                if cls not in index:
                    raise PointDataError(
                        f"{self.root / f'{self.variant}_{split}.txt'}: '{shape}' has class '{cls}', "
                        f"not in {self.variant}_shape_names.txt"
                    )
                files.append(self.root / cls / f"{shape}.txt")
                labels.append(index[cls])
            return files, labels, [str(f) for f in files]
        folder = self._split_folder(split)
        classes = class_folders(folder)
        if classes != self.classes:
            differing = sorted(set(classes) ^ set(self.classes))
            raise ValueError(f"{folder} classes differ from the class list {self.classes}: {differing}")
        files, labels = [], []
        for label, cls in enumerate(self.classes):
            found = sorted(p for p in (folder / cls).iterdir() if p.suffix.lower() in POINT_FILE_SUFFIXES)
            files += found
            labels += [label] * len(found)
        if not files:
            raise FileNotFoundError(f"{folder}: no {'/'.join(POINT_FILE_SUFFIXES)} files in its class folders")
        return files, labels, [str(f) for f in files]

    def build_split(self, split: Split) -> SkippingDataset:
        """Validation and test read the test split (these benchmarks have no validation split); test votes."""
        hp = self.hparams
        train = split == "train"
        vote_num = hp.vote_num if split == "test" else 1
        items, labels, names = self._items("train" if train else "test")
        bad = [n for n, y in zip(names, labels) if not 0 <= y < self.num_classes]
        if bad:
            raise PointDataError(f"{bad[0]}: label outside 0..{self.num_classes - 1} ({len(bad)} such clouds)")
        dataset = PointClassificationDataset(items, labels, names, hp.num_points, train, vote_num, hp.oversample)
        if items and isinstance(items[0], np.ndarray):
            dataset.sampler.precompute(device=self._device())
        return self.skipping(dataset, lambda i: names[i // vote_num], items_per_file=vote_num)

    def _device(self) -> torch.device:
        """Where set-up FPS runs: the trainer's device when attached (fast on GPU), else the CPU."""
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")


class ShapeNetPartDataModule(SplitDataModule):
    """ShapeNetPart (``shapenetcore_partanno_segmentation_benchmark_v0_normal``) for part segmentation.

    ``num_classes`` is the number of parts (50); categories are indexed in the benchmark's fixed order
    (``Point.parts.SHAPENETPART_CATEGORIES``) whichever of them the category file lists.  Training uses the
    ``train_splits`` lists (train + val, as in Point-MAE); validation and test use the test list.
    ``on_bad_file`` / ``max_bad_fraction``: unreadable shapes, see ``pathway.data``.
    """

    def __init__(
        self,
        root: str,
        num_points: int = 2048,
        batch_size: int = 16,
        num_workers: int = 8,
        pin_memory: bool = True,
        train_splits: Sequence[str] = ("train", "val"),
        augment: bool = True,
        oversample: float = 1.2,
        on_bad_file: BadFilePolicy = DEFAULT_ON_BAD_FILE,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(root)
        self.synsets = self._read_categories()
        self.num_classes = NUM_PARTS
        self.num_categories = NUM_CATEGORIES
        self.batch_size = batch_size

    def _read_categories(self) -> dict[str, int]:
        """synset id -> category index in the benchmark order."""
        path = self.root / "synsetoffset2category.txt"
        order = list(SHAPENETPART_CATEGORIES)
        synsets = {}
        for line in read_lines(path):
            fields = line.split()
            if len(fields) != 2 or fields[0] not in SHAPENETPART_CATEGORIES:
                raise PointDataError(
                    f"{path}: line '{line}' is not '<Category> <synset>' with a ShapeNetPart category ({order})"
                )
            synsets[fields[1]] = order.index(fields[0])
        if not synsets:
            raise PointDataError(f"{path}: lists no categories")
        return synsets

    def build_split(self, split: Split) -> SkippingDataset:
        hp = self.hparams
        train = split == "train"
        splits = hp.train_splits if train else ["test"]
        files, categories = [], []
        for split in splits:
            list_path = self.root / "train_test_split" / f"shuffled_{split}_file_list.json"
            for entry in read_json_list(list_path):
                parts = entry.split("/")
                if len(parts) < 2 or parts[-2] not in self.synsets:
                    raise PointDataError(f"{list_path}: entry '{entry}' names no synset of synsetoffset2category.txt")
                files.append(self.root / parts[-2] / f"{parts[-1]}.txt")
                categories.append(self.synsets[parts[-2]])
        if not files:
            raise PointDataError(f"{self.root}: the {list(splits)} split lists are empty")
        dataset = ShapeNetPartDataset(files, categories, hp.num_points, train, hp.augment, hp.oversample)
        return self.skipping(dataset, lambda i: str(files[i]))
