"""A checkpoint that still carries a pathway is folded (W + Σλ·W_aux) wherever it is loaded, or refused.

Sources: our state dicts (``lambdas`` + ``aux_weight_<i>``), the reference code's (``cross_modal_scale`` +
``aux_weight``, also as pickled ``multimodal_pathway.CrossModalReparamLinear`` modules), and our Lightning
checkpoints with trained aux (stored, folded) or frozen aux stored by reference (refused, saying how to fold).
"""
from __future__ import annotations

import logging
import sys
import types
import zipfile
from pathlib import Path

import pytest
import timm.layers
import torch
from torch import nn

from _scale_utils import TINY_IMAGE_MODEL, save_aux, train_image_checkpoint
from conftest import make_vit
from pathway import pathway_layers, reparameterize_aux_into_target_model, set_lambdas
from pathway.checkpoint import CheckpointError, fold_pathway_state_dict, load_state_dict

LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
LAMBDA = 0.5


def _image_classifier(**kwargs):
    from Image.model import ImageClassifier

    # global_pool="token" is make_vit's pooling, so outputs compare with the source model's.
    return ImageClassifier(**{**TINY_IMAGE_MODEL, "num_classes": 5, "global_pool": "token", **kwargs}).eval()


def _reference_pathway(base: nn.Module, aux: nn.Module) -> nn.Module:
    """``base`` with every block linear swapped for the reference layer, scale ``LAMBDA``, as M2PT builds it."""
    from multimodal_pathway import CrossModalReparamLinear

    for block, aux_block in zip(base.blocks, aux.blocks):
        for name in LAYERS:
            parent_name, attr = name.split(".")
            parent, linear = block.get_submodule(parent_name), block.get_submodule(name)
            layer = CrossModalReparamLinear(linear.in_features, linear.out_features, origin_layer=linear,
                                            aux_weight=aux_block.get_submodule(name).weight)
            with torch.no_grad():
                layer.cross_modal_scale.fill_(LAMBDA)
            setattr(parent, attr, layer)
    return base


def _pathway_model(keys: str) -> nn.Module:
    base, aux = make_vit(seed=1), make_vit(seed=2)
    if keys == "reference":
        return _reference_pathway(base, aux).eval()
    reparameterize_aux_into_target_model(base, aux)
    set_lambdas(base, LAMBDA)
    return base.eval()


def _expected_weights() -> dict[str, torch.Tensor]:
    """W + λ·W_aux per layer, from the two source models directly (independent of any folding code)."""
    base, aux = make_vit(seed=1).state_dict(), make_vit(seed=2).state_dict()
    return {f"blocks.{i}.{name}": base[f"blocks.{i}.{name}.weight"] + LAMBDA * aux[f"blocks.{i}.{name}.weight"]
            for i in range(2) for name in LAYERS}


@pytest.mark.parametrize("keys", ["ours", "reference"])
def test_pathway_state_dict_as_target_is_folded(tmp_path: Path, tiny_input: torch.Tensor, keys: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    source = _pathway_model(keys)
    path = tmp_path / "pathway_state_dict.pth"
    torch.save(source.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="pathway.checkpoint"):
        model = _image_classifier(target_ckpt=str(path))
    assert "folded" in caplog.text and str(path) in caplog.text
    assert "unused" not in caplog.text
    loaded = model.backbone.state_dict()
    for name, weight in _expected_weights().items():
        torch.testing.assert_close(loaded[f"{name}.weight"], weight, rtol=0, atol=1e-6)
    with torch.no_grad():
        out, expected, unfolded = model(tiny_input), source(tiny_input), make_vit(seed=1)(tiny_input)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert (expected - unfolded).abs().max() > 1e-2, "λ·W_aux must matter for this test to mean anything"


@pytest.mark.parametrize("keys", ["ours", "reference"])
def test_pathway_state_dict_as_aux_is_folded(tmp_path: Path, keys: str) -> None:
    path = tmp_path / "pathway_aux.pth"
    torch.save(_pathway_model(keys).state_dict(), path)
    model = _image_classifier(aux_ckpts=[str(path)])
    layers = dict(pathway_layers(model.backbone))
    assert len(layers) == 8
    for name, weight in _expected_weights().items():
        torch.testing.assert_close(layers[name].aux_weight_0.detach(), weight, rtol=0, atol=1e-6)


@pytest.mark.parametrize("keys", ["ours", "reference"])
def test_pathway_module_in_memory_as_aux_is_folded(keys: str) -> None:
    """The library entry point with a live pathway model (ours or the reference layer) as aux, no file involved."""
    target = make_vit(seed=3)
    reparameterize_aux_into_target_model(target, _pathway_model(keys))
    layers = dict(pathway_layers(target))
    assert len(layers) == 8
    for name, weight in _expected_weights().items():
        torch.testing.assert_close(layers[name].aux_weight_0.detach(), weight, rtol=0, atol=1e-6)


def test_reference_pickled_module_unpickles_and_folds(tmp_path: Path, tiny_input: torch.Tensor) -> None:
    source = _pathway_model("reference")
    path = tmp_path / "m2pt_release.pth"
    torch.save(source, path)
    with zipfile.ZipFile(path) as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"multimodal_pathway" in pickled and b"CrossModalReparamLinear" in pickled
    with pytest.raises(CheckpointError, match="trust_pickle"):
        _image_classifier(target_ckpt=str(path))
    model = _image_classifier(target_ckpt=str(path), trust_pickle=True)
    with torch.no_grad():
        torch.testing.assert_close(model(tiny_input), source(tiny_input), rtol=1e-5, atol=1e-5)
    state = load_state_dict(path, trust_pickle=True)
    assert not any(k.endswith(("cross_modal_scale", "aux_weight")) for k in state)


def test_pickle_needing_an_unknown_class_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("mae_models_vit")

    class VisionTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(2, 2)

    VisionTransformer.__module__, VisionTransformer.__qualname__ = module.__name__, "VisionTransformer"
    module.VisionTransformer = VisionTransformer
    monkeypatch.setitem(sys.modules, module.__name__, module)
    path = tmp_path / "mae_pickled.pth"
    torch.save({"model": VisionTransformer()}, path)
    monkeypatch.delitem(sys.modules, module.__name__)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path, trust_pickle=True)
    message = str(info.value)
    assert str(path) in message and "mae_models_vit.VisionTransformer" in message
    assert "PYTHONPATH" in message and "state_dict()" in message


def test_pickle_of_an_old_timm_layer_path_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """timm < 0.9 pickled its layers as ``timm.models.layers.<file>.<Class>``; timm 1.x has them in timm.layers."""
    module = types.ModuleType("timm.models.layers.mlp")

    class Mlp(timm.layers.Mlp):
        pass

    Mlp.__module__, Mlp.__qualname__ = module.__name__, "Mlp"
    module.Mlp = Mlp
    monkeypatch.setitem(sys.modules, module.__name__, module)
    torch.manual_seed(0)
    mlp = Mlp(4, 8)
    path = tmp_path / "old_timm.pth"
    torch.save(mlp, path)
    monkeypatch.delitem(sys.modules, module.__name__)
    with pytest.raises(ImportError):  # what a plain torch.load of such a file does with timm 1.x
        torch.load(path, weights_only=False)
    state = load_state_dict(path, trust_pickle=True)
    assert set(state) == set(mlp.state_dict())
    for key, value in mlp.state_dict().items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize("store", ["trained_aux", "frozen_aux_stored"])
def test_lightning_checkpoint_with_aux_weights_is_folded(tmp_path: Path, tiny_input: torch.Tensor,
                                                         store: str) -> None:
    aux = save_aux(tmp_path / "aux.pt")
    args = {"aux_trainable": True} if store == "trained_aux" else {"aux_trainable": False,
                                                                   "store_aux_in_checkpoint": True}
    trained = train_image_checkpoint(tmp_path / "run.ckpt", aux, **args).eval()
    assert any(layer.lambdas.abs().sum() > 0 for _, layer in pathway_layers(trained.backbone))
    model = _image_classifier(target_ckpt=str(tmp_path / "run.ckpt"), num_classes=3, global_pool="avg")
    assert not list(pathway_layers(model.backbone))
    with torch.no_grad():
        torch.testing.assert_close(model(tiny_input), trained(tiny_input), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_as", ["target", "aux"])
def test_lightning_checkpoint_with_aux_by_reference_is_refused(tmp_path: Path, use_as: str) -> None:
    aux = save_aux(tmp_path / "aux.pt")
    ckpt = tmp_path / "run.ckpt"
    train_image_checkpoint(ckpt, aux, aux_trainable=False, store_aux_in_checkpoint=False)
    assert not any("aux_weight" in k for k in torch.load(ckpt, weights_only=True)["state_dict"])
    with pytest.raises(CheckpointError) as info:
        if use_as == "target":
            _image_classifier(target_ckpt=str(ckpt))
        else:
            _image_classifier(aux_ckpts=[str(ckpt)])
    message = str(info.value)
    assert str(ckpt) in message and "blocks.0.attn.qkv" in message and "aux_weight_0" in message
    assert str(aux) in message, "the error names the aux file the checkpoint refers to"
    assert "python -m pathway export" in message and "merged.safetensors" in message


# --- fold_pathway_state_dict on its own ------------------------------------------------------------------------
def test_fold_sums_every_aux_in_fp32() -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 64, generator=g).bfloat16()
    aux = [torch.randn(64, 64, generator=g).bfloat16() for _ in range(2)]
    lambdas = torch.tensor([0.013, -0.007])
    state = {"fc.weight": weight, "fc.bias": torch.zeros(64), "fc.lambdas": lambdas,
             "fc.aux_weight_0": aux[0], "fc.aux_weight_1": aux[1]}
    folded = fold_pathway_state_dict(state, source="two_aux.pth")
    assert set(folded) == {"fc.weight", "fc.bias"} and folded["fc.weight"].dtype == torch.bfloat16
    expected = (weight.float() + lambdas[0] * aux[0].float() + lambdas[1] * aux[1].float()).bfloat16()
    assert torch.equal(folded["fc.weight"], expected)
    in_bf16 = weight + lambdas[0].bfloat16() * aux[0] + lambdas[1].bfloat16() * aux[1]
    assert not torch.equal(in_bf16, expected), "bf16 accumulation rounds differently; fp32 is what is asked for"


def test_fold_of_a_merged_checkpoint_adds_only_what_is_not_in_the_weight() -> None:
    """Files written after ``merge_pathway_`` (older versions) hold W + λ_m·W_aux and the λ_m already folded."""
    weight, aux = torch.randn(4, 4), torch.randn(4, 4)
    state = {"fc.weight": weight + 0.25 * aux, "fc.lambdas": torch.tensor([0.75]), "fc.aux_weight_0": aux,
             "fc.merged": torch.tensor(True), "fc.merged_lambdas": torch.tensor([0.25])}
    folded = fold_pathway_state_dict(state)
    assert set(folded) == {"fc.weight"}
    torch.testing.assert_close(folded["fc.weight"], weight + 0.75 * aux)


@pytest.mark.parametrize("key", ["fc.aux_weight_0", "fc.aux_weight", "fc.merged_lambdas"])
def test_pathway_keys_without_lambda_are_refused(key: str) -> None:
    state = {"fc.weight": torch.randn(4, 4), key: torch.randn(4, 4)}
    with pytest.raises(CheckpointError, match="without a λ") as info:
        fold_pathway_state_dict(state, source="orphan.pth")
    assert "orphan.pth" in str(info.value) and key in str(info.value)


def test_pathway_safetensors_file_is_folded(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "pathway.safetensors"
    save_file({k: v.contiguous() for k, v in _pathway_model("ours").state_dict().items()}, str(path))
    state = load_state_dict(path)
    assert not any("lambdas" in k or "aux_weight" in k for k in state)
    for name, weight in _expected_weights().items():
        torch.testing.assert_close(state[f"{name}.weight"], weight, rtol=0, atol=1e-6)
