"""The cross-modal re-parameterized linear layer.

A ``PathwayLinear`` computes ``x (W + Σ_i λ_i W_aux_i)ᵀ + b``: the target layer's own weight and bias, plus
one frozen (by default) weight per auxiliary model, each scaled by its own learnable scalar ``λ_i``.  The
auxiliary weights are buffers unless made trainable, so they never reach an optimizer, never get weight decay
and never get gradients.  After training the sum is folded into ``W`` (``merge_``/``fuse``) so the deployed
model is a plain ``nn.Linear`` with no extra inference cost.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PathwayLinear(nn.Module):
    """A linear layer whose weight is ``W + Σ λ_i W_aux_i``; a drop-in for the ``nn.Linear`` it wraps.

    State dict keys: ``weight``, ``bias`` (when the target has one), ``lambdas`` (one per aux),
    ``aux_weight_<i>`` and ``merged`` (whether ``λ·W_aux`` is currently folded into ``weight``).
    """

    def __init__(
        self,
        linear: nn.Linear,
        aux_weights: Sequence[Tensor],
        lambda_init: float = 0.0,
        aux_trainable: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"PathwayLinear wraps an nn.Linear, got {type(linear).__name__}")
        if len(aux_weights) == 0:
            raise ValueError("PathwayLinear needs at least one auxiliary weight")
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.aux_trainable = aux_trainable
        self.num_aux = len(aux_weights)
        for i, w in enumerate(aux_weights):
            if tuple(w.shape) != tuple(self.weight.shape):
                raise ValueError(
                    f"aux weight {i} has shape {tuple(w.shape)}, expected the target's {tuple(self.weight.shape)}"
                )
            w = w.detach().to(device=self.weight.device, dtype=self.weight.dtype).clone()
            if aux_trainable:
                self.register_parameter(f"aux_weight_{i}", nn.Parameter(w))
            else:
                self.register_buffer(f"aux_weight_{i}", w)
        self.lambdas = nn.Parameter(
            torch.full((self.num_aux,), float(lambda_init), device=self.weight.device, dtype=torch.float32)
        )
        # `merged` is persisted (a buffer) and mirrored in a Python bool so forward never syncs a device tensor.
        self.register_buffer("merged", torch.zeros((), dtype=torch.bool))
        self.register_buffer("merged_lambdas", torch.zeros(self.num_aux, dtype=torch.float32))
        self._is_merged = False

    @property
    def is_merged(self) -> bool:
        return self._is_merged

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._is_merged = bool(self.merged)

    def aux_weights(self) -> list[Tensor]:
        return [getattr(self, f"aux_weight_{i}") for i in range(self.num_aux)]

    def _aux_delta(self, lambdas: Tensor, dtype: torch.dtype) -> Tensor:
        """Σ λ_i W_aux_i; the λ·W_aux products are formed in ``dtype`` so autograd reaches λ."""
        delta = lambdas[0].to(dtype) * self.aux_weight_0.to(dtype)
        for i in range(1, self.num_aux):
            delta = delta + lambdas[i].to(dtype) * getattr(self, f"aux_weight_{i}").to(dtype)
        return delta

    def effective_weight(self) -> Tensor:
        """The weight the layer computes with right now (differentiable in W, λ and trainable aux)."""
        if self._is_merged:
            return self.weight + self._aux_delta(self.lambdas - self.merged_lambdas, self.weight.dtype)
        return self.weight + self._aux_delta(self.lambdas, self.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.effective_weight()
        bias = self.bias
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            weight = weight.to(x.dtype)
            bias = bias.to(x.dtype) if bias is not None else None
        return F.linear(x, weight, bias)

    @torch.no_grad()
    def _folded_weight(self) -> Tensor:
        """``W + Σ λ W_aux`` accumulated in fp32 (bf16/fp16 sums lose the small λ·W_aux term) and checked."""
        lambdas = self.lambdas.float() - (self.merged_lambdas if self._is_merged else 0.0)
        w = self.weight.float() + self._aux_delta(lambdas, torch.float32)
        if not torch.isfinite(w).all():
            raise FloatingPointError(
                "folding λ·W_aux into the weight gives non-finite values "
                f"(λ={self.lambdas.tolist()}); refusing to merge"
            )
        return w

    @torch.no_grad()
    def merge_(self) -> "PathwayLinear":
        """Fold the current ``λ·W_aux`` into ``weight`` in place; a no-op when already merged."""
        if self._is_merged:
            return self
        self.weight.copy_(self._folded_weight().to(self.weight.dtype))
        self.merged_lambdas.copy_(self.lambdas.detach().float())
        self.merged.fill_(True)
        self._is_merged = True
        return self

    @torch.no_grad()
    def unmerge_(self) -> "PathwayLinear":
        """Undo ``merge_`` (subtracting what was folded in, in fp32); a no-op when not merged."""
        if not self._is_merged:
            return self
        w = self.weight.float() - self._aux_delta(self.merged_lambdas, torch.float32)
        self.weight.copy_(w.to(self.weight.dtype))
        self.merged.fill_(False)
        self._is_merged = False
        self.merged_lambdas.zero_()
        return self

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing what this layer computes; used by ``timm.utils.reparameterize_model``."""
        linear = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None,
            device=self.weight.device, dtype=self.weight.dtype,
        )
        linear.weight.copy_(self._folded_weight().to(self.weight.dtype))
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        linear.train(self.training)
        return linear

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"num_aux={self.num_aux}, aux_trainable={self.aux_trainable}"
        )
