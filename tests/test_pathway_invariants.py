"""The correctness invariants 1-5 of DESIGN.md, checked on tiny timm ViTs."""
from __future__ import annotations

import copy
import io

import pytest
import timm
import torch
from timm.utils import reparameterize_model
from torch import nn

from conftest import make_vit
from pathway import (
    DEFAULT_LAYER_NAMES,
    PathwayLinear,
    fuse_pathway,
    merge_pathway_,
    pathway_layers,
    plain_state_dict,
    reparameterize_aux_into_target_model,
    set_lambdas,
    unmerge_pathway_,
)
from pathway.optim import layer_decay_param_groups

ATOL = 1e-5


def _randomize_lambdas(model: nn.Module, seed: int = 3) -> None:
    """A different nonzero λ per layer (and per aux), so a mix-up between layers cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in pathway_layers(model):
            layer.lambdas.copy_(0.2 + 0.6 * torch.rand(layer.num_aux, generator=gen))


def _pathway_vit(lambda_init: float = 0.0, aux_seeds=(123,), **overrides) -> nn.Module:
    target = make_vit(seed=0, **overrides)
    auxes = [make_vit(seed=s, num_classes=7, **overrides) for s in aux_seeds]
    return reparameterize_aux_into_target_model(target, auxes if len(auxes) > 1 else auxes[0], lambda_init=lambda_init)


def _nonzero_lambda_vit(merged: bool = False) -> nn.Module:
    """``_pathway_vit`` with ``_randomize_lambdas``'s λ, merged in place if asked."""
    model = _pathway_vit()
    _randomize_lambdas(model)
    return merge_pathway_(model) if merged else model


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_layers_are_replaced_and_weights_differ(tiny_input: torch.Tensor) -> None:
    model = _pathway_vit()
    names = [name for name, _ in pathway_layers(model)]
    assert names == [f"blocks.{i}.{layer}" for i in range(2) for layer in DEFAULT_LAYER_NAMES]
    aux = make_vit(seed=123, num_classes=7)
    for name, layer in pathway_layers(model):
        assert torch.equal(layer.aux_weight_0, aux.get_submodule(name).weight)
        assert not torch.allclose(layer.weight, layer.aux_weight_0)


# --- invariant 1 ----------------------------------------------------------------------------------------------
def test_lambda_zero_equals_target_exactly(tiny_input: torch.Tensor) -> None:
    target = make_vit(seed=0)
    with torch.no_grad():
        expected = target(tiny_input)
    model = reparameterize_aux_into_target_model(copy.deepcopy(target), make_vit(seed=123, num_classes=7))
    assert sum(1 for _ in pathway_layers(model)) == 8
    with torch.no_grad():
        assert torch.equal(model(tiny_input), expected)


# --- invariant 2 ----------------------------------------------------------------------------------------------
def test_unmerged_merged_fused_agree_and_differ_from_target(tiny_input: torch.Tensor) -> None:
    target_out = make_vit(seed=0)(tiny_input).detach()
    model = _nonzero_lambda_vit()
    with torch.no_grad():
        unmerged = model(tiny_input)
        assert (unmerged - target_out).abs().max() > 1e-3, "λ ≠ 0 must change the output"

        merged_model = merge_pathway_(copy.deepcopy(model))
        assert all(layer.is_merged for _, layer in pathway_layers(merged_model))
        torch.testing.assert_close(merged_model(tiny_input), unmerged, atol=ATOL, rtol=0)

        fused = fuse_pathway(model)
        assert any(isinstance(m, PathwayLinear) for m in model.modules()), "fuse_pathway(inplace=False) changed the model"
        torch.testing.assert_close(fused(tiny_input), unmerged, atol=ATOL, rtol=0)

        timm_fused = reparameterize_model(model)
        assert not any(isinstance(m, PathwayLinear) for m in timm_fused.modules())
        torch.testing.assert_close(timm_fused(tiny_input), unmerged, atol=ATOL, rtol=0)

        fused_in_place = fuse_pathway(copy.deepcopy(model), inplace=True)
        torch.testing.assert_close(fused_in_place(tiny_input), unmerged, atol=ATOL, rtol=0)


def test_fused_model_is_plain(tiny_input: torch.Tensor) -> None:
    model = _nonzero_lambda_vit()
    for fused in (fuse_pathway(model), reparameterize_model(model)):
        assert not any(isinstance(m, PathwayLinear) for m in fused.modules())
        for name in (f"blocks.{i}.{layer}" for i in range(2) for layer in DEFAULT_LAYER_NAMES):
            assert type(fused.get_submodule(name)) is nn.Linear
        keys = list(fused.state_dict())
        assert not [k for k in keys if "aux_weight" in k or "lambdas" in k or "merged" in k]
        assert set(keys) == set(make_vit().state_dict())


def test_merge_is_idempotent_and_reversible(tiny_input: torch.Tensor) -> None:
    model = _nonzero_lambda_vit()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(tiny_input)
        merge_pathway_(model)
        once = {k: v.clone() for k, v in model.state_dict().items()}
        assert not torch.equal(once["blocks.0.attn.qkv.weight"], original["blocks.0.attn.qkv.weight"])
        merge_pathway_(model)
        for key, value in model.state_dict().items():
            assert torch.equal(value, once[key]), f"second merge changed {key}"
        torch.testing.assert_close(model(tiny_input), expected, atol=ATOL, rtol=0)
        unmerge_pathway_(model)
        unmerge_pathway_(model)
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, original[key], atol=1e-6, rtol=0, msg=f"unmerge did not restore {key}")
        torch.testing.assert_close(model(tiny_input), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("merged", [False, True])
def test_pathway_state_dict_round_trip(tiny_input: torch.Tensor, merged: bool) -> None:
    model = _nonzero_lambda_vit(merged)
    with torch.no_grad():
        expected = model(tiny_input)
    state = _roundtrip(model.state_dict())
    # A fresh pathway model from other target and aux weights: everything must come from the state dict.
    fresh = reparameterize_aux_into_target_model(make_vit(seed=50), make_vit(seed=51, num_classes=7))
    fresh.load_state_dict(state, strict=True)
    assert not any(layer.is_merged for _, layer in pathway_layers(fresh)), "a state dict is always the unmerged one"
    with torch.no_grad():
        torch.testing.assert_close(fresh(tiny_input), expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(
            fresh.blocks[0].mlp.fc1.weight, make_vit(seed=0).blocks[0].mlp.fc1.weight, atol=1e-6, rtol=0
        )


@pytest.mark.parametrize("merge_first", [False, True])
def test_plain_and_fused_state_dicts_load_strict_into_plain_vit(tiny_input: torch.Tensor, merge_first: bool) -> None:
    model = _nonzero_lambda_vit(merge_first)
    with torch.no_grad():
        expected = model(tiny_input)
    for state in (plain_state_dict(model), fuse_pathway(model).state_dict()):
        assert not [k for k in state if "aux_weight" in k or "lambdas" in k or "merged" in k]
        plain = make_vit(seed=77)
        plain.load_state_dict(_roundtrip(state), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(plain(tiny_input), expected, atol=ATOL, rtol=0)
    assert any(isinstance(m, PathwayLinear) for m in model.modules()), "plain_state_dict must not change the model"


def test_several_aux_models_each_get_a_lambda(tiny_input: torch.Tensor) -> None:
    model = _pathway_vit(aux_seeds=(123, 124))
    for _, layer in pathway_layers(model):
        assert layer.num_aux == 2 and layer.lambdas.shape == (2,)
    _randomize_lambdas(model)
    with torch.no_grad():
        base = model(tiny_input)
        torch.testing.assert_close(fuse_pathway(model)(tiny_input), base, atol=ATOL, rtol=0)
        layer = model.blocks[1].mlp.fc1
        for i in range(2):
            layer.lambdas[i] += 1.0
            assert (model(tiny_input) - base).abs().max() > 1e-4, f"aux {i} not on the forward path"
            layer.lambdas[i] -= 1.0


def test_aux_that_is_a_pathway_model_contributes_its_effective_weight() -> None:
    inner = _nonzero_lambda_vit()
    model = reparameterize_aux_into_target_model(make_vit(seed=9), inner)
    fused_inner = fuse_pathway(inner)
    for name, layer in pathway_layers(model):
        torch.testing.assert_close(layer.aux_weight_0, fused_inner.get_submodule(name).weight, atol=1e-6, rtol=0)


# --- invariant 3 ----------------------------------------------------------------------------------------------
def test_every_wrapped_layer_is_on_the_forward_path(tiny_input: torch.Tensor) -> None:
    model = _pathway_vit(lambda_init=0.0)
    with torch.no_grad():
        base = model(tiny_input)
    layers = list(pathway_layers(model))
    assert len(layers) == 8
    for name, layer in layers:
        with torch.no_grad():
            layer.lambdas.fill_(0.5)
            changed = (model(tiny_input) - base).abs().max().item()
            layer.lambdas.fill_(0.0)
        assert changed > 1e-5, f"changing λ of {name} did not change the output"


# --- invariant 4 ----------------------------------------------------------------------------------------------
def test_bias_less_attention(tiny_input: torch.Tensor) -> None:
    target = make_vit(seed=0, qkv_bias=False)
    assert target.blocks[0].attn.qkv.bias is None
    with torch.no_grad():
        target_out = target(tiny_input)
    model = reparameterize_aux_into_target_model(copy.deepcopy(target), make_vit(seed=123, num_classes=7, qkv_bias=False))
    qkv = model.blocks[0].attn.qkv
    assert isinstance(qkv, PathwayLinear) and qkv.bias is None
    assert "blocks.0.attn.qkv.bias" not in model.state_dict()
    with torch.no_grad():
        assert torch.equal(model(tiny_input), target_out)
        _randomize_lambdas(model)
        unmerged = model(tiny_input)
        assert (unmerged - target_out).abs().max() > 1e-3
        fused = fuse_pathway(model)
        assert fused.blocks[0].attn.qkv.bias is None
        torch.testing.assert_close(fused(tiny_input), unmerged, atol=ATOL, rtol=0)
        plain = make_vit(seed=5, qkv_bias=False)
        plain.load_state_dict(plain_state_dict(model), strict=True)
        torch.testing.assert_close(plain(tiny_input), unmerged, atol=ATOL, rtol=0)
        merge_pathway_(model)
        torch.testing.assert_close(model(tiny_input), unmerged, atol=ATOL, rtol=0)
        unmerge_pathway_(model)
        torch.testing.assert_close(model.blocks[1].attn.qkv.weight, target.blocks[1].attn.qkv.weight, atol=1e-6, rtol=0)


def test_bias_less_target_with_biased_aux(tiny_input: torch.Tensor) -> None:
    model = reparameterize_aux_into_target_model(make_vit(seed=0, qkv_bias=False), make_vit(seed=123, num_classes=7))
    _randomize_lambdas(model)
    with torch.no_grad():
        torch.testing.assert_close(fuse_pathway(model)(tiny_input), model(tiny_input), atol=ATOL, rtol=0)


# --- invariant 5 ----------------------------------------------------------------------------------------------
def _group_of(groups: list[dict], tensor: torch.Tensor) -> list[dict]:
    return [g for g in groups if any(p is tensor for p in g["params"])]


def test_frozen_aux_gets_no_optimizer_state_and_lambda_no_weight_decay(tiny_input: torch.Tensor) -> None:
    model = reparameterize_aux_into_target_model(
        make_vit(seed=0), make_vit(seed=123, num_classes=7), lambda_init=0.1, aux_trainable=False
    )
    params = dict(model.named_parameters())
    assert not [n for n in params if "aux_weight" in n]
    assert len([n for n in params if n.endswith("lambdas")]) == 8
    model(tiny_input).sum().backward()
    groups = layer_decay_param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    grouped = [p for g in groups for p in g["params"]]
    for name, layer in pathway_layers(model):
        aux = layer.aux_weight_0
        assert not aux.requires_grad and aux.grad is None, name
        assert not any(p is aux for p in grouped), f"{name} aux weight in an optimizer group"
        lam_groups = _group_of(groups, layer.lambdas)
        assert len(lam_groups) == 1 and lam_groups[0]["weight_decay"] == 0.0, f"{name} λ is weight-decayed"
        weight_groups = _group_of(groups, layer.weight)
        assert len(weight_groups) == 1 and weight_groups[0]["weight_decay"] == 0.05, f"{name} weight not decayed"
    assert len(grouped) == len(list(model.parameters())) == len({id(p) for p in grouped})
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    optimizer.step()
    state_ids = {id(p) for p in optimizer.state}
    assert not any(id(layer.aux_weight_0) in state_ids for _, layer in pathway_layers(model))
    assert all(id(layer.lambdas) in state_ids for _, layer in pathway_layers(model))


@pytest.mark.parametrize("lambda_lr_scale", [1.0, 10.0])
def test_trained_aux_get_their_blocks_lr_and_weight_decay_lambda_none(
    tiny_input: torch.Tensor, lambda_lr_scale: float
) -> None:
    """As in the reference fine-tuning: aux weights are weights of their block (weight decay 0.05, the block's
    layer-decay lr scale); only λ escapes weight decay, at its block's lr times ``lambda_lr_scale``."""
    model = reparameterize_aux_into_target_model(make_vit(seed=0), make_vit(seed=123, num_classes=7), lambda_init=0.1)
    model(tiny_input).sum().backward()
    groups = layer_decay_param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5,
                                      lambda_lr_scale=lambda_lr_scale)
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len(list(model.parameters())) == len({id(p) for p in grouped})
    block_scales = {}
    for name, layer in pathway_layers(model):
        block = int(name.split(".")[1])
        assert layer.aux_weight_0.requires_grad and layer.aux_weight_0.grad is not None, name
        (aux_group,) = _group_of(groups, layer.aux_weight_0)
        (weight_group,) = _group_of(groups, layer.weight)
        (lam_group,) = _group_of(groups, layer.lambdas)
        assert aux_group["weight_decay"] == 0.05, f"{name} trained aux gets no weight decay"
        assert aux_group["lr_scale"] == weight_group["lr_scale"], f"{name} aux lr scale is not its block's"
        assert lam_group["weight_decay"] == 0.0, f"{name} λ is weight-decayed"
        assert lam_group["lr_scale"] == pytest.approx(weight_group["lr_scale"] * lambda_lr_scale)
        assert lam_group["lr"] == pytest.approx(1e-3 * lam_group["lr_scale"])
        block_scales[block] = aux_group["lr_scale"]
    # depth 2 + embeddings + head = 4 layer ids: block i has 0.5 ** (3 - (i + 1))
    assert block_scales == {0: pytest.approx(0.25), 1: pytest.approx(0.5)}


def test_depth_mismatch_is_an_error_naming_the_blocks() -> None:
    with pytest.raises(ValueError, match=r"depth mismatch.*'blocks' has 2 blocks.*auxiliary model 0 has 3"):
        reparameterize_aux_into_target_model(make_vit(seed=0), make_vit(seed=1, depth=3))
    with pytest.raises(ValueError, match=r"depth mismatch.*auxiliary model 1 has 3"):
        reparameterize_aux_into_target_model(make_vit(seed=0), [make_vit(seed=1), make_vit(seed=2, depth=3)])
    target = make_vit(seed=0)
    with pytest.raises(ValueError, match="depth mismatch"):
        reparameterize_aux_into_target_model(target, make_vit(seed=1, depth=1))
    assert not list(pathway_layers(target)), "a failed call must not leave a half-converted model"


def test_shape_mismatch_is_an_error_naming_the_layer() -> None:
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv.*\(96, 32\).*\(144, 48\)"):
        reparameterize_aux_into_target_model(make_vit(seed=0), make_vit(seed=1, embed_dim=48))


def test_missing_layer_names_it() -> None:
    with pytest.raises(AttributeError, match=r"blocks\.0\.attn\.nope"):
        reparameterize_aux_into_target_model(make_vit(seed=0), make_vit(seed=1), layer_names=("attn.qkv", "attn.nope"))
    aux = make_vit(seed=1).state_dict()
    del aux["blocks.1.mlp.fc2.weight"]
    with pytest.raises(KeyError, match=r"blocks\.1\.mlp\.fc2\.weight"):
        reparameterize_aux_into_target_model(make_vit(seed=0), aux)
    with pytest.raises(TypeError, match=r"blocks\.0\.norm1.*LayerNorm"):
        reparameterize_aux_into_target_model(make_vit(seed=0), make_vit(seed=1), layer_names=("norm1",))


def test_applying_twice_is_an_error() -> None:
    model = _pathway_vit()
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv.*already"):
        reparameterize_aux_into_target_model(model, make_vit(seed=5, num_classes=7))


def test_set_lambdas_and_subset_of_layers(tiny_input: torch.Tensor) -> None:
    model = reparameterize_aux_into_target_model(make_vit(seed=0), make_vit(seed=1), layer_names=("mlp.fc1",))
    assert [n for n, _ in pathway_layers(model)] == ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1"]
    assert isinstance(model.blocks[0].attn.qkv, nn.Linear) and not isinstance(model.blocks[0].attn.qkv, PathwayLinear)
    set_lambdas(model, 0.3)
    assert all(layer.lambdas.tolist() == [pytest.approx(0.3)] for _, layer in pathway_layers(model))
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=16, patch_size=8,
                              embed_dim=32, depth=2, num_heads=2)
    plain.load_state_dict(plain_state_dict(model), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(tiny_input), model(tiny_input), atol=ATOL, rtol=0)


def test_merged_vit_base_loads_strictly_into_plain_timm_vit_base() -> None:
    """The literal deployment claim, at full size: a ViT-B/16 with a ViT-B aux folds into `vit_base_patch16_224`."""
    import timm

    from pathway import fuse_pathway, plain_state_dict, reparameterize_aux_into_target_model, set_lambdas

    torch.manual_seed(0)
    target = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10).eval()
    aux = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=3).state_dict()
    reparameterize_aux_into_target_model(target, aux)
    set_lambdas(target, 0.1)
    x = torch.randn(1, 3, 224, 224)
    plain = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10).eval()
    plain.load_state_dict(plain_state_dict(target), strict=True)
    with torch.no_grad():
        expected = target(x)
        torch.testing.assert_close(plain(x), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fuse_pathway(target)(x), expected, atol=1e-4, rtol=1e-4)
    target_params = {n: p.numel() for n, p in target.named_parameters()}
    lambdas = sum(v for n, v in target_params.items() if n.endswith("lambdas"))
    aux = sum(v for n, v in target_params.items() if ".aux_weight_" in n)
    assert lambdas == 12 * 4  # one λ per layer
    assert aux == 12 * (3 * 768 * 768 + 768 * 768 + 2 * 4 * 768 * 768)  # trained aux: one weight per layer
    assert sum(p.numel() for p in plain.parameters()) == sum(target_params.values()) - lambdas - aux
