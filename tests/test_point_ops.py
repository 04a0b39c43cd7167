"""Point.ops: FPS and kNN against brute-force references, tie-breaking, the backend switch and its log."""
from __future__ import annotations

import logging
import types

import pytest
import torch

from Point import ops


def _cloud(batch: int = 3, n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, n, 3, generator=torch.Generator().manual_seed(seed))


def _fps_brute_force(points: torch.Tensor, k: int, start: int = 0) -> list[int]:
    """O(K^2 N) FPS in float64: each step scans every point's distance to every selected point."""
    p = points.double()
    selected = [start]
    while len(selected) < k:
        d = ((p[:, None, :] - p[None, selected, :]) ** 2).sum(-1).min(dim=1).values
        selected.append(int(torch.argmax(d)))
    return selected


def test_fps_matches_brute_force_and_starts_at_zero() -> None:
    points = _cloud()
    sampled, idx = ops.farthest_point_sample_torch(points, 16)
    assert idx.shape == (3, 16) and idx.dtype == torch.long
    for b in range(3):
        assert idx[b].tolist() == _fps_brute_force(points[b], 16)
    torch.testing.assert_close(sampled, points[torch.arange(3)[:, None], idx])


def test_fps_random_start_follows_the_drawn_start() -> None:
    points = _cloud(batch=4)
    _, idx = ops.farthest_point_sample_torch(points, 8, random_start=True, generator=torch.Generator().manual_seed(3))
    starts = torch.randint(64, (4,), generator=torch.Generator().manual_seed(3))
    assert idx[:, 0].tolist() == starts.tolist()
    assert idx[:, 0].ne(0).any()
    for b in range(4):
        assert idx[b].tolist() == _fps_brute_force(points[b], 8, start=int(starts[b]))


def test_fps_ties_pick_the_first_index() -> None:
    points = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 0, 0]]])
    _, idx = ops.farthest_point_sample_torch(points, 3)
    assert idx[0].tolist() == [0, 1, 2]
    same = torch.zeros(1, 5, 3)
    assert ops.farthest_point_sample_torch(same, 3)[1][0].tolist() == [0, 0, 0]


@pytest.mark.parametrize("dims", [2, 3, 4])
def test_fps_on_a_grid_breaks_every_tie_like_brute_force(dims: int) -> None:
    # integer coordinates: many exactly equal distances at every step, in float32 as in the float64 reference
    points = torch.randint(-2, 3, (2, 60, dims), generator=torch.Generator().manual_seed(dims)).float()
    _, idx = ops.farthest_point_sample_torch(points, 24)
    for b in range(2):
        assert idx[b].tolist() == _fps_brute_force(points[b], 24)


def test_fps_outputs_are_ordinary_tensors_that_carry_gradients() -> None:
    """The steps run in inference mode; what comes out must not be an inference tensor."""
    points = _cloud(2, 32).requires_grad_()
    sampled, idx = ops.farthest_point_sample_torch(points, 5)
    assert not idx.is_inference() and not sampled.is_inference()
    sampled.square().sum().backward()
    expected = torch.zeros_like(points)
    expected[torch.arange(2)[:, None], idx] = 2 * points.detach()[torch.arange(2)[:, None], idx]
    assert torch.equal(points.grad, expected)
    idx += 0  # callers may modify the indices in place


def test_fps_traces_under_torch_compile() -> None:
    points = _cloud(2, 32)
    compiled = torch.compile(lambda p: ops.farthest_point_sample_torch(p, 6), backend="aot_eager", fullgraph=True)
    sampled, idx = compiled(points)
    assert torch.equal(idx, ops.farthest_point_sample_torch(points, 6)[1])
    assert torch.equal(sampled, points[torch.arange(2)[:, None], idx])


def test_fps_rejects_too_many_samples() -> None:
    with pytest.raises(ValueError, match="cannot sample 9 of 8"):
        ops.farthest_point_sample(torch.zeros(1, 8, 3), 9)


def test_knn_matches_brute_force_sorted_distances() -> None:
    points, queries = _cloud(2, 50, seed=1), _cloud(2, 7, seed=2)
    dists, idx = ops.knn_torch(queries, points, 5)
    full = ((queries.double()[:, :, None] - points.double()[:, None]) ** 2).sum(-1)
    ref_d, ref_i = full.sort(dim=-1)
    assert torch.equal(idx, ref_i[..., :5])
    torch.testing.assert_close(dists.double(), ref_d[..., :5], atol=1e-5, rtol=1e-5)
    assert (dists[..., 1:] >= dists[..., :-1]).all()


def test_knn_chunking_gives_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    points, queries = _cloud(2, 40, seed=4), _cloud(2, 9, seed=5)
    whole = ops.knn_torch(queries, points, 4)
    monkeypatch.setattr(ops, "_KNN_CHUNK_ELEMENTS", 2 * 40)  # two queries per chunk, one in the last
    chunked = ops.knn_torch(queries, points, 4)
    assert torch.equal(whole[1], chunked[1]) and torch.equal(whole[0], chunked[0])


def test_gather_points_indexes_per_batch() -> None:
    values = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    out = ops.gather_points(values, torch.tensor([[[3, 0]], [[1, 1]]]))
    assert out.squeeze(-1).tolist() == [[[3.0, 0.0]], [[5.0, 5.0]]]


def test_dispatch_uses_the_reported_backend() -> None:
    """With pytorch3d importable the dispatcher must agree with it; without, it must be the torch path."""
    points, queries = _cloud(2, 40, seed=6), _cloud(2, 6, seed=7)
    fps_idx = ops.farthest_point_sample(points, 10)[1]
    knn_idx = ops.knn(queries, points, 4)[1]
    try:
        import pytorch3d.ops as p3d
    except ImportError:
        assert ops.BACKEND == "torch"
        assert torch.equal(fps_idx, ops.farthest_point_sample_torch(points, 10)[1])
        assert torch.equal(knn_idx, ops.knn_torch(queries, points, 4)[1])
        return
    assert ops.BACKEND == "pytorch3d"
    assert torch.equal(fps_idx, p3d.sample_farthest_points(points, K=10)[1].long())
    assert torch.equal(fps_idx, ops.farthest_point_sample_torch(points, 10)[1])
    assert torch.equal(knn_idx, ops.knn_torch(queries, points, 4)[1])


def _host_bound_pytorch3d(calls: list[str]) -> tuple:
    """Stand-ins with pytorch3d's signatures that, like its extension ops, compute outside torch (here in numpy, which
    torch.export cannot trace) and return the torch path's results."""
    def sample_farthest_points(points, K, random_start_point=False):
        calls.append("fps")
        idx = torch.from_numpy(ops.farthest_point_sample_torch(points, K)[1].numpy())
        return ops.gather_points(points, idx), idx

    def knn_points(queries, points, K, return_sorted=True):
        calls.append("knn")
        dists, idx = ops.knn_torch(queries, points, K)
        return types.SimpleNamespace(dists=dists, idx=torch.from_numpy(idx.numpy()))

    return sample_farthest_points, knn_points


def test_export_traces_the_torch_path_when_pytorch3d_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """With pytorch3d installed, exporting a Point model failed: export traced into pytorch3d's ops."""
    calls: list[str] = []
    fps, knn = _host_bound_pytorch3d(calls)
    monkeypatch.setattr(ops, "BACKEND", "pytorch3d")
    monkeypatch.setattr(ops, "_p3d_sample_farthest_points", fps)
    monkeypatch.setattr(ops, "_p3d_knn_points", knn)

    class Grouping(torch.nn.Module):
        def forward(self, points: torch.Tensor) -> torch.Tensor:
            centres, _ = ops.farthest_point_sample(points, 8)
            dists, idx = ops.knn(centres, points, 4)
            return ops.gather_points(points, idx).sum(-1) + dists

    points = _cloud(2, 32, seed=8)
    eager = Grouping()(points)
    assert calls == ["fps", "knn"]
    program = torch.export.export(Grouping(), (points,))
    assert calls == ["fps", "knn"]
    torch.testing.assert_close(program.module()(points), eager, rtol=0, atol=0)


def test_backend_is_logged_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(ops, "_backend_logged", False)
    with caplog.at_level(logging.INFO, logger="Point.ops"):
        ops.farthest_point_sample(_cloud(1, 8), 2)
        ops.knn(_cloud(1, 2), _cloud(1, 8), 2)
    messages = [r.getMessage() for r in caplog.records if r.name == "Point.ops"]
    assert messages == [f"Point.ops: FPS and kNN run on the {ops.BACKEND} backend"]
