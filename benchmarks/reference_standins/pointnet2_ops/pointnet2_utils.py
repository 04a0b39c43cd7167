"""Pure-torch stand-ins for Point-MAE's CUDA ``pointnet2_ops.pointnet2_utils`` (same outputs, same dtypes)."""
import torch


def furthest_point_sample(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """(B, N, 3) -> (B, npoint) int32 indices; the first is index 0, each next the farthest from those chosen."""
    batch, count, _ = xyz.shape
    idx = torch.zeros(batch, npoint, dtype=torch.long, device=xyz.device)
    dist = torch.full((batch, count), 1e10, dtype=xyz.dtype, device=xyz.device)
    last = torch.zeros(batch, dtype=torch.long, device=xyz.device)
    rows = torch.arange(batch, device=xyz.device)
    for i in range(1, npoint):
        d = ((xyz - xyz[rows, last].unsqueeze(1)) ** 2).sum(-1)
        dist = torch.minimum(dist, d)
        last = dist.argmax(-1)
        idx[:, i] = last
    return idx.int()


def gather_operation(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, C, N) features, (B, M) indices -> (B, C, M)."""
    return torch.gather(features, 2, idx.long().unsqueeze(1).expand(-1, features.shape[1], -1))
