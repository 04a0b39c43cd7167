"""An auxiliary checkpoint is read by the layout of its own format, whatever the target modality is.

Key layouts as the reference code bases save them (each with a decoder of another width and depth, which must
never be taken for the encoder): MAE / AudioMAE pre-training (``blocks`` + ``decoder_*``), VideoMAE pre-training
(``encoder.blocks`` + ``decoder.blocks``), Point-MAE pre-training (``MAE_encoder.blocks.blocks`` +
``MAE_decoder.blocks``, under ``base_model``) and fine-tuning (``module.blocks.blocks``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import Tensor

from _scale_utils import TINY_IMAGE_MODEL
from conftest import make_vit
from pathway import pathway_layers
from pathway.checkpoint import CheckpointError, aux_state_dict

LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def _decoder(prefix: str, width: int = 16, depth: int = 3) -> dict[str, Tensor]:
    shapes = {"attn.qkv": (3 * width, width), "attn.proj": (width, width), "mlp.fc1": (4 * width, width),
              "mlp.fc2": (width, 4 * width)}
    return {f"{prefix}{i}.{name}.weight": torch.randn(shape) for i in range(depth) for name, shape in shapes.items()}


def _encoder(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """``state``'s blocks under ``prefix`` (``blocks.0.x`` -> ``<prefix>0.x``), its other keys as they are."""
    return {(prefix + k[len("blocks."):] if k.startswith("blocks.") else k): v for k, v in state.items()}


LAYOUTS: dict[str, Callable[[dict[str, Tensor]], Any]] = {
    "mae_pretrain": lambda s: {"model": {**s, **_decoder("decoder_blocks."), "mask_token": torch.zeros(1, 1, 16),
                                         "decoder_embed.weight": torch.randn(16, 32)}},
    "audiomae_pretrain": lambda s: {"model": {**s, **_decoder("decoder_blocks."), "decoder_pred.weight":
                                              torch.randn(256, 16)}},
    "videomae_pretrain": lambda s: {"model": {**{"encoder." + k: v for k, v in s.items()},
                                              **_decoder("decoder.blocks."),
                                              "encoder_to_decoder.weight": torch.randn(16, 32),
                                              "mask_token": torch.zeros(1, 1, 16)}},
    "point_mae_pretrain": lambda s: {"base_model": {**{"MAE_encoder." + k: v for k, v in
                                                       _encoder(s, "blocks.blocks.").items()},
                                                    "MAE_encoder.encoder.first_conv.0.weight": torch.randn(128, 3, 1),
                                                    **_decoder("MAE_decoder.blocks."),
                                                    "mask_token": torch.zeros(1, 1, 32)}},
    "point_mae_finetune": lambda s: {"base_model": {"module." + k: v for k, v in
                                                    {**_encoder(s, "blocks.blocks."),
                                                     "cls_head_finetune.0.weight": torch.randn(256, 64)}.items()}},
}


def _target(kind: str, aux: str):
    if kind == "image":
        from Image.model import ImageClassifier

        return ImageClassifier(**TINY_IMAGE_MODEL, num_classes=3, aux_ckpts=[aux])
    if kind == "audio":
        from Audio.model import AudioClassifier

        return AudioClassifier(model_name="vit_tiny_patch16_224", embed_dim=32, depth=2, num_heads=2,
                               num_mel_bins=32, target_length=64, num_classes=3, aux_ckpts=[aux])
    from Point.model import PointClassifier

    return PointClassifier(num_groups=8, group_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3,
                           aux_ckpts=[aux])


@pytest.mark.parametrize("target", ["image", "audio", "point"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_aux_read_by_its_own_layout(tmp_path: Path, layout: str, target: str) -> None:
    torch.manual_seed(0)
    source = make_vit(seed=3, num_classes=7).state_dict()
    path = tmp_path / f"{layout}.pth"
    torch.save(LAYOUTS[layout](source), path)
    layers = dict(pathway_layers(_target(target, str(path)).backbone))
    assert sorted(layers) == sorted(f"blocks.{i}.{name}" for i in range(2) for name in LAYERS)
    for name, layer in layers.items():
        assert torch.equal(layer.aux_weight_0.detach(), source[f"{name}.weight"]), name


def test_aux_state_dict_keeps_only_encoder_blocks() -> None:
    source = make_vit(seed=3).state_dict()
    state = aux_state_dict(LAYOUTS["videomae_pretrain"](source)["model"], source="videomae.pth")
    assert set(state) == {k for k in source if k.startswith("blocks.")}


def test_aux_without_blocks_names_file_and_layouts() -> None:
    with pytest.raises(CheckpointError) as info:
        aux_state_dict({"features.0.weight": torch.zeros(4, 3), "fc.weight": torch.zeros(2, 4)}, source="resnet.pth")
    message = str(info.value)
    assert "resnet.pth" in message and "encoder.blocks." in message and "features.0.weight" in message


def test_aux_with_two_block_lists_is_ambiguous() -> None:
    source = make_vit(seed=3).state_dict()
    state = {**source, **{"encoder." + k: v for k, v in source.items()}}
    with pytest.raises(CheckpointError, match="several prefixes") as info:
        aux_state_dict(state, source="two.pth")
    assert "two.pth" in str(info.value)
