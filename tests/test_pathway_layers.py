"""PathwayLinear on its own: the computation, dtypes, freezing, several aux models, merge/unmerge/fuse."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from pathway.layers import PathwayLinear


def _linear(bias: bool = True, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(6, 4, bias=bias).to(dtype)


def _aux(seed: int, shape=(4, 6)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _x(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(5, 6, generator=torch.Generator().manual_seed(99)).to(dtype)


@pytest.mark.parametrize("bias", [True, False])
def test_computes_weight_plus_lambda_aux(bias: bool) -> None:
    linear = _linear(bias)
    w, b = linear.weight.detach().clone(), None if linear.bias is None else linear.bias.detach().clone()
    aux = _aux(1)
    layer = PathwayLinear(linear, [aux], lambda_init=0.3)
    expected = _x() @ (w + 0.3 * aux).T + (b if b is not None else 0)
    torch.testing.assert_close(layer(_x()), expected, atol=1e-6, rtol=0)
    assert (layer.bias is None) == (not bias)
    assert ("bias" in layer.state_dict()) == bias


def test_lambda_init_value_and_zero_is_identity() -> None:
    linear = _linear()
    ref = linear(_x()).detach()
    layer = PathwayLinear(linear, [_aux(1)], lambda_init=0.0)
    assert layer.lambdas.dtype == torch.float32
    assert layer.lambdas.tolist() == [0.0]
    assert torch.equal(layer(_x()), ref)
    assert PathwayLinear(_linear(), [_aux(1), _aux(2)], lambda_init=0.25).lambdas.tolist() == [0.25, 0.25]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtypes(dtype: torch.dtype) -> None:
    linear = _linear(dtype=dtype)
    aux = _aux(1)
    layer = PathwayLinear(linear, [aux], lambda_init=0.5)
    assert layer.aux_weight_0.dtype == dtype
    out = layer(_x(dtype))
    assert out.dtype == dtype
    ref = _x() @ (linear.weight.float() + 0.5 * aux.to(dtype).float()).T + linear.bias.float()
    tol = 1e-5 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=0)


def test_fp16_forward() -> None:
    linear = _linear(dtype=torch.float16)
    layer = PathwayLinear(linear, [_aux(1)], lambda_init=0.5)
    out = layer(_x(torch.float16))
    assert out.dtype == torch.float16
    ref = _x() @ (linear.weight.float() + 0.5 * _aux(1).half().float()).T + linear.bias.float()
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0)


def test_autocast_bf16_forward_and_grad() -> None:
    linear = _linear()
    aux = _aux(1)
    layer = PathwayLinear(linear, [aux], lambda_init=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(_x())
    assert out.dtype == torch.bfloat16
    ref = _x() @ (linear.weight.detach() + 0.5 * aux).T + linear.bias.detach()
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0)
    out.float().sum().backward()
    assert layer.lambdas.grad is not None and layer.lambdas.grad.abs().sum() > 0


@pytest.mark.parametrize("bias", [True, False])
def test_gradients_match_plain_autograd(bias: bool) -> None:
    # 3-D input (batch, tokens, features) as in a ViT block; two trainable aux models.
    linear = _linear(bias).double()
    auxes = [_aux(1).double(), _aux(2).double()]
    layer = PathwayLinear(linear, auxes, lambda_init=0.0, aux_trainable=True)
    with torch.no_grad():
        layer.lambdas.copy_(torch.tensor([0.3, -0.6]))
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 3, 4, dtype=torch.float64)
    layer(x).backward(grad_out)

    w = linear.weight.detach().clone().requires_grad_()
    b = linear.bias.detach().clone().requires_grad_() if bias else None
    lam = torch.tensor([0.3, -0.6], dtype=torch.float64, requires_grad=True)
    a = [t.clone().requires_grad_() for t in auxes]
    x_ref = x.detach().clone().requires_grad_()
    torch.nn.functional.linear(x_ref, w + lam[0] * a[0] + lam[1] * a[1], b).backward(grad_out)

    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.weight.grad, w.grad)
    torch.testing.assert_close(layer.lambdas.grad, lam.grad.float())
    torch.testing.assert_close(layer.aux_weight_0.grad, a[0].grad)
    torch.testing.assert_close(layer.aux_weight_1.grad, a[1].grad)
    if bias:
        torch.testing.assert_close(layer.bias.grad, b.grad)


def test_aux_trained_by_default_as_in_the_reference_code() -> None:
    """The reference `CrossModalReparamLinear(is_aux_trainable=True)` registers the aux weight as a Parameter."""
    layer = PathwayLinear(_linear(), [_aux(1)], lambda_init=0.1)
    params = dict(layer.named_parameters())
    assert isinstance(params.get("aux_weight_0"), nn.Parameter)
    assert "aux_weight_0" not in dict(layer.named_buffers())
    assert "aux_weight_0" in layer.state_dict()
    layer(_x()).sum().backward()
    assert layer.aux_weight_0.grad is not None and layer.aux_weight_0.grad.abs().sum() > 0


@pytest.mark.parametrize("save_aux", [True, False])
def test_frozen_aux_is_a_buffer_saved_only_with_save_aux(save_aux: bool) -> None:
    layer = PathwayLinear(_linear(), [_aux(1)], lambda_init=0.1, aux_trainable=False, save_aux=save_aux)
    param_names = {n for n, _ in layer.named_parameters()}
    assert param_names == {"weight", "bias", "lambdas"}
    assert "aux_weight_0" in dict(layer.named_buffers())
    assert ("aux_weight_0" in layer.state_dict()) == save_aux
    assert set(layer.state_dict()) - {"aux_weight_0"} == {"weight", "bias", "lambdas"}  # no merge bookkeeping
    fresh = PathwayLinear(_linear(seed=3), [_aux(1)], aux_trainable=False, save_aux=save_aux)
    fresh.load_state_dict(layer.state_dict(), strict=True)
    layer(_x()).sum().backward()
    assert not layer.aux_weight_0.requires_grad and layer.aux_weight_0.grad is None
    assert layer.lambdas.grad is not None and layer.lambdas.grad.abs().sum() > 0
    assert layer.weight.grad is not None


def test_aux_weights_are_copies() -> None:
    aux = _aux(1)
    layer = PathwayLinear(_linear(), [aux], lambda_init=0.1)
    aux.add_(100.0)
    assert not torch.equal(layer.aux_weight_0, aux)


def test_several_aux_have_one_lambda_each_and_each_matters() -> None:
    linear = _linear()
    w, b = linear.weight.detach().clone(), linear.bias.detach().clone()
    auxes = [_aux(1), _aux(2), _aux(3)]
    layer = PathwayLinear(linear, auxes, lambda_init=0.0)
    assert layer.num_aux == 3 and layer.lambdas.shape == (3,)
    with torch.no_grad():
        layer.lambdas.copy_(torch.tensor([0.1, -0.2, 0.3]))
    expected = _x() @ (w + 0.1 * auxes[0] - 0.2 * auxes[1] + 0.3 * auxes[2]).T + b
    torch.testing.assert_close(layer(_x()), expected, atol=1e-5, rtol=0)
    base = layer(_x()).detach()
    for i in range(3):
        with torch.no_grad():
            layer.lambdas[i] += 0.5
        assert not torch.allclose(layer(_x()), base, atol=1e-4), f"aux {i} has no effect"
        with torch.no_grad():
            layer.lambdas[i] -= 0.5
    layer(_x()).sum().backward()
    assert (layer.lambdas.grad != 0).all()


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"aux weight 1 has shape \(6, 4\)"):
        PathwayLinear(_linear(), [_aux(1), _aux(2, shape=(6, 4))])
    with pytest.raises(ValueError, match="at least one"):
        PathwayLinear(_linear(), [])
    with pytest.raises(TypeError, match="nn.Linear"):
        PathwayLinear(nn.Conv1d(6, 4, 1), [_aux(1)])  # type: ignore[arg-type]


@pytest.mark.parametrize("bias", [True, False])
def test_merge_unmerge_idempotent_and_reversible(bias: bool) -> None:
    layer = PathwayLinear(_linear(bias), [_aux(1), _aux(2)], lambda_init=0.4)
    w0 = layer.weight.detach().clone()
    ref = layer(_x()).detach()
    layer.merge_()
    assert layer.is_merged
    w_merged = layer.weight.detach().clone()
    assert not torch.allclose(w_merged, w0)
    torch.testing.assert_close(w_merged, w0 + 0.4 * (_aux(1) + _aux(2)), atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(_x()), ref, atol=1e-5, rtol=0)
    layer.merge_()
    assert torch.equal(layer.weight, w_merged), "a second merge_ folded λ·W_aux in again"
    torch.testing.assert_close(layer(_x()), ref, atol=1e-5, rtol=0)
    layer.unmerge_()
    assert not layer.is_merged
    torch.testing.assert_close(layer.weight, w0, atol=1e-6, rtol=0)
    layer.unmerge_()
    torch.testing.assert_close(layer.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(_x()), ref, atol=1e-5, rtol=0)


def test_merged_forward_is_a_plain_linear_and_unmerge_subtracts_what_was_folded() -> None:
    aux = _aux(1)
    layer = PathwayLinear(_linear(), [aux], lambda_init=0.4)
    w0 = layer.weight.detach().clone()
    layer.merge_()
    with torch.no_grad():
        layer.lambdas.fill_(-0.3)
    x = _x().requires_grad_()
    out = layer(x)
    assert out.grad_fn.name() == "AddmmBackward0", "merged forward must not run the pathway function"
    torch.testing.assert_close(out, x @ (w0 + 0.4 * aux).T + layer.bias, atol=1e-5, rtol=0)
    layer.unmerge_()
    torch.testing.assert_close(layer.weight, w0, atol=1e-6, rtol=0)
    expected = _x() @ (w0 - 0.3 * aux).T + layer.bias.detach()
    torch.testing.assert_close(layer(_x()), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_fuse_returns_equal_linear(bias: bool) -> None:
    layer = PathwayLinear(_linear(bias), [_aux(1), _aux(2)], lambda_init=0.0)
    with torch.no_grad():
        layer.lambdas.copy_(torch.tensor([0.7, -0.2]))
    fused = layer.fuse()
    assert type(fused) is nn.Linear
    assert (fused.bias is None) == (not bias)
    torch.testing.assert_close(fused(_x()), layer(_x()), atol=1e-5, rtol=0)
    assert not torch.allclose(fused.weight, layer.weight, atol=1e-3)
    layer.merge_()
    torch.testing.assert_close(layer.fuse()(_x()), fused(_x()), atol=1e-5, rtol=0)


def test_bf16_merge_accumulates_in_fp32() -> None:
    # λ·W_aux formed and summed in bf16 (8-bit mantissa) rounds twice; folding must round once, from fp32.
    torch.manual_seed(0)
    linear = nn.Linear(64, 64, bias=False).to(torch.bfloat16)
    auxes = [_aux(1, (64, 64)).to(torch.bfloat16), _aux(2, (64, 64)).to(torch.bfloat16)]
    lambdas = torch.tensor([0.3, -0.07])
    layer = PathwayLinear(linear, auxes, lambda_init=0.0)
    with torch.no_grad():
        layer.lambdas.copy_(lambdas)
    w = linear.weight.detach()
    exact = w.double() + lambdas[0].double() * auxes[0].double() + lambdas[1].double() * auxes[1].double()
    reference = exact.to(torch.bfloat16)
    naive = w + lambdas[0].to(torch.bfloat16) * auxes[0] + lambdas[1].to(torch.bfloat16) * auxes[1]
    # fp32 accumulation rounds once (a handful of float64 ties may land on the other side); bf16 rounds everywhere.
    naive_wrong = int((naive != reference).sum())
    assert naive_wrong > 1000, "test premise: a bf16 accumulation is off in many entries"
    fused = layer.fuse()
    assert fused.weight.dtype == torch.bfloat16
    assert int((fused.weight != reference).sum()) <= 8
    torch.testing.assert_close(fused.weight.double(), exact, atol=2e-2, rtol=0)
    layer.merge_()
    assert int((layer.weight.detach() != reference).sum()) <= 8


def test_merge_refuses_non_finite() -> None:
    layer = PathwayLinear(_linear(), [_aux(1)], lambda_init=0.1)
    w0 = layer.weight.detach().clone()
    with torch.no_grad():
        layer.lambdas.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        layer.merge_()
    assert not layer.is_merged and torch.equal(layer.weight, w0)
    with pytest.raises(FloatingPointError):
        layer.fuse()


@pytest.mark.parametrize("aux_trainable", [True, False])
def test_state_dict_of_a_merged_layer_is_the_unmerged_layer(aux_trainable: bool) -> None:
    aux = _aux(1)
    layer = PathwayLinear(_linear(seed=0), [aux], lambda_init=0.6, aux_trainable=aux_trainable)
    ref = layer(_x()).detach()
    layer.merge_()
    state = layer.state_dict()
    assert set(state) == {"weight", "bias", "lambdas", "aux_weight_0"}
    torch.testing.assert_close(state["weight"], _linear(seed=0).weight, atol=1e-6, rtol=0)
    assert layer.is_merged and not torch.allclose(layer.weight, state["weight"]), "saving must not unmerge the layer"
    fresh = PathwayLinear(_linear(seed=5), [_aux(9)], lambda_init=0.0, aux_trainable=aux_trainable)
    fresh.load_state_dict(state)
    assert not fresh.is_merged
    torch.testing.assert_close(fresh(_x()), ref, atol=1e-5, rtol=0)
    # Loading into a merged layer leaves it unmerged with the loaded weights (no stale fold to subtract later).
    other = PathwayLinear(_linear(seed=7), [aux], lambda_init=0.2, aux_trainable=aux_trainable).merge_()
    other.load_state_dict(state)
    assert not other.is_merged
    torch.testing.assert_close(other(_x()), ref, atol=1e-5, rtol=0)
    other.unmerge_()
    torch.testing.assert_close(other(_x()), ref, atol=1e-5, rtol=0)


def _saved_weight_shaped(layer: PathwayLinear, autocast: bool) -> list[torch.Tensor]:
    """The weight-shaped tensors autograd keeps for the layer's backward, as (out, in) (matmuls save Wᵀ)."""
    saved: list[torch.Tensor] = []
    shape = tuple(layer.weight.shape)

    def pack(t: torch.Tensor) -> torch.Tensor:
        if tuple(t.shape) in (shape, shape[::-1]):
            saved.append(t if tuple(t.shape) == shape else t.t())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            layer(_x().requires_grad_())
    return saved


def test_backward_keeps_no_full_precision_summed_weight() -> None:
    # fp32: only W and the aux (already resident) are saved, the sum is recomputed in backward; under autocast the
    # layer is the plain expression and autograd keeps the bf16 copy the matmul used (half the fp32 bytes).
    layer = PathwayLinear(_linear(), [_aux(1), _aux(2)], lambda_init=0.5, aux_trainable=False)
    resident = {layer.weight.data_ptr(), layer.aux_weight_0.data_ptr(), layer.aux_weight_1.data_ptr()}
    fp32 = _saved_weight_shaped(layer, autocast=False)
    assert fp32 and {t.data_ptr() for t in fp32} <= resident
    bf16 = _saved_weight_shaped(layer, autocast=True)
    new = [t for t in bf16 if t.data_ptr() not in resident]
    assert [t.dtype for t in new] == [torch.bfloat16]
    expected = layer.effective_weight().detach().bfloat16()
    torch.testing.assert_close(new[0], expected, atol=0, rtol=0)


class _OpNames(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's protocol)
        self.names[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _autocast_step_ops(layer: nn.Module) -> Counter[str]:
    x = _x()
    with _OpNames() as ops:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        out.float().sum().backward()
    return ops.names


def test_autocast_step_hands_the_weight_its_gradient_without_a_copy() -> None:
    # An eager GPU step is bound by the host issuing kernels (benchmarks/README §5): beyond plain nn.Linear's, one
    # frozen aux costs the sum (1 op), λ's gradient (4) and its accumulation (1); W takes the gradient over as
    # nn.Linear's weight does, where `W + λ·W_aux` made autograd copy it into W.grad (λ's backward reads it too).
    plain = _autocast_step_ops(_linear())
    pathway = _autocast_step_ops(PathwayLinear(_linear(), [_aux(1)], lambda_init=0.3, aux_trainable=False))
    extra = pathway - plain
    assert "copy_" not in extra and "new_empty_strided" not in extra, extra
    assert sum(extra.values()) <= 6, extra


@pytest.mark.parametrize("autocast", [False, True])
def test_saved_and_recomputed_sum_give_plain_autograd_gradients(autocast: bool) -> None:
    linear = _linear()
    auxes = [_aux(1), _aux(2)]
    layer = PathwayLinear(linear, auxes, aux_trainable=True)
    with torch.no_grad():
        layer.lambdas.copy_(torch.tensor([0.3, -0.6]))
    x = _x().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        layer(x).float().square().sum().backward()

    w = linear.weight.detach().clone().requires_grad_()
    b = linear.bias.detach().clone().requires_grad_()
    lam = torch.tensor([0.3, -0.6], requires_grad=True)
    a = [t.clone().requires_grad_() for t in auxes]
    x_ref = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        torch.nn.functional.linear(x_ref, w + lam[0] * a[0] + lam[1] * a[1], b).float().square().sum().backward()
    for got, ref in [(x.grad, x_ref.grad), (layer.weight.grad, w.grad), (layer.bias.grad, b.grad),
                     (layer.lambdas.grad, lam.grad), (layer.aux_weight_0.grad, a[0].grad),
                     (layer.aux_weight_1.grad, a[1].grad)]:
        torch.testing.assert_close(got, ref, rtol=2e-2 if autocast else 1e-5, atol=2e-2 if autocast else 1e-5)


def test_compiled_layer_matches_eager() -> None:
    # Under torch.compile the layer is the plain expression (fused by the compiler): same values and gradients.
    eager = PathwayLinear(_linear(), [_aux(1)], lambda_init=0.4, aux_trainable=True)
    compiled_layer = PathwayLinear(_linear(), [_aux(1)], lambda_init=0.4, aux_trainable=True)
    compiled = torch.compile(compiled_layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(5))
    out_eager, out_compiled = eager(x), compiled(x)
    torch.testing.assert_close(out_compiled, out_eager)
    out_eager.square().sum().backward()
    out_compiled.square().sum().backward()
    for name, param in eager.named_parameters():
        torch.testing.assert_close(dict(compiled_layer.named_parameters())[name].grad, param.grad, msg=name)
    assert eager.lambdas.grad.abs().sum() > 0


def _cancelling_aux(grad_weight: torch.Tensor, ratio: float, seed: int) -> torch.Tensor:
    """An fp32 aux weight ``A`` with ``Σ|G·A|`` about ``ratio`` × ``|Σ G·A|`` for the weight gradient ``G``.

    A random ``A`` with its ``G`` component projected out (in fp64), plus a multiple of ``G`` that leaves the dot
    product at ``Σ|G·A| / ratio``: the cancellation ViT-B layers show (up to 10⁶) in λ's gradient.
    """
    g = grad_weight.double()
    a = torch.randn(g.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.3
    a = a - (g * a).sum() / (g * g).sum() * g
    return (a + (g * a).abs().sum() / ratio / (g * g).sum() * g).float()


@pytest.mark.parametrize("num_aux", [1, 2])
def test_lambda_grad_is_exact_under_cancellation(num_aux: int) -> None:
    # ∂L/∂λ = <G, W_aux> summed over a ViT-B-sized layer (2304 × 768) whose terms cancel 10⁵-10⁶-fold: an fp32
    # dot is off by 5e-4 to 2e-3 of the result here, the bar is 1e-4 of the fp64 gradient.  Small integer inputs
    # make the weight gradient G exact in fp32, so what is measured is the reduction alone.
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-8, 9, (8, 768), generator=gen).float()
    grad_out = torch.randint(-8, 9, (8, 2304), generator=gen).float()
    exact_grad_weight = grad_out.double().t().mm(x.double())
    auxes = [_cancelling_aux(exact_grad_weight, ratio, seed=i) for i, ratio in enumerate((1e6, 1e5)[:num_aux])]
    layer = PathwayLinear(nn.Linear(768, 2304), auxes, lambda_init=0.2, aux_trainable=False)
    layer(x).backward(grad_out)

    assert torch.equal(layer.weight.grad.double(), exact_grad_weight), "test premise: G is exact in fp32"
    for i, aux in enumerate(auxes):
        terms = exact_grad_weight * aux.double()
        exact = terms.sum()
        assert 5e4 < float(terms.abs().sum() / exact.abs()) < 5e6, "test premise: the terms cancel 1e5-1e6-fold"
        assert float(abs(layer.lambdas.grad[i].double() - exact) / exact.abs()) < 1e-4, f"λ_{i}"
