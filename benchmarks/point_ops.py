"""Speed of Point.ops (FPS + kNN) against a brute-force per-cloud reference and, when installed, pytorch3d.

Cases (batch 32): 1024-point clouds -> 64 FPS centres (the ModelNet40 tokenizer), and 8192-point clouds ->
1024 FPS samples (the data-level subsampling of the .dat files); each followed by 32-NN of the sampled points.
The brute-force reference loops over clouds, allocates fresh temporaries at every FPS step and fully sorts
the distance matrix for kNN: what a straightforward implementation does.  It is slow, so it runs fewer reps.

    python benchmarks/point_ops.py [--device cuda] [--reps 3] [--ref-reps 1]

Prints times and ratios (reference / Point.ops, pytorch3d / Point.ops) and checks all agree.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from Point import ops


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
    out = []
    for q, p in zip(queries, points):
        d = ((q[:, None, :] - p[None, :, :]) ** 2).sum(-1)
        out.append(d.argsort(dim=-1)[:, :k])
    return torch.stack(out)


def timed(fn: Callable[[], object], reps: int, device: torch.device) -> tuple[float, object]:
    result = fn()  # warm-up (and the result to compare)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ref-reps", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    device = torch.device(args.device)
    try:
        from pytorch3d.ops import knn_points, sample_farthest_points
    except ImportError:
        knn_points = sample_farthest_points = None
    print(f"device={device} batch={args.batch} Point.ops backend={ops.BACKEND} "
          f"pytorch3d={'yes' if knn_points else 'not installed'} threads={torch.get_num_threads()}")
    for num_points, samples in ((1024, 64), (8192, 1024)):
        g = torch.Generator().manual_seed(0)
        points = torch.randn(args.batch, num_points, 3, generator=g).to(device)

        def ours() -> torch.Tensor:
            centres, idx = ops.farthest_point_sample_torch(points, samples)
            return idx, ops.knn_torch(centres, points, 32)[1]

        def reference() -> torch.Tensor:
            idx = fps_reference(points, samples)
            centres = ops.gather_points(points, idx)
            return idx, knn_reference(centres, points, 32)

        t_ours, (idx, nn_idx) = timed(ours, args.reps, device)
        t_ref, (ref_idx, ref_nn) = timed(reference, args.ref_reps, device)
        agree = torch.equal(idx, ref_idx) and torch.equal(nn_idx, ref_nn)
        line = (f"N={num_points:5d} FPS->{samples:4d} + 32-NN: Point.ops {t_ours * 1e3:9.1f} ms | "
                f"brute force {t_ref * 1e3:10.1f} ms (x{t_ref / t_ours:6.1f}) | same result: {agree}")
        if sample_farthest_points is not None:
            def p3d() -> torch.Tensor:
                centres, p_idx = sample_farthest_points(points, K=samples)
                return p_idx, knn_points(centres, points, K=32).idx

            t_p3d, (p_idx, p_nn) = timed(p3d, args.reps, device)
            line += (f" | pytorch3d {t_p3d * 1e3:8.1f} ms (pytorch3d/Point.ops = {t_p3d / t_ours:5.2f}, "
                     f"same FPS: {torch.equal(p_idx.long(), idx)})")
        print(line, flush=True)


if __name__ == "__main__":
    main()
