"""Speed of Point.ops' pure-torch FPS and kNN at the shapes where issue 14 compared them with pytorch3d.

Cases: FPS of 128 from 2,048 points, batch 8 (pure torch was slowest next to pytorch3d here); 32-NN of 512
queries among 8,192 points, batch 32 (likewise for kNN); and the two uses in the Point pipeline: 1,024-point
clouds -> 64 FPS centres + 32-NN (the tokenizer), 8,192-point clouds -> 1,024 FPS samples (data subsampling).
Every result is checked against a brute-force per-cloud reference (same FPS start and tie-breaking, same
neighbours).  pytorch3d runs in the same process when importable; otherwise its times from issue 14 (0.7.9 built
from source, a 2-core CPU: another machine) are printed beside ours for orientation, not as a same-run ratio.

    .venv/bin/python benchmarks/point_ops.py [--device cuda] [--reps 5]
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


def knn_reference(queries: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    return torch.stack([((q[:, None] - p[None]) ** 2).sum(-1).argsort(dim=-1)[:, :k] for q, p in zip(queries, points)])


def timed(fn: Callable[[], Any], reps: int, device: torch.device) -> tuple[float, Any]:
    """Median seconds of ``reps`` calls after one warm-up call, and that call's result."""
    result = fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


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


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small clouds, 2 reps: a smoke run")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    try:
        from pytorch3d.ops import knn_points, sample_farthest_points
    except ImportError:
        knn_points = sample_farthest_points = None
    cases, reps = (QUICK, 2) if args.quick else (CASES, args.reps)
    rows = []
    for case in cases:
        points = torch.randn(case.batch, case.points, 3, generator=torch.Generator().manual_seed(0)).to(device)
        ours_s, ours = timed(lambda: pipeline(case, points, ops.farthest_point_sample_torch,
                                              lambda q, p, k: ops.knn_torch(q, p, k)[1]), reps, device)
        reference = pipeline(case, points, lambda p, k: (ops.gather_points(p, idx := fps_reference(p, k)), idx),
                             knn_reference)
        same = all(torch.equal(a, b) for a, b in zip(ours, reference))
        if sample_farthest_points is not None:
            p3d_s, p3d = timed(lambda: pipeline(case, points, lambda p, k: sample_farthest_points(p, K=k),
                                                lambda q, p, k: knn_points(q, p, K=k).idx), reps, device)
            p3d_cell = f"{p3d_s * 1e3:.1f} (same result: {all(torch.equal(a, b) for a, b in zip(ours, p3d))})"
            ratio = f"{ours_s / p3d_s:.2f}"
        else:
            p3d_cell, ratio = "not installed", "—"
        issue = f"{case.pytorch3d_issue_ms:g}" if case.pytorch3d_issue_ms is not None else "—"
        rows.append([case.label, f"{ours_s * 1e3:.1f}", str(same), p3d_cell, ratio, issue])
        print(f"{case.label}: {ours_s * 1e3:.1f} ms", flush=True)
    print_table(
        f"Point.ops pure torch on {device} ({torch.get_num_threads()} threads, torch {torch.__version__}), "
        f"median of {reps}",
        ["case", "Point.ops ms", "same as brute force", "pytorch3d ms (this run)", "Point.ops / pytorch3d",
         "pytorch3d ms (issue 14, other machine)"],
        rows,
    )


if __name__ == "__main__":
    main()
