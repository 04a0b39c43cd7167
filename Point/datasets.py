"""Torch datasets turning raw clouds into fixed-size, normalised, optionally augmented point sets.

Per cloud: keep xyz, centre it and scale it into the unit sphere, then take ``num_points`` points.  The
points are the first ``num_points`` of a farthest-point-sampling order (FPS is greedy, so a prefix of a
longer FPS order *is* the shorter FPS); training draws a random ``num_points``-subset of the first
``ceil(oversample * num_points)`` FPS points instead, which varies the cloud and its first point (where the
tokenizer's own FPS starts), as Point-MAE's fine-tuning does.  FPS orders are computed once per cloud and
cached: in batches at set-up for in-memory clouds, on first access for clouds read from files.  Clouds
with fewer points than requested are padded by repeating random points (and logged).

Training augmentation: per-axis scale ~ U(2/3, 3/2) and shift ~ U(-0.2, 0.2), drawn from torch's RNG so
DataLoader workers get distinct streams.  Vote views for test-time voting are the same augmentation from a
generator seeded by the view index, so every evaluation sees the same views.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pathway.data import EVERY_RANK, log_progress
from Point.ops import farthest_point_sample
from Point.readers import CLOUD_COLUMNS, check_cloud, read_point_file

log = logging.getLogger(__name__)

CloudItem = Union[np.ndarray, Path]

SCALE_RANGE: tuple[float, float] = (2.0 / 3.0, 3.0 / 2.0)
SHIFT_RANGE: float = 0.2
PART_COLUMNS: tuple[int, ...] = (4, 7)  # ShapeNetPart rows: x y z [nx ny nz] part


def normalize_unit_sphere(xyz: np.ndarray) -> np.ndarray:
    """Centre on the centroid and scale so the farthest point lies on the unit sphere."""
    centred = xyz - xyz.mean(axis=0, keepdims=True)
    radius = float(np.sqrt((centred ** 2).sum(axis=1)).max())
    return centred / radius if radius > 0 else centred


def scale_and_shift(points: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Per-axis random scale in ``SCALE_RANGE`` and shift in ``±SHIFT_RANGE`` of an (N, 3) cloud."""
    low, high = SCALE_RANGE
    scale = torch.rand(3, generator=generator) * (high - low) + low
    shift = (torch.rand(3, generator=generator) * 2 - 1) * SHIFT_RANGE
    return points * scale + shift


def fps_order(xyz: np.ndarray, count: int) -> np.ndarray:
    """Indices of the first ``count`` FPS points of one cloud (start at index 0)."""
    _, idx = farthest_point_sample(torch.from_numpy(xyz).unsqueeze(0), count)
    return idx[0].numpy()


class FixedSizeCloudSampler:
    """Loads, validates, normalises and samples clouds; shared by the classification and part datasets.

    ``columns``: the column counts a cloud may have (``check_cloud``).
    """

    def __init__(self, items: Sequence[CloudItem], names: Sequence[str], num_points: int, oversample: float,
                 columns: tuple[int, ...] = CLOUD_COLUMNS) -> None:
        if len(items) != len(names):
            raise ValueError(f"{len(items)} clouds but {len(names)} names")
        if num_points <= 0:
            raise ValueError(f"num_points must be positive, got {num_points}")
        if oversample < 1.0:
            raise ValueError(f"oversample must be >= 1, got {oversample}")
        self.items = list(items)
        self.names = list(names)
        self.num_points = num_points
        self.columns = columns
        self.pool_size = int(math.ceil(oversample * num_points))
        self._orders: dict[int, np.ndarray] = {}
        self._padded: set[int] = set()

    def load(self, index: int) -> np.ndarray:
        item = self.items[index]
        if isinstance(item, np.ndarray):
            return check_cloud(item, self.names[index], self.columns)
        return read_point_file(item, self.columns)

    def _pool_count(self, n: int) -> int:
        return min(n, self.pool_size)

    def precompute(self, device: Optional[torch.device] = None) -> None:
        """FPS orders of all in-memory clouds, batched over clouds of equal size (one pass at set-up).

        On a GPU this takes seconds for ModelNet40; on CPU small batches are fastest (cache-resident).

        Clouds that fail ``check_cloud`` are left alone here: reading them later raises or skips them.
        """
        by_size: dict[int, list[int]] = {}
        for i, item in enumerate(self.items):
            if not isinstance(item, np.ndarray) or i in self._orders:
                continue
            try:
                check_cloud(item, self.names[i], self.columns)
            except ValueError:
                continue
            if item.shape[0] <= self.num_points:
                continue
            by_size.setdefault(item.shape[0], []).append(i)
        device = device or torch.device("cpu")
        chunk = 256 if device.type == "cuda" else 4
        total = sum(len(v) for v in by_size.values())
        batches = [ids[start:start + chunk] for ids in by_size.values() for start in range(0, len(ids), chunk)]
        what = f"FPS orders of {total} clouds on {device}, batches of {chunk} clouds done"
        for batch_ids in log_progress(batches, len(batches), what):
            xyz = np.stack([normalize_unit_sphere(self.items[i][:, :3]) for i in batch_ids])
            _, order = farthest_point_sample(torch.from_numpy(xyz).to(device), self._pool_count(xyz.shape[1]))
            for i, o in zip(batch_ids, order.cpu().numpy()):
                self._orders[i] = o

    def sample(
        self, index: int, randomize: bool, generator: Optional[torch.Generator] = None
    ) -> tuple[Tensor, Tensor, np.ndarray]:
        """``(points (num_points, 3), their rows in the loaded cloud (num_points,), the loaded cloud)``."""
        cloud = self.load(index)
        xyz = normalize_unit_sphere(cloud[:, :3])
        n = xyz.shape[0]
        if n < self.num_points:
            if index not in self._padded:
                self._padded.add(index)
                log.warning("%s: has %d points, fewer than the %d requested: padding by repeating random points",
                            self.names[index], n, self.num_points, extra=EVERY_RANK)
            g = generator if generator is not None else torch.Generator().manual_seed(index)
            extra = torch.randint(n, (self.num_points - n,), generator=g)
            rows = torch.cat([torch.arange(n), extra])
            if randomize:
                rows = rows[torch.randperm(self.num_points, generator=generator)]
        elif n == self.num_points:
            rows = torch.randperm(n, generator=generator) if randomize else torch.arange(n)
        else:
            order = self._orders.get(index)
            if order is None:
                order = fps_order(xyz, self._pool_count(n))
                self._orders[index] = order
            order_t = torch.from_numpy(order)
            if randomize:
                rows = order_t[torch.randperm(order_t.shape[0], generator=generator)[: self.num_points]]
            else:
                rows = order_t[: self.num_points]
        return torch.from_numpy(xyz)[rows].float(), rows, cloud


class PointClassificationDataset(Dataset):
    """``(points (N, 3), label)`` per cloud; with ``vote_num > 1``, ``(points, label, cloud_index)`` per view.

    View 0 of each cloud is the plain test view; views 1.. are seeded training-style augmentations.
    """

    def __init__(
        self,
        items: Sequence[CloudItem],
        labels: Sequence[int],
        names: Sequence[str],
        num_points: int,
        train: bool,
        vote_num: int = 1,
        oversample: float = 1.2,
    ) -> None:
        if len(items) != len(labels) or len(items) != len(names):
            raise ValueError(f"{len(items)} clouds, {len(labels)} labels and {len(names)} names must agree")
        if vote_num < 1:
            raise ValueError(f"vote_num must be >= 1, got {vote_num}")
        if train and vote_num != 1:
            raise ValueError("vote_num applies to evaluation datasets only")
        self.sampler = FixedSizeCloudSampler(items, names, num_points, oversample)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.train = train
        self.vote_num = vote_num

    def __len__(self) -> int:
        return len(self.labels) * self.vote_num

    def __getitem__(self, index: int):
        cloud, view = divmod(index, self.vote_num)
        if self.train:
            points, _, _ = self.sampler.sample(cloud, randomize=True)
            return scale_and_shift(points), self.labels[cloud]
        if view == 0:
            points, _, _ = self.sampler.sample(cloud, randomize=False)
        else:
            g = torch.Generator().manual_seed(index)
            points, _, _ = self.sampler.sample(cloud, randomize=True, generator=g)
            points = scale_and_shift(points, g)
        if self.vote_num == 1:
            return points, self.labels[cloud]
        return points, self.labels[cloud], torch.tensor(cloud, dtype=torch.long)


class ShapeNetPartDataset(Dataset):
    """``(points (N, 3), category index, part labels (N,), rows (N,))`` per shape from ShapeNetPart txt files;
    ``rows`` are the points' rows in their file, so that per-point predictions map back to the file's points.

    Each file holds rows ``x y z nx ny nz part``; parts are global ids 0..49.
    """

    def __init__(
        self,
        files: Sequence[Path],
        categories: Sequence[int],
        num_points: int,
        train: bool,
        augment: bool = True,
        oversample: float = 1.2,
    ) -> None:
        if len(files) != len(categories):
            raise ValueError(f"{len(files)} files but {len(categories)} categories")
        self.files = [Path(f) for f in files]
        self.sampler = FixedSizeCloudSampler(self.files, [str(f) for f in self.files], num_points, oversample,
                                             columns=PART_COLUMNS)
        self.categories = torch.as_tensor(list(categories), dtype=torch.long)
        self.train = train
        self.augment = augment

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        points, rows, raw = self.sampler.sample(index, randomize=self.train)
        parts = torch.from_numpy(raw[:, -1].astype(np.int64))[rows]
        if self.train and self.augment:
            points = scale_and_shift(points)
        return points, self.categories[index], parts, rows
