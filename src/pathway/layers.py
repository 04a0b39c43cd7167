"""The cross-modal re-parameterized linear layer.

A ``PathwayLinear`` computes ``x (W + Σ_i λ_i W_aux_i)ᵀ + b``: the target layer's own weight and bias, plus
one weight per auxiliary model, each scaled by its own learnable scalar ``λ_i``.  As in the paper's reference
code (``CrossModalReparamLinear(is_aux_trainable=True)``) the auxiliary weights are trained parameters by
default; frozen, they are buffers that never reach an optimizer and never get gradients (the cheaper variant).
After training the sum is folded into ``W`` (``fuse``; ``merge_`` in place) so the deployed model is a plain
``nn.Linear`` with no extra inference cost.
"""
from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

# The state-dict spelling of a pathway layer's own entries, written here only: ``<layer>.lambdas`` and
# ``<layer>.aux_weight_<i>``.
LAMBDAS = "lambdas"
_AUX_WEIGHT_PREFIX = "aux_weight_"
_AUX_WEIGHT_KEY = re.compile(rf"^(?:(.+)\.)?{_AUX_WEIGHT_PREFIX}(\d+)$")


def aux_weight_name(index: int) -> str:
    """The attribute / state-dict leaf name of the ``index``-th auxiliary weight."""
    return f"{_AUX_WEIGHT_PREFIX}{index}"


# The reference code's ``CrossModalReparamLinear`` (one aux per layer) spells them ``cross_modal_scale`` (shape (1,),
# as ``lambdas`` with one aux) and ``aux_weight``; ``PathwayLinear`` loads those keys as its own.
REFERENCE_KEYS: dict[str, str] = {"cross_modal_scale": LAMBDAS, "aux_weight": aux_weight_name(0)}


def parse_aux_weight_key(key: str) -> Optional[tuple[str, int]]:
    """``'<layer>.aux_weight_<i>'`` -> ``('<layer>', i)``; ``None`` for every other key."""
    match = _AUX_WEIGHT_KEY.match(key)
    return (match.group(1) or "", int(match.group(2))) if match else None


def is_lambdas_key(key: str) -> bool:
    return key == LAMBDAS or key.endswith("." + LAMBDAS)


def _summed_weight(weight: Tensor, lambdas: Tensor, aux_weights: Sequence[Tensor],
                   dtype: Optional[torch.dtype] = None) -> Tensor:
    """``W + Σ λ_i W_aux_i`` in ``dtype`` (``weight``'s by default), differentiable in W, λ and the aux weights.

    ``addcmul`` rather than ``W + λ·W_aux``: on a GPU an eager pathway step is bound by the host issuing kernels,
    and this runs for every layer every step.  It is one kernel instead of two, and its backward hands the gradient
    itself to ``W`` (the sum's autograd must copy it, because λ's backward reads it too; benchmarks/README §5).
    With one aux, λ (shape (1,)) is broadcast rather than unbound, which saves an operator per layer.
    """
    dtype = weight.dtype if dtype is None else dtype
    lambdas = _cast(lambdas, dtype)
    if len(aux_weights) == 1:
        return torch.addcmul(_cast(weight, dtype), _cast(aux_weights[0], dtype), lambdas)
    summed = _cast(weight, dtype)
    for aux, scale in zip(aux_weights, lambdas.unbind()):
        summed = torch.addcmul(summed, _cast(aux, dtype), scale)
    return summed


def _cast(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """``tensor.to(dtype)`` without the call when it would return ``tensor`` (the call alone costs microseconds)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _lambda_grads(grad_summed: Tensor, aux_weights: Sequence[Tensor]) -> Tensor:
    """``∂L/∂λ_i = <∂L/∂W_eff, W_aux_i>`` for every aux at once, as one fp64 matrix-vector product.

    These sums cancel: on ViT-B layers ``Σ|g·a|`` reaches 10⁶ × ``|Σ g·a|``, where an fp32 dot is off by up to
    2e-2 (autograd's fp32 sum, the reference code's, by ~5e-4).  In fp64 every product of two fp32 (or bf16) values
    is exact and the sum keeps ~10 digits after the largest cancellation seen.  The price: transient fp64 copies of
    the gradient and the aux weights, and two more kernels per layer than an fp32 dot.
    """
    numel = grad_summed.numel()
    if len(aux_weights) == 1:
        stacked = aux_weights[0].reshape(1, numel).double()
    else:  # stacked straight into fp64, without an fp32 stack of the aux weights first
        stacked = torch.cat([aux.reshape(1, numel) for aux in aux_weights],
                            out=grad_summed.new_empty((len(aux_weights), numel), dtype=torch.float64))
    return torch.mv(stacked, grad_summed.reshape(numel).double())


class _PathwayLinearFunction(torch.autograd.Function):
    """``x (W + Σ λ_i W_aux_i)ᵀ + b`` that keeps no summed weight alive between forward and backward.

    Used when the matmul runs in the weights' own precision (fp32 training, or bf16 weights), where plain autograd
    on ``F.linear(x, W + Σ λ W_aux)`` would save a full-precision summed weight per layer for the whole step
    (+100% of the aux weights in peak memory).  Backward recomputes the sum instead (one elementwise pass per aux)
    and computes ``∂L/∂λ_i = <∂L/∂W_eff, W_aux_i>`` as an fp64 dot product (``_lambda_grads``); weight
    gradients come back in the parameters' own dtypes.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Optional[Tensor], lambdas: Tensor,
                compute_dtype: torch.dtype, *aux_weights: Tensor) -> Tensor:
        input_dtype = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(compute_dtype)
            summed = _summed_weight(weight, lambdas, aux_weights).to(compute_dtype)
            out = F.linear(x, summed, bias.to(compute_dtype) if bias is not None else None)
        ctx.save_for_backward(x, weight, lambdas, *aux_weights)
        ctx.input_dtype = input_dtype
        ctx.compute_dtype = compute_dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Optional[Tensor], ...]:
        x, weight, lambdas, *aux_weights = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x = grad_weight = grad_bias = grad_lambdas = None
        grad_aux: list[Optional[Tensor]] = [None] * len(aux_weights)
        with torch.autocast(grad_out.device.type, enabled=False):
            grad_out = grad_out.to(ctx.compute_dtype)
            if needs[0]:
                summed = _summed_weight(weight, lambdas, aux_weights).to(ctx.compute_dtype)
                grad_x = grad_out.matmul(summed).to(ctx.input_dtype)
                del summed
            grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
            if needs[2]:
                grad_bias = grad_2d.sum(0).to(ctx.bias_dtype)
            if needs[1] or needs[3] or any(needs[5:]):
                grad_summed = grad_2d.t().mm(x.reshape(-1, x.shape[-1])).to(weight.dtype)
                if needs[1]:
                    grad_weight = grad_summed
                if needs[3]:
                    grad_lambdas = _lambda_grads(grad_summed, aux_weights).to(lambdas.dtype)
                for i, aux in enumerate(aux_weights):
                    if needs[5 + i]:
                        grad_aux[i] = (lambdas[i].to(weight.dtype) * grad_summed).to(aux.dtype)
        return (grad_x, grad_weight, grad_bias, grad_lambdas, None, *grad_aux)


class PathwayLinear(nn.Module):
    """A linear layer whose weight is ``W + Σ λ_i W_aux_i``; a drop-in for the ``nn.Linear`` it wraps.

    State dict keys: ``weight``, ``bias`` (when the target has one), ``lambdas`` (one per aux) and
    ``aux_weight_<i>``: always for trained aux, for frozen aux only with ``save_aux`` (otherwise the caller keeps
    them by reference, e.g. a file path and hash).  A layer with one aux also loads the reference code's keys
    (``cross_modal_scale``, ``aux_weight``: ``REFERENCE_KEYS``), so the reference's state dicts load ``strict=True``.

    ``merge_`` folds ``λ·W_aux`` into ``weight`` in place, as PEFT does with LoRA: an unsaved flag, and a plain
    ``F.linear`` while merged (λ and the aux weights are then not used, so merge for inference, not training).
    A state dict is always that of the unmerged layer, so it loads right into any ``PathwayLinear``.
    """

    def __init__(
        self,
        linear: nn.Linear,
        aux_weights: Sequence[Tensor],
        lambda_init: float = 0.0,
        aux_trainable: bool = True,
        save_aux: bool = True,
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
        # The aux attribute names, built once: `aux_weights()` runs for every layer every step.
        self._aux_names = tuple(aux_weight_name(i) for i in range(len(aux_weights)))
        for i, (name, w) in enumerate(zip(self._aux_names, aux_weights)):
            if tuple(w.shape) != tuple(self.weight.shape):
                raise ValueError(
                    f"aux weight {i} has shape {tuple(w.shape)}, expected the target's {tuple(self.weight.shape)}"
                )
            w = w.detach().to(device=self.weight.device, dtype=self.weight.dtype).clone()
            if aux_trainable:
                self.register_parameter(name, nn.Parameter(w))
            else:
                self.register_buffer(name, w, persistent=save_aux)
        self.lambdas = nn.Parameter(
            torch.full((self.num_aux,), float(lambda_init), device=self.weight.device, dtype=torch.float32)
        )
        # The λ folded in by `merge_` (so `unmerge_` subtracts exactly that), None while unmerged; a buffer so it
        # follows `.to()`, never saved.
        self.register_buffer("_merged_lambdas", None, persistent=False)

    @property
    def num_aux(self) -> int:
        return len(self._aux_names)

    @property
    def is_merged(self) -> bool:
        return self._merged_lambdas is not None

    def aux_weights(self) -> list[Tensor]:
        return [getattr(self, name) for name in self._aux_names]

    def effective_weight(self) -> Tensor:
        """The weight the layer computes with (differentiable in W, λ and trained aux unless merged)."""
        if self.is_merged:
            return self.weight
        return _summed_weight(self.weight, self.lambdas, self.aux_weights())

    def forward(self, x: Tensor) -> Tensor:
        if self.is_merged:
            return F.linear(x, self.weight, self.bias)
        # This runs for every layer every step, and an eager GPU step is bound by the host: the checks stay few.
        device_type = x.device.type
        autocast = torch.is_autocast_enabled(device_type)
        compute_dtype = torch.get_autocast_dtype(device_type) if autocast else x.dtype
        if autocast and compute_dtype.itemsize < self.weight.dtype.itemsize or torch.compiler.is_compiling():
            # The plain expression, where it is the cheaper one.  Under autocast the summed weight autograd keeps
            # for backward is the bf16/fp16 copy the matmul used (half the fp32 aux bytes at most), and the
            # backward runs in C++: on an H100 this is faster than the custom function (benchmarks/README §5).
            # Under torch.compile the compiler fuses sum and cast and recomputes the sum for backward.
            return F.linear(x, _summed_weight(self.weight, self.lambdas, self.aux_weights()), self.bias)
        return _PathwayLinearFunction.apply(
            x, self.weight, self.bias, self.lambdas, compute_dtype, *self.aux_weights()
        )

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.is_merged:
            destination[prefix + "weight"] = self._unmerged_weight()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:  # type: ignore[override]
        """Also reads the reference code's keys, so its state dicts load ``strict=True`` into a model of ours."""
        found = [name for name in REFERENCE_KEYS if prefix + name in state_dict]
        layer = f"pathway layer '{prefix[:-1]}'" if prefix else "the pathway layer"
        reference = [prefix + name for name in found]
        ours = [prefix + REFERENCE_KEYS[name] for name in found if prefix + REFERENCE_KEYS[name] in state_dict]
        if found and self.num_aux != 1:
            error_msgs.append(
                f"{layer} has {self.num_aux} auxiliary weights, but the state dict holds the reference code's "
                f"one-aux keys {reference}; only a layer with one auxiliary model can load them"
            )
        elif ours:
            error_msgs.append(f"{layer}: the state dict holds both the reference code's keys {reference} and {ours}")
        else:
            for name in found:
                state_dict[prefix + REFERENCE_KEYS[name]] = state_dict.pop(prefix + name)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._merged_lambdas = None  # what was loaded is an unmerged weight (see `_save_to_state_dict`)

    @torch.no_grad()
    def _unmerged_weight(self) -> Tensor:
        """``weight`` minus what ``merge_`` folded into it, subtracted in fp32."""
        weight = _summed_weight(self.weight, -self._merged_lambdas, self.aux_weights(), torch.float32)
        return weight.to(self.weight.dtype)

    @torch.no_grad()
    def _folded_weight(self) -> Tensor:
        """``W + Σ λ W_aux`` accumulated in fp32 (bf16/fp16 sums lose the small λ·W_aux term) and checked."""
        if self.is_merged:
            return self.weight.float()
        w = _summed_weight(self.weight, self.lambdas, self.aux_weights(), torch.float32)
        if not torch.isfinite(w).all():
            raise FloatingPointError(
                "folding λ·W_aux into the weight gives non-finite values "
                f"(λ={self.lambdas.tolist()}); refusing to merge"
            )
        return w

    @torch.no_grad()
    def merge_(self) -> "PathwayLinear":
        """Fold the current ``λ·W_aux`` into ``weight`` in place; a no-op when already merged."""
        if self.is_merged:
            return self
        self.weight.copy_(self._folded_weight().to(self.weight.dtype))
        self._merged_lambdas = self.lambdas.detach().float().clone()
        return self

    @torch.no_grad()
    def unmerge_(self) -> "PathwayLinear":
        """Undo ``merge_`` (subtracting what was folded in, in fp32); a no-op when not merged."""
        if self.is_merged:
            self.weight.copy_(self._unmerged_weight())
            self._merged_lambdas = None
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
