"""Reading checkpoints in the formats people have, loading them with clear errors, and the README seed snippet."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conftest import make_vit
from pathway.checkpoint import CheckpointError, load_state_dict, load_weights


@pytest.fixture
def vit() -> nn.Module:
    return make_vit(seed=11)


def _assert_same(loaded: dict, expected: dict) -> None:
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_plain_state_dict(tmp_path: Path, vit: nn.Module) -> None:
    path = tmp_path / "plain.pth"
    torch.save(vit.state_dict(), path)
    _assert_same(load_state_dict(path), vit.state_dict())


@pytest.mark.parametrize("wrapper", ["model", "module", "state_dict"])
def test_wrapped_state_dict(tmp_path: Path, vit: nn.Module, wrapper: str) -> None:
    path = tmp_path / f"{wrapper}.pth"
    torch.save({wrapper: vit.state_dict(), "epoch": 3, "args": {"lr": 1e-3}}, path)
    _assert_same(load_state_dict(path), vit.state_dict())


def test_lightning_checkpoint(tmp_path: Path, vit: nn.Module) -> None:
    state = OrderedDict((f"backbone.{k}", v) for k, v in vit.state_dict().items())
    state["val_metrics.acc1.tp"] = torch.zeros(3)
    state["criterion.weight"] = torch.ones(5)
    path = tmp_path / "epoch=0-step=1.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.6", "epoch": 0, "global_step": 1, "state_dict": state,
                "optimizer_states": [], "hyper_parameters": {"num_classes": 5}}, path)
    _assert_same(load_state_dict(path), vit.state_dict())


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(tmp_path: Path, vit: nn.Module, prefix: str) -> None:
    path = tmp_path / "prefixed.pth"
    torch.save({"model": {prefix + k: v for k, v in vit.state_dict().items()}}, path)
    _assert_same(load_state_dict(path), vit.state_dict())


def test_pickled_module_needs_trust_pickle(tmp_path: Path, vit: nn.Module) -> None:
    path = tmp_path / "pickled_model.pth"
    torch.save(vit, path)
    with pytest.raises(CheckpointError, match="trust_pickle") as info:
        load_state_dict(path)
    assert str(path) in str(info.value)
    _assert_same(load_state_dict(path, trust_pickle=True), vit.state_dict())
    torch.save({"model": vit}, tmp_path / "wrapped_pickle.pth")
    _assert_same(load_state_dict(tmp_path / "wrapped_pickle.pth", trust_pickle=True), vit.state_dict())


def test_safetensors(tmp_path: Path, vit: nn.Module) -> None:
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    _assert_same(load_state_dict(path), vit.state_dict())


def test_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "aux.pth"
    with pytest.raises(CheckpointError, match="not found") as info:
        load_state_dict(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["garbage.pth", "garbage.safetensors", "garbage.ckpt"])
def test_garbage_file_names_it(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not a checkpoint\x00\x01\x02" * 10)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    assert str(path) in str(info.value)


def test_file_without_tensors_names_it(tmp_path: Path) -> None:
    path = tmp_path / "no_tensors.pth"
    torch.save({"epoch": 1, "args": {"lr": 0.1}}, path)
    with pytest.raises(CheckpointError, match="no tensors") as info:
        load_state_dict(path)
    assert str(path) in str(info.value)


# --- load_weights ---------------------------------------------------------------------------------------------
def test_pos_embed_interpolated_to_larger_model(vit: nn.Module) -> None:
    big = make_vit(seed=12, img_size=32)
    assert tuple(vit.pos_embed.shape) == (1, 5, 32) and tuple(big.pos_embed.shape) == (1, 17, 32)
    missing, unexpected = load_weights(big, vit.state_dict(), source="small.pth", strict=True)
    assert missing == [] and unexpected == []
    assert tuple(big.pos_embed.shape) == (1, 17, 32)
    assert torch.equal(big.pos_embed[:, 0], vit.pos_embed[:, 0]), "the cls position must be kept as is"
    assert not torch.equal(big.pos_embed, make_vit(seed=12, img_size=32).pos_embed)
    # A 2x2 grid upsampled to 4x4: the mean over the patch grid is roughly preserved.
    torch.testing.assert_close(big.pos_embed[:, 1:].mean(1), vit.pos_embed[:, 1:].mean(1), atol=0.05, rtol=0)
    assert torch.equal(big.blocks[1].mlp.fc2.weight, vit.blocks[1].mlp.fc2.weight)
    with torch.no_grad():
        assert big(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_shape_mismatch_names_key_and_shapes(vit: nn.Module) -> None:
    other = make_vit(seed=12, num_classes=7)
    with pytest.raises(CheckpointError) as info:
        load_weights(vit, other.state_dict(), source="other_head.pth")
    message = str(info.value)
    assert "other_head.pth" in message and "head.weight" in message
    assert "(7, 32)" in message and "(5, 32)" in message


def test_ignore_drops_keys(vit: nn.Module) -> None:
    other = make_vit(seed=12, num_classes=7)
    missing, unexpected = load_weights(vit, other.state_dict(), source="x", ignore=lambda k: k.startswith("head."))
    assert missing == ["head.bias", "head.weight"] and unexpected == []
    assert torch.equal(vit.blocks[0].attn.qkv.weight, other.blocks[0].attn.qkv.weight)


def test_strict_missing_and_unexpected(vit: nn.Module) -> None:
    state = dict(make_vit(seed=12).state_dict())
    del state["blocks.1.norm2.weight"]
    state["blocks.1.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as info:
        load_weights(vit, state, source="partial.pth", strict=True)
    message = str(info.value)
    assert "partial.pth" in message and "blocks.1.norm2.weight" in message and "blocks.1.extra.weight" in message
    assert not torch.equal(vit.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"]), "strict failure loaded"
    missing, unexpected = load_weights(vit, state, source="partial.pth", strict=False)
    assert missing == ["blocks.1.norm2.weight"] and unexpected == ["blocks.1.extra.weight"]
    assert torch.equal(vit.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])


def test_wrong_architecture(vit: nn.Module) -> None:
    foreign = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).state_dict()
    with pytest.raises(CheckpointError, match="none of its") as info:
        load_weights(vit, foreign, source="resnet.pth")
    assert "resnet.pth" in str(info.value)


# --- the reference README's snippet ----------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["pickled_module", "state_dict"])
def test_readme_seed_snippet(tmp_path: Path, form: str) -> None:
    path = tmp_path / "aux.pth"
    aux_model = make_vit(seed=123, num_classes=7)
    torch.save(aux_model if form == "pickled_module" else aux_model.state_dict(), path)

    import timm
    from multimodal_pathway import reparameterize_aux_into_target_model

    target_model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8,
                                     embed_dim=32, depth=2, num_heads=2, num_classes=5)
    aux = torch.load(path, weights_only=False)
    returned = reparameterize_aux_into_target_model(
        target_model, aux, layer_names=("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"), main_body_name="blocks"
    )

    from multimodal_pathway import PathwayLinear, pathway_layers

    assert returned is target_model
    layers = dict(pathway_layers(target_model))
    assert len(layers) == 4 * len(target_model.blocks) == 8
    assert all(isinstance(layer, PathwayLinear) for layer in layers.values())
    assert torch.equal(layers["blocks.1.mlp.fc2"].aux_weight_0, aux_model.blocks[1].mlp.fc2.weight)
