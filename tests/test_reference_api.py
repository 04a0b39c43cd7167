"""The seed-compatible API: state dicts written by the reference code's ``CrossModalReparamLinear`` (keys
``<layer>.cross_modal_scale``, shape (1,), and ``<layer>.aux_weight``) load ``strict=True`` into a model that
``reparameterize_aux_into_target_model`` builds, and it then computes what the reference computes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import TINY_VIT, make_vit
from pathway import DEFAULT_LAYER_NAMES, pathway_layers, reparameterize_aux_into_target_model


def _reference_model(target: nn.Module, aux: nn.Module) -> nn.Module:
    """``target`` surgered as the reference does it: each block linear becomes a ``CrossModalReparamLinear`` that
    shares the aux model's weight Parameter; each layer gets its own nonzero scale."""
    from multimodal_pathway import CrossModalReparamLinear

    scales = iter(torch.linspace(0.2, 0.9, len(target.blocks) * len(DEFAULT_LAYER_NAMES)).tolist())
    for block, aux_block in zip(target.blocks, aux.blocks):
        for name in DEFAULT_LAYER_NAMES:
            parent_name, attr = name.split(".")
            linear = block.get_submodule(name)
            layer = CrossModalReparamLinear(linear.in_features, linear.out_features, origin_layer=linear,
                                            aux_weight=aux_block.get_submodule(name).weight)
            with torch.no_grad():
                layer.cross_modal_scale.fill_(next(scales))
            setattr(block.get_submodule(parent_name), attr, layer)
    return target


def _input() -> torch.Tensor:
    size = TINY_VIT["img_size"]
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))


def test_reference_state_dict_loads_strict_and_gives_the_reference_outputs_and_gradients() -> None:
    reference = _reference_model(make_vit(seed=1), make_vit(seed=2))
    state = reference.state_dict()
    assert state["blocks.0.attn.qkv.cross_modal_scale"].shape == (1,)
    assert "blocks.1.mlp.fc2.aux_weight" in state and not any(k.endswith("lambdas") for k in state)
    plain = make_vit(seed=1)(_input()).detach()

    ours = reparameterize_aux_into_target_model(make_vit(seed=3), make_vit(seed=4))
    before = ours(_input()).detach()
    ours.load_state_dict(state, strict=True)
    x, x_ref = _input().requires_grad_(), _input().requires_grad_()
    out, out_ref = ours(x), reference(x_ref)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=0)
    assert not torch.allclose(out_ref, plain, atol=1e-3), "test premise: the reference's pathway changes outputs"
    assert not torch.allclose(out, before, atol=1e-3), "the load left the model as it was built"

    out.square().sum().backward()
    out_ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-6, rtol=1e-4)
    for name, layer in pathway_layers(ours):
        ref_layer = reference.get_submodule(name)
        for got, expected in [(layer.weight.grad, ref_layer.weight.grad), (layer.bias.grad, ref_layer.bias.grad),
                              (layer.lambdas.grad, ref_layer.cross_modal_scale.grad),
                              (layer.aux_weight_0.grad, ref_layer.aux_weight.grad)]:
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4, msg=name)


def test_reference_keys_on_a_multi_aux_layer_are_an_error_naming_the_layer() -> None:
    state = _reference_model(make_vit(seed=1), make_vit(seed=2)).state_dict()
    ours = reparameterize_aux_into_target_model(make_vit(seed=3), [make_vit(seed=4), make_vit(seed=5)])
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=r"pathway layer 'blocks\.0\.attn\.qkv' has 2 auxiliary weights.*"
                                               r"cross_modal_scale"):
            ours.load_state_dict(state, strict=strict)


def test_reference_and_own_keys_for_one_layer_are_an_error() -> None:
    ours = reparameterize_aux_into_target_model(make_vit(seed=3), make_vit(seed=4))
    state = ours.state_dict()
    state["blocks.1.attn.proj.cross_modal_scale"] = torch.ones(1)
    with pytest.raises(RuntimeError, match=r"pathway layer 'blocks\.1\.attn\.proj'.*both.*"
                                           r"blocks\.1\.attn\.proj\.lambdas"):
        ours.load_state_dict(state)


def test_training_the_target_leaves_the_aux_model_as_it_was() -> None:
    # The reference shares the aux model's Parameter, so its training rewrites the aux model; ours copies it.
    target, aux = make_vit(seed=3), make_vit(seed=4)
    aux_before = aux.blocks[0].attn.qkv.weight.detach().clone()
    reparameterize_aux_into_target_model(target, aux, lambda_init=0.5)
    layer = target.blocks[0].attn.qkv
    target(_input()).square().sum().backward()
    with torch.no_grad():
        layer.aux_weight_0.sub_(layer.aux_weight_0.grad)
    assert not torch.equal(layer.aux_weight_0, aux_before), "test premise: the step changes the target's aux weight"
    assert torch.equal(aux.blocks[0].attn.qkv.weight, aux_before)
