"""Farthest point sampling and k-nearest neighbours for point clouds, with or without pytorch3d.

pytorch3d ships fast CUDA kernels for both, but it has no wheels for recent torch releases, so most
installs lack it.  Each function here calls ``pytorch3d.ops`` when it is importable and otherwise runs a
pure-torch implementation with the same semantics, so the same input gives the same output either way:

* FPS starts at point 0 (or at a uniformly random point with ``random_start=True``), keeps for every point
  the squared distance to the nearest selected point, and picks the first point with the largest such
  distance (``torch.argmax`` returns the first maximum, as pytorch3d's strict ``>`` comparison does).
* kNN returns squared distances in ascending order and the matching indices.  The order among exactly
  equal distances is unspecified (as in pytorch3d).

Which backend runs is decided once at import, logged once at the first call and exposed as ``BACKEND``
(``"pytorch3d"`` or ``"torch"``).
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import Tensor

log = logging.getLogger(__name__)

try:
    from pytorch3d.ops import knn_points as _p3d_knn_points
    from pytorch3d.ops import sample_farthest_points as _p3d_sample_farthest_points

    BACKEND = "pytorch3d"
except ImportError:
    _p3d_knn_points = None
    _p3d_sample_farthest_points = None
    BACKEND = "torch"

_backend_logged = False

# The pure-torch kNN materialises a (B, chunk, P2, D) difference tensor; this bounds its size per cloud.
_KNN_CHUNK_ELEMENTS = 1 << 21  # 8 MB of fp32 per cloud: 256 MB at batch 32


def _log_backend_once() -> None:
    global _backend_logged
    if not _backend_logged:
        _backend_logged = True
        log.info("Point.ops: FPS and kNN run on the %s backend", BACKEND)


def _check_points(points: Tensor, name: str) -> None:
    if points.ndim != 3:
        raise ValueError(f"{name} must have shape (batch, points, dims), got {tuple(points.shape)}")


def farthest_point_sample_torch(
    points: Tensor, num_samples: int, random_start: bool = False, generator: Optional[torch.Generator] = None
) -> tuple[Tensor, Tensor]:
    """Pure-torch batched FPS: ``(sampled points (B, K, D), indices (B, K) int64)``.

    Vectorised over the batch; the only Python loop is over the ``K`` samples, which is inherent to FPS.
    """
    _check_points(points, "points")
    batch, num_points, _ = points.shape
    if not 0 < num_samples <= num_points:
        raise ValueError(f"cannot sample {num_samples} of {num_points} points by FPS")
    device = points.device
    # Coordinates-major layout and preallocated buffers: each step is a few in-place passes over (B, N),
    # several times faster than allocating (B, N, D) temporaries per step.
    pts = points.float().transpose(1, 2).contiguous()
    diff = torch.empty_like(pts)
    dist = torch.empty(batch, num_points, device=device)
    nearest = torch.full((batch, num_points), float("inf"), device=device)
    indices = torch.empty(batch, num_samples, dtype=torch.long, device=device)
    if random_start:
        current = torch.randint(num_points, (batch,), device=device, generator=generator)
    else:
        current = torch.zeros(batch, dtype=torch.long, device=device)
    for k in range(num_samples):
        indices[:, k] = current
        last = pts.gather(2, current.view(batch, 1, 1).expand(-1, pts.shape[1], 1))
        torch.sub(pts, last, out=diff)
        diff.square_()
        torch.sum(diff, dim=1, out=dist)
        torch.minimum(nearest, dist, out=nearest)
        current = nearest.argmax(dim=1)
    sampled = points.gather(1, indices.unsqueeze(-1).expand(-1, -1, points.shape[-1]))
    return sampled, indices


def knn_torch(queries: Tensor, points: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Pure-torch batched kNN: ``(squared distances (B, Q, k) ascending, indices (B, Q, k) int64)``.

    Distances are ``Σ (q - p)²`` (not ``|q|² + |p|² - 2 q·p``, whose cancellation reorders near neighbours);
    queries are processed in chunks so the difference tensor stays bounded.
    """
    _check_points(queries, "queries")
    _check_points(points, "points")
    if queries.shape[0] != points.shape[0] or queries.shape[2] != points.shape[2]:
        raise ValueError(
            f"queries {tuple(queries.shape)} and points {tuple(points.shape)} must agree in batch and dims"
        )
    if not 0 < k <= points.shape[1]:
        raise ValueError(f"cannot take {k} neighbours among {points.shape[1]} points")
    batch, num_queries, dims = queries.shape
    # Bounded per cloud, not per batch: a batch-dependent chunk would make torch.export specialise the batch size.
    chunk = max(1, _KNN_CHUNK_ELEMENTS // max(1, points.shape[1] * dims))
    q, p = queries.float(), points.float()
    dists, idx = [], []
    for start in range(0, num_queries, chunk):
        d = (q[:, start:start + chunk, None, :] - p[:, None, :, :]).square().sum(-1)
        values, indices = d.topk(k, dim=-1, largest=False, sorted=True)
        dists.append(values)
        idx.append(indices)
    return torch.cat(dists, 1), torch.cat(idx, 1)


def farthest_point_sample(
    points: Tensor, num_samples: int, random_start: bool = False, generator: Optional[torch.Generator] = None
) -> tuple[Tensor, Tensor]:
    """FPS of ``num_samples`` points per cloud: ``(sampled points (B, K, D), indices (B, K) int64)``.

    ``generator`` only affects the pure-torch path (pytorch3d draws random starts from the global RNG).
    """
    _log_backend_once()
    if _p3d_sample_farthest_points is not None:
        _check_points(points, "points")
        if not 0 < num_samples <= points.shape[1]:
            raise ValueError(f"cannot sample {num_samples} of {points.shape[1]} points by FPS")
        sampled, indices = _p3d_sample_farthest_points(points, K=num_samples, random_start_point=random_start)
        return sampled, indices.long()
    return farthest_point_sample_torch(points, num_samples, random_start, generator)


def knn(queries: Tensor, points: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest ``points`` of every query: ``(squared distances (B, Q, k) ascending, indices (B, Q, k))``."""
    _log_backend_once()
    if _p3d_knn_points is not None:
        _check_points(queries, "queries")
        _check_points(points, "points")
        if not 0 < k <= points.shape[1]:
            raise ValueError(f"cannot take {k} neighbours among {points.shape[1]} points")
        result = _p3d_knn_points(queries.float(), points.float(), K=k, return_sorted=True)
        return result.dists, result.idx.long()
    return knn_torch(queries, points, k)


def gather_points(values: Tensor, indices: Tensor) -> Tensor:
    """``values[b, indices[b, ...]]`` for ``values`` (B, N, C) and integer ``indices`` (B, ...) -> (B, ..., C)."""
    batch = values.shape[0]
    flat = indices.reshape(batch, -1)
    out = values.gather(1, flat.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
    return out.reshape(*indices.shape, values.shape[-1])
