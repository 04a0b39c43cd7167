"""Farthest point sampling and k-nearest neighbours for point clouds, with or without pytorch3d.

pytorch3d ships fast CUDA kernels for both, but it has no wheels for recent torch releases, so most
installs lack it.  Each function here calls ``pytorch3d.ops`` when it is importable and otherwise runs a
pure-torch implementation with the same semantics, so the same input gives the same output either way:

* FPS starts at point 0 (or at a uniformly random point with ``random_start=True``), keeps for every point
  the squared distance to the nearest selected point, and picks the first point with the largest such
  distance (``torch.argmax`` returns the first maximum, as pytorch3d's strict ``>`` comparison does).
* kNN returns squared distances in ascending order and the matching indices.  The order among exactly
  equal distances is unspecified (as in pytorch3d).

Which backend runs is decided once at import, logged at the first call in the main process (not again in each
DataLoader worker) and exposed as ``BACKEND`` (``"pytorch3d"`` or ``"torch"``).  ``torch.export`` (and the ONNX
export built on it) always traces the pure-torch path: pytorch3d's ops are opaque extension calls that read tensor
values on the host, which export cannot trace, and the torch path gives the same indices, so an exported model
computes what the eager one does.
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

# The pure-torch kNN fills two (B, chunk, P) distance buffers; this bounds chunk·P per cloud.  Small buffers
# stay in cache across the passes over them: 2^14 was ~6x faster than 2^21 at batch 32, 8192 points.
_KNN_CHUNK_ELEMENTS = 1 << 14  # 64 KB of fp32 per cloud and buffer: 2 MB each at batch 32


def _log_backend_once() -> None:
    """Log the backend once per run: in the main process, not again in each DataLoader worker that samples points."""
    global _backend_logged
    if not _backend_logged and torch.utils.data.get_worker_info() is None:
        _backend_logged = True
        log.info("Point.ops: FPS and kNN run on the %s backend", BACKEND)


def _pytorch3d_runs() -> bool:
    return BACKEND == "pytorch3d" and not torch.compiler.is_exporting()


def _check_points(points: Tensor, name: str) -> None:
    if points.ndim != 3:
        raise ValueError(f"{name} must have shape (batch, points, dims), got {tuple(points.shape)}")


def farthest_point_sample_torch(
    points: Tensor, num_samples: int, random_start: bool = False, generator: Optional[torch.Generator] = None
) -> tuple[Tensor, Tensor]:
    """Pure-torch batched FPS: ``(sampled points (B, K, D), indices (B, K) int64)``.

    Vectorised over the batch; the only Python loop is over the ``K`` samples, which is inherent to FPS.  Each step
    is six small kernels, so at pytorch3d's sizes (a few thousand points) dispatching them is most of the time, and
    every choice below cuts their number or their fixed cost (measured in benchmarks/point_ops.py).
    """
    _check_points(points, "points")
    batch, num_points, dims = points.shape
    if not 0 < num_samples <= num_points:
        raise ValueError(f"cannot sample {num_samples} of {num_points} points by FPS")
    device = points.device
    # Inference mode skips autograd's bookkeeping on every small op (~10% here).  torch.compile cannot trace
    # inference tensors, so it traces the same ops without it.
    with torch.inference_mode(not torch.compiler.is_compiling()):
        if random_start:
            current = torch.randint(num_points, (batch,), device=device, generator=generator).view(1, batch, 1)
        else:
            current = torch.zeros(1, batch, 1, dtype=torch.long, device=device)
        # Coordinate planes (D, B, N) and preallocated buffers: each step is a few in-place passes over (B, N).
        pts = points.float().permute(2, 0, 1).contiguous()
        squares = torch.empty_like(pts)
        dist, *other_planes = squares.unbind(0)
        nearest = torch.full((batch, num_points), float("inf"), device=device)
        # Squared distances are >= +0.0, and non-negative floats order like their bit patterns read as int32: argmax
        # over that view picks the same first maximum (pytorch3d's tie-breaking) and skips float argmax's NaN checks,
        # about twice as fast.
        nearest_bits = nearest.view(torch.int32).unsqueeze(0)
        chosen = [current]
        for _ in range(num_samples - 1):
            centre = pts.gather(2, current.expand(dims, batch, 1))
            # (p - c)² per coordinate in one broadcast kernel (the op behind F.mse_loss, which has no out= and would
            # allocate every step; reduction 0: none), then summed coordinate by coordinate in the order pytorch3d
            # sums them, so equal inputs give equal floats and indices.
            torch._C._nn.mse_loss(pts, centre, 0, out=squares)
            for plane in other_planes:
                dist.add_(plane)
            torch.minimum(nearest, dist, out=nearest)
            current = nearest_bits.argmax(2, keepdim=True)
            chosen.append(current)
    # Built outside inference mode: normal tensors that autograd may save and callers may modify.
    indices = torch.cat(chosen, 2).view(batch, num_samples)
    sampled = points.gather(1, indices.unsqueeze(-1).expand(-1, -1, dims))
    return sampled, indices


def knn_torch(queries: Tensor, points: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Pure-torch batched kNN: ``(squared distances (B, Q, k) ascending, indices (B, Q, k) int64)``.

    Distances are ``Σ (q - p)²`` (not ``|q|² + |p|² - 2 q·p``, whose cancellation reorders near neighbours);
    queries are processed in chunks so the distance buffers stay small.
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
    num_points = points.shape[1]
    # Bounded per cloud, not per batch: a batch-dependent chunk would make torch.export specialise the batch size.
    chunk = min(num_queries, max(1, _KNN_CHUNK_ELEMENTS // num_points))
    q = queries.float()
    p = points.float().transpose(1, 2).contiguous()
    dist = torch.empty(batch, chunk, num_points, device=q.device)
    term = torch.empty_like(dist)
    dists, idx = [], []
    for start in range(0, num_queries, chunk):
        block = q[:, start:start + chunk]
        d, t = dist[:, :block.shape[1]], term[:, :block.shape[1]]
        # Σ_j (q_j - p_j)² one coordinate at a time, in pytorch3d's order: no (B, chunk, P, D) tensor, no
        # strided reduction over D.
        torch.sub(block[:, :, 0, None], p[:, None, 0], out=d)
        d.mul_(d)
        for j in range(1, dims):
            torch.sub(block[:, :, j, None], p[:, None, j], out=t)
            t.mul_(t)
            d.add_(t)
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
    if _pytorch3d_runs():
        _check_points(points, "points")
        if not 0 < num_samples <= points.shape[1]:
            raise ValueError(f"cannot sample {num_samples} of {points.shape[1]} points by FPS")
        sampled, indices = _p3d_sample_farthest_points(points, K=num_samples, random_start_point=random_start)
        return sampled, indices.long()
    return farthest_point_sample_torch(points, num_samples, random_start, generator)


def knn(queries: Tensor, points: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest ``points`` of every query: ``(squared distances (B, Q, k) ascending, indices (B, Q, k))``."""
    _log_backend_once()
    if _pytorch3d_runs():
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
