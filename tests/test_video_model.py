"""The video ViT: every pathway layer (qkv included) is on the forward path, VideoMAE and timm weights load."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import make_vit
from pathway.checkpoint import CheckpointError
from pathway.merge import plain_state_dict
from pathway.optim import layer_decay_param_groups
from pathway.size import TransformerSize
from pathway.surgery import pathway_layers, set_lambdas
from Video.backbone import Block, VideoViT, checkpoint_filter_fn
from Video.model import VideoClassifier

# 4 frames of 16x16 in 2x8x8 tubelets -> 8 tokens; width 32 and depth 2 like the tiny image ViT of conftest.
TINY_VIDEO: dict[str, Any] = dict(img_size=16, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=32, depth=2,
                                  num_heads=2, drop_path_rate=0.0)
# the backbone a VideoClassifier with TINY_VIDEO builds
TINY_VIDEO_BACKBONE: dict[str, Any] = dict(img_size=16, patch_size=8, num_frames=4, tubelet_size=2,
                                           size=TransformerSize(embed_dim=32, depth=2, num_heads=2), drop_rate=0.0,
                                           attn_drop_rate=0.0, head_drop_rate=0.0)
LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def clips(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 4, 16, 16, generator=torch.Generator().manual_seed(3))


def tiny_classifier(seed: int = 0, **kwargs: Any) -> VideoClassifier:
    torch.manual_seed(seed)
    return VideoClassifier(num_classes=5, **TINY_VIDEO, **kwargs).eval()


def videomae_pretrain_checkpoint(path: Path, seed: int = 11) -> VideoViT:
    """Save a VideoMAE pre-training style file (encoder./decoder. keys, final ``norm``, nested under 'model')."""
    torch.manual_seed(seed)
    source = VideoViT(num_classes=0, **TINY_VIDEO_BACKBONE)
    for name, param in source.named_parameters():
        if "bias" in name:  # non-zero biases, so loading them is visible
            param.data.normal_()
    state = {f"encoder.{k.replace('fc_norm', 'norm')}": v for k, v in source.state_dict().items()}
    state.update({"decoder.blocks.0.mlp.fc1.weight": torch.randn(8, 4), "mask_token": torch.zeros(1, 1, 4),
                  "encoder_to_decoder.weight": torch.randn(4, 32)})
    torch.save({"model": state, "epoch": 799}, path)
    return source


def test_output_shape_and_clip_size_check() -> None:
    model = tiny_classifier()
    assert model(clips(3)).shape == (3, 5)
    with pytest.raises(ValueError, match=r"expected clips of shape \(B, 3, 4, 16, 16\)"):
        model(torch.randn(1, 3, 8, 16, 16))


def test_lambda_zero_is_the_target_and_every_wrapped_layer_acts(aux_ckpt: Path) -> None:
    x = clips()
    target = tiny_classifier()
    pathway = tiny_classifier(aux_ckpts=[str(aux_ckpt)])
    layers = dict(pathway_layers(pathway.backbone))
    assert sorted(layers) == sorted(f"blocks.{i}.{name}" for i in range(2) for name in LAYERS)
    with torch.no_grad():
        reference = target(x)
        torch.testing.assert_close(pathway(x), reference, rtol=0, atol=0)
        for name, layer in layers.items():
            layer.lambdas.fill_(0.5)
            assert not torch.allclose(pathway(x), reference, rtol=1e-3, atol=0), f"λ of {name} does not reach the output"
            layer.lambdas.zero_()
        torch.testing.assert_close(pathway(x), reference, rtol=0, atol=0)


def test_q_and_v_biases_are_added_to_the_qkv_module_output() -> None:
    x = torch.randn(2, 8, 32)
    block = Block(32, num_heads=2).eval()
    base = block(x)
    calls = []
    block.attn.qkv.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    with torch.no_grad():
        block.attn.v_bias.fill_(0.3)
        assert not torch.allclose(block(x), base)
        block.attn.v_bias.zero_()
        block.attn.q_bias.fill_(0.3)
        assert not torch.allclose(block(x), base)
    assert calls == [torch.Size([2, 8, 96])] * 2


def test_timm_fused_qkv_bias_converts_exactly() -> None:
    vit = make_vit(seed=5)
    with torch.no_grad():
        for name, param in vit.named_parameters():
            if name.endswith("qkv.bias"):
                param.normal_()
    state = {k[len("blocks.0."):]: v for k, v in checkpoint_filter_fn(vit.state_dict(), vit).items()
             if k.startswith("blocks.0.")}
    block = Block(32, num_heads=2).eval()
    block.load_state_dict(state, strict=True)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(block(x), vit.blocks[0](x), rtol=1e-5, atol=1e-5)


def test_videomae_pretraining_checkpoint_loads_as_target(tmp_path: Path) -> None:
    source = videomae_pretrain_checkpoint(tmp_path / "videomae.pth")
    model = tiny_classifier(seed=1, target_ckpt=str(tmp_path / "videomae.pth"))
    loaded = model.backbone.state_dict()
    for key, value in source.state_dict().items():  # fc_norm included: it comes from the encoder's final norm
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def test_videomae_finetuned_checkpoint_with_another_head_loads(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = VideoViT(num_classes=7, **TINY_VIDEO_BACKBONE)
    torch.save({"module": source.state_dict()}, tmp_path / "ft.pth")
    model = tiny_classifier(seed=1, target_ckpt=str(tmp_path / "ft.pth"))
    torch.testing.assert_close(model.backbone.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)
    assert model.backbone.head.weight.shape == (5, 32)


def test_videomae_checkpoint_works_as_aux(tmp_path: Path) -> None:
    source = videomae_pretrain_checkpoint(tmp_path / "aux.pth")
    model = tiny_classifier(aux_ckpts=[str(tmp_path / "aux.pth")])
    qkv = dict(pathway_layers(model.backbone))["blocks.1.attn.qkv"]
    torch.testing.assert_close(qkv.aux_weight_0, source.blocks[1].attn.qkv.weight)


def test_aux_of_another_depth_is_an_error(tmp_path: Path) -> None:
    torch.save(make_vit(seed=3, depth=3).state_dict(), tmp_path / "deep.pt")
    with pytest.raises(CheckpointError, match="depth mismatch"):
        tiny_classifier(aux_ckpts=[str(tmp_path / "deep.pt")])


def test_layer_decay_groups_follow_the_blocks(aux_ckpt: Path) -> None:
    model = tiny_classifier(aux_ckpts=[str(aux_ckpt)], aux_trainable=False)
    set_lambdas(model.backbone, 0.0)
    groups = layer_decay_param_groups(model.backbone, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    names = {id(p): n for n, p in model.backbone.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    decay = {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    assert scale["patch_embed.proj.weight"] == 0.5 ** 3
    assert scale["blocks.0.attn.qkv.weight"] == 0.5 ** 2
    assert scale["blocks.1.mlp.fc2.weight"] == 0.5
    assert scale["head.weight"] == scale["fc_norm.weight"] == 1.0
    assert decay["blocks.0.attn.qkv.lambdas"] == 0.0 and decay["blocks.0.attn.q_bias"] == 0.0
    assert decay["blocks.0.attn.qkv.weight"] == 0.05
    assert not any("aux_weight" in n for n in scale)


def test_fused_model_is_a_plain_video_vit_with_the_same_outputs(aux_ckpt: Path) -> None:
    model = tiny_classifier(aux_ckpts=[str(aux_ckpt)])
    set_lambdas(model.backbone, 0.3)
    x = clips()
    with torch.no_grad():
        expected = model(x)
        plain = VideoViT(num_classes=5, **TINY_VIDEO_BACKBONE).eval()
        plain.load_state_dict(plain_state_dict(model.backbone), strict=True)
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(plain(x), tiny_classifier()(x), rtol=1e-3, atol=0)  # logits are ~1e-3 (head init)
