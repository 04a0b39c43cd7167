"""Point backbones and LightningModules: the pathway really reaches classification and segmentation,
Point-MAE checkpoints load, fusing gives a plain model, and the part IoU is right on a hand-checked case."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from timm.optim import param_groups_layer_decay
from torch import nn

from pathway.merge import fuse_pathway
from pathway.size import TransformerSize
from pathway.surgery import pathway_layers, set_lambdas
from Point.backbone import PointPartSegmenter, PointTransformer
from Point.metrics import PartIoU, shape_ious
from Point.model import PointClassifier, PointSegmenter

TINY = dict(num_groups=8, group_size=8, embed_dim=32, depth=2, num_heads=2)
TINY_SIZE = TransformerSize(embed_dim=32, depth=2, num_heads=2, qkv_bias=False, drop_path_rate=0.1)
TINY_BACKBONE = dict(num_groups=8, group_size=8, size=TINY_SIZE, head_dropout=0.5)  # what TINY builds in a module
SEG = dict(feature_levels=(0, 1), propagation_dims=(32, 16), head_dims=(16, 16))
LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def _points(batch: int = 3, n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, n, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def point_aux(tmp_path: Path) -> Path:
    """A tiny point transformer with other weights, saved as a plain state dict."""
    torch.manual_seed(321)
    path = tmp_path / "point_aux.pt"
    torch.save(PointTransformer(num_classes=3, **TINY_BACKBONE).state_dict(), path)
    return path


def test_blocks_use_linear_layers_and_biasless_qkv() -> None:
    model = PointTransformer(num_classes=4, **TINY_BACKBONE)
    for block in model.blocks:
        for name in LAYERS:
            assert isinstance(block.get_submodule(name), nn.Linear)
        assert block.attn.qkv.bias is None
    with_bias = PointTransformer(num_classes=4, **dict(TINY_BACKBONE, size=replace(TINY_SIZE, qkv_bias=True)))
    assert with_bias.blocks[0].attn.qkv.bias is not None
    assert model(_points()).shape == (3, 4)


def test_lambda_zero_is_the_target_and_every_lambda_changes_the_logits(point_aux: Path) -> None:
    torch.manual_seed(0)
    plain = PointClassifier(num_classes=5, **TINY).eval()
    torch.manual_seed(0)
    model = PointClassifier(num_classes=5, aux_ckpts=[str(point_aux)], **TINY).eval()
    layers = dict(pathway_layers(model.backbone))
    assert sorted(layers) == sorted(f"blocks.{i}.{n}" for i in range(2) for n in LAYERS)
    x = _points()
    with torch.no_grad():
        base = model(x)
        torch.testing.assert_close(base, plain(x), atol=0, rtol=0)
        for name, layer in layers.items():
            layer.lambdas.fill_(0.5)
            assert not torch.allclose(model(x), base, atol=1e-5), f"λ of {name} does not reach the logits"
            layer.lambdas.fill_(0.0)


def test_pathway_gets_gradients_in_classification(point_aux: Path) -> None:
    model = PointClassifier(num_classes=5, aux_ckpts=[str(point_aux)], **TINY)
    model(_points()).sum().backward()
    for name, layer in pathway_layers(model.backbone):
        assert layer.lambdas.grad is not None and layer.lambdas.grad.abs().sum() > 0, name


def test_lambda_changes_segmentation_logits(point_aux: Path) -> None:
    model = PointSegmenter(aux_ckpts=[str(point_aux)], **TINY, **SEG).eval()
    x, category = _points(2), torch.tensor([0, 15])
    with torch.no_grad():
        base = model(x, category)
        assert base.shape == (2, 64, 50)
        set_lambdas(model.backbone, 0.5)
        assert not torch.allclose(model(x, category), base, atol=1e-5)


def test_fused_model_is_a_plain_backbone(point_aux: Path) -> None:
    model = PointClassifier(num_classes=5, aux_ckpts=[str(point_aux)], **TINY).eval()
    set_lambdas(model.backbone, 0.3)
    x = _points()
    fused = fuse_pathway(model.backbone)
    plain = PointTransformer(num_classes=5, **TINY_BACKBONE).eval()
    plain.load_state_dict(fused.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), atol=1e-5, rtol=1e-5)


def _to_point_mae(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        key = key.replace("blocks.", "blocks.blocks.", 1) if key.startswith("blocks.") else key
        key = key.replace("head.", "cls_head_finetune.", 1) if key.startswith("head.") else key
        renamed["module." + key] = value
    return renamed


def test_width_not_divisible_by_heads_is_named() -> None:
    with pytest.raises(ValueError, match="embed_dim 30 is not divisible by num_heads 4"):
        PointClassifier(num_classes=3, **dict(TINY, embed_dim=30, num_heads=4))


def test_point_mae_finetune_checkpoint_loads(tmp_path: Path) -> None:
    torch.manual_seed(7)
    source = PointTransformer(num_classes=5, **TINY_BACKBONE).eval()
    path = tmp_path / "pointmae_ft.pth"
    torch.save({"base_model": _to_point_mae(source.state_dict()), "epoch": 3}, path)
    model = PointClassifier(num_classes=5, target_ckpt=str(path), **TINY).eval()
    x = _points()
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), atol=0, rtol=0)


def test_point_mae_pretrain_checkpoint_loads_encoder(tmp_path: Path) -> None:
    torch.manual_seed(8)
    source = PointTransformer(num_classes=0, cls_token=False, **TINY_BACKBONE)
    state = {"MAE_encoder." + k.replace("blocks.", "blocks.blocks.", 1): v for k, v in source.state_dict().items()}
    state["MAE_decoder.blocks.blocks.0.attn.qkv.weight"] = torch.zeros(96, 32)
    state["mask_token"] = torch.zeros(1, 1, 32)
    path = tmp_path / "pointmae_pretrain.pth"
    torch.save({"base_model": state}, path)
    model = PointClassifier(num_classes=5, target_ckpt=str(path), **TINY)
    torch.testing.assert_close(model.backbone.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    torch.testing.assert_close(model.backbone.encoder.first_conv[0].weight, source.encoder.first_conv[0].weight)
    # ... and as an auxiliary model of a segmenter
    seg = PointSegmenter(aux_ckpts=[str(path)], **TINY, **SEG)
    layer = seg.backbone.blocks[0].attn.qkv
    torch.testing.assert_close(layer.aux_weight_0, source.blocks[0].attn.qkv.weight)


def test_group_matcher_assigns_block_layer_ids() -> None:
    model = PointTransformer(num_classes=4, **TINY_BACKBONE)
    groups = param_groups_layer_decay(model, weight_decay=0.05, no_weight_decay_list=list(model.no_weight_decay()),
                                      layer_decay=0.5)
    scale_of = {}
    for group in groups:
        for p in group["params"]:
            scale_of[id(p)] = group["lr_scale"]
    assert scale_of[id(model.encoder.first_conv[0].weight)] == pytest.approx(0.125)
    assert scale_of[id(model.blocks[0].attn.qkv.weight)] == pytest.approx(0.25)
    assert scale_of[id(model.blocks[1].attn.qkv.weight)] == pytest.approx(0.5)
    assert scale_of[id(model.head[0].weight)] == pytest.approx(1.0)
    seg = PointPartSegmenter(num_parts=50, num_categories=16, **TINY_BACKBONE, **SEG)
    assert not hasattr(seg, "cls_token")
    assert seg(_points(2), torch.tensor([1, 2])).shape == (2, 64, 50)


def test_part_iou_hand_checked() -> None:
    # two categories: A owns parts {0, 1}, B owns parts {2, 3, 4}
    counts = [2, 3]
    pred = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 3]])
    target = torch.tensor([[0, 1, 1, 1], [2, 2, 3, 3]])
    category = torch.tensor([0, 1])
    # shape 0: part0 I=1 U=2 -> .5, part1 I=2 U=3 -> 2/3; mean 7/12
    # shape 1: part2 I=2 U=3 -> 2/3, part3 I=1 U=2 -> .5, part4 absent in both -> 1; mean 13/18
    from Point.parts import category_part_mask

    ious = shape_ious(pred, target, category, category_part_mask(counts))
    torch.testing.assert_close(ious, torch.tensor([7 / 12, 13 / 18]))
    metric = PartIoU(counts)
    logits = torch.nn.functional.one_hot(pred, 5).float() * 5
    logits[0, :, 4] = 10.0  # a part of another category scores highest: must be ignored for shape 0
    metric.update(logits, category, target)
    metric.update(logits[:1], category[:1], target[:1])
    out = metric.compute()
    torch.testing.assert_close(out["ins_miou"], torch.tensor((7 / 12 * 2 + 13 / 18) / 3))
    torch.testing.assert_close(out["cls_miou"], torch.tensor((7 / 12 + 13 / 18) / 2))
    with pytest.raises(ValueError, match="outside its category's parts"):
        metric.update(logits[:1], category[:1], torch.tensor([[0, 1, 2, 1]]))
