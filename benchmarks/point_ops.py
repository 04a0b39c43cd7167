"""Speed of Point.ops' pure-torch FPS and kNN at the shapes where issue 14 compared them with pytorch3d.

Cases: FPS of 128 from 2,048 points, batch 8 (pure torch was slowest next to pytorch3d here); 32-NN of 512
queries among 8,192 points, batch 32 (likewise for kNN); and the two uses in the Point pipeline: 1,024-point
clouds -> 64 FPS centres + 32-NN (the tokenizer), 8,192-point clouds -> 1,024 FPS samples (data subsampling).
Every result is checked against a brute-force per-cloud reference (same FPS start and tie-breaking; neighbours
at the same distances, whose order among exact ties is unspecified).  pytorch3d, when importable, and the FPS
that Point.ops had before its per-step kernels were cut (``fps_before``) run interleaved with Point.ops in the
same rounds, so both ratios are same-run ratios; issue 14's pytorch3d times (another machine) are printed beside
them for orientation.  pytorch3d's CPU kernels are single-threaded: compare with ``--threads 1``.  On CPU the times
are CPU time of the process (robust to other jobs on a shared machine; with one thread, that thread's time); on
CUDA, wall-clock time between synchronisations.

    .venv/bin/python benchmarks/point_ops.py [--device cuda] [--reps 5] [--threads 1]
    .venv/bin/python benchmarks/point_ops.py --quick      # small clouds: a smoke run
"""
from __future__ import annotations

import os

# Set before torch loads libgomp: spinning OpenMP threads on a CPU shared with other work run up to ~80x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from bench_utils import print_table
from Point import ops


@dataclass(frozen=True)
class Case:
    label: str
    batch: int
    points: int
    fps: int = 0                 # FPS samples (0: no FPS, the queries are the first `queries` points)
    queries: int = 0             # kNN queries when there is no FPS
    k: int = 0                   # neighbours (0: no kNN)
    pytorch3d_issue_ms: Optional[float] = None  # issue 14's pytorch3d time on its machine


CASES = (
    Case("FPS 2048 -> 128, batch 8", 8, 2048, fps=128, pytorch3d_issue_ms=6.0),
    Case("32-NN of 512 among 8192, batch 32", 32, 8192, queries=512, k=32, pytorch3d_issue_ms=560.0),
    Case("tokenizer: FPS 1024 -> 64 + 32-NN, batch 32", 32, 1024, fps=64, k=32),
    Case("subsampling: FPS 8192 -> 1024, batch 32", 32, 8192, fps=1024),
)
QUICK = (Case("FPS 256 -> 32, batch 2", 2, 256, fps=32), Case("8-NN of 32 among 256, batch 2", 2, 256, queries=32, k=8))


def fps_reference(points: torch.Tensor, k: int) -> torch.Tensor:
    out = []
    for cloud in points:
        selected = [0]
        nearest = torch.full((cloud.shape[0],), float("inf"), device=cloud.device)
        for _ in range(k - 1):
            nearest = torch.minimum(nearest, ((cloud - cloud[selected[-1]]) ** 2).sum(-1))
            selected.append(int(nearest.argmax()))
        out.append(torch.tensor(selected, device=cloud.device))
    return torch.stack(out)


def fps_before(points: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Point.ops' FPS before its per-step kernels were cut (same arithmetic and indices, 8 kernels per step with a
    float argmax), kept here to measure the speed-up in the same run."""
    batch, num_points, _ = points.shape
    pts = points.float().transpose(1, 2).contiguous()
    diff = torch.empty_like(pts)
    planes = diff.unbind(1)
    dist = torch.empty(batch, num_points, device=points.device)
    nearest = torch.full((batch, num_points), float("inf"), device=points.device)
    current = torch.zeros(batch, dtype=torch.long, device=points.device)
    chosen = [current]
    for _ in range(num_samples - 1):
        last = pts.gather(2, current.view(batch, 1, 1).expand(-1, pts.shape[1], 1))
        torch.sub(pts, last, out=diff)
        diff.mul_(diff)
        dist.copy_(planes[0])
        for plane in planes[1:]:
            dist.add_(plane)
        torch.minimum(nearest, dist, out=nearest)
        current = nearest.argmax(dim=1)
        chosen.append(current)
    indices = torch.stack(chosen, 1)
    return ops.gather_points(points, indices), indices


def knn_reference(queries: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    return torch.stack([((q[:, None] - p[None]) ** 2).sum(-1).argsort(dim=-1)[:, :k] for q, p in zip(queries, points)])


def timed(fns: list[Callable[[], Any]], reps: int, device: torch.device) -> list[tuple[float, Any]]:
    """For each function: median seconds of ``reps`` calls, interleaved round by round after one warm-up call each,
    and the warm-up call's result.  CPU time of the process on CPU, wall-clock time on CUDA."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    results = [fn() for fn in fns]
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, spent in zip(fns, times):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = clock()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            spent.append(clock() - start)
    return [(statistics.median(spent), result) for spent, result in zip(times, results)]


def knn_indices(queries: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    return ops.knn_torch(queries, points, k)[1]


def pipeline(case: Case, points: torch.Tensor, fps: Callable, knn: Callable) -> tuple[torch.Tensor, ...]:
    """The case's FPS and/or kNN with the given functions; returns the indices."""
    out: list[torch.Tensor] = []
    if case.fps:
        queries, idx = fps(points, case.fps)
        out.append(idx.long())
    else:
        queries = points[:, :case.queries].contiguous()
    if case.k:
        out.append(knn(queries, points, case.k).long())
    return tuple(out)


def same_result(case: Case, points: torch.Tensor, ours: tuple[torch.Tensor, ...],
                reference: tuple[torch.Tensor, ...]) -> bool:
    """Equal FPS indices, and kNN neighbours at equal squared distances rank by rank: which of two points at exactly
    the same distance comes first is unspecified (in pytorch3d too), and 8192-point clouds do have such ties."""
    if case.fps and not torch.equal(ours[0], reference[0]):
        return False
    if not case.k:
        return True
    queries = ops.gather_points(points, reference[0]) if case.fps else points[:, :case.queries]

    def distances(idx: torch.Tensor) -> torch.Tensor:
        return ((queries[:, :, None] - ops.gather_points(points, idx)) ** 2).sum(-1)

    return torch.equal(distances(ours[-1]), distances(reference[-1]))


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="small clouds, 2 reps: a smoke run")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        from pytorch3d.ops import knn_points, sample_farthest_points
    except ImportError:
        knn_points = sample_farthest_points = None
    cases, reps = (QUICK, 2) if args.quick else (CASES, args.reps)
    rows = []
    for case in cases:
        points = torch.randn(case.batch, case.points, 3, generator=torch.Generator().manual_seed(0)).to(device)
        variants = [lambda: pipeline(case, points, ops.farthest_point_sample_torch, knn_indices)]
        if case.fps:
            variants.append(lambda: pipeline(case, points, fps_before, knn_indices))
        if sample_farthest_points is not None:
            variants.append(lambda: pipeline(case, points, lambda p, k: sample_farthest_points(p, K=k),
                                             lambda q, p, k: knn_points(q, p, K=k).idx))
        (ours_s, ours), *others = timed(variants, reps, device)
        before_cells = ["—", "—"]
        if case.fps:
            before_s, before_result = others.pop(0)
            if not torch.equal(before_result[0], ours[0]):
                raise RuntimeError(f"{case.label}: fps_before and Point.ops chose different points")
            before_cells = [f"{before_s * 1e3:.1f}", f"{before_s / ours_s:.2f}x"]
        reference = pipeline(case, points, lambda p, k: (ops.gather_points(p, idx := fps_reference(p, k)), idx),
                             knn_reference)
        same = same_result(case, points, ours, reference)
        if others:
            [(p3d_s, p3d)] = others
            p3d_cell = f"{p3d_s * 1e3:.1f} (same result: {same_result(case, points, ours, p3d)})"
            ratio = f"{ours_s / p3d_s:.2f}"
        else:
            p3d_cell, ratio = "not installed", "—"
        issue = f"{case.pytorch3d_issue_ms:g}" if case.pytorch3d_issue_ms is not None else "—"
        rows.append([case.label, *before_cells, f"{ours_s * 1e3:.1f}", str(same), p3d_cell, ratio, issue])
        print(f"{case.label}: {ours_s * 1e3:.1f} ms", flush=True)
    clock = "wall-clock" if device.type == "cuda" else "CPU time"
    print_table(
        f"Point.ops pure torch on {device} ({torch.get_num_threads()} threads, torch {torch.__version__}), "
        f"{clock}, median of {reps}",
        ["case", "FPS before ms", "speed-up", "Point.ops ms", "same as brute force", "pytorch3d ms (this run)",
         "Point.ops / pytorch3d", "pytorch3d ms (issue 14, other machine)"],
        rows,
    )


if __name__ == "__main__":
    main()
