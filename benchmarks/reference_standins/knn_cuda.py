"""Pure-torch stand-in for ``knn_cuda.KNN`` (transpose_mode=True: ref (B, N, 3), query (B, M, 3))."""
import torch


class KNN(torch.nn.Module):
    def __init__(self, k: int, transpose_mode: bool = False) -> None:
        super().__init__()
        if not transpose_mode:
            raise NotImplementedError("the stand-in implements transpose_mode=True, what Point-MAE uses")
        self.k = k

    def forward(self, ref: torch.Tensor, query: torch.Tensor):
        dist = torch.cdist(query, ref)
        values, idx = dist.topk(self.k, dim=-1, largest=False, sorted=True)
        return values, idx
