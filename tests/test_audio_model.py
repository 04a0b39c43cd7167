"""Audio ViT: AudioMAE checkpoint loading, position embeddings, the pathway fit on audio data, mAP."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch

from Audio.backbone import build_audio_vit, sincos_pos_embed_2d
from Audio.datamodule import AudioDataModule
from Audio.model import AudioClassifier
from Audio.synthetic import make_tone_dataset
from pathway.surgery import pathway_layers

TINY = dict(model_name="vit_tiny_patch16_224", embed_dim=32, depth=2, num_heads=2, num_mel_bins=32,
            drop_path_rate=0.0)


def audiomae_pretrain_state(target_length: int, seed: int = 5) -> dict[str, torch.Tensor]:
    """A tiny state dict in the AudioMAE pre-training format: encoder + final norm + decoder + mask token."""
    torch.manual_seed(seed)
    encoder = build_audio_vit(11, target_length=target_length, **TINY).state_dict()
    state = {k: v for k, v in encoder.items() if not k.startswith(("fc_norm.", "head."))}
    state["norm.weight"], state["norm.bias"] = torch.randn(32), torch.randn(32)
    state["mask_token"] = torch.randn(1, 1, 16)
    state["decoder_embed.weight"] = torch.randn(16, 32)
    state["decoder_pos_embed"] = torch.randn(1, state["pos_embed"].shape[1], 16)
    state["decoder_blocks.0.attn.qkv.weight"] = torch.randn(48, 16)
    state["decoder_pred.weight"] = torch.randn(16 * 16, 16)
    return state


def test_audiomae_checkpoint_really_loads(tmp_path: Path) -> None:
    state = audiomae_pretrain_state(target_length=64)
    path = tmp_path / "audiomae.pth"
    torch.save({"model": state, "epoch": 32}, path)
    model = AudioClassifier(num_classes=3, target_ckpt=str(path), target_length=64, **TINY)
    loaded = model.backbone.state_dict()
    for key in ("patch_embed.proj.weight", "pos_embed", "cls_token", "blocks.0.attn.qkv.weight",
                "blocks.1.mlp.fc2.bias", "blocks.1.norm2.weight"):
        assert torch.equal(loaded[key], state[key]), key
    fresh = AudioClassifier(num_classes=3, target_length=64, **TINY).backbone.state_dict()
    assert not torch.equal(fresh["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])
    assert loaded["head.weight"].shape == (3, 32)


def test_finetuned_checkpoint_keeps_fc_norm_and_drops_other_head(tmp_path: Path) -> None:
    torch.manual_seed(1)
    state = build_audio_vit(527, target_length=64, **TINY).state_dict()
    path = tmp_path / "audiomae_as2m_finetuned.pth"
    torch.save({"model": state}, path)
    backbone = AudioClassifier(num_classes=4, target_ckpt=str(path), target_length=64, **TINY).backbone
    assert torch.equal(backbone.fc_norm.weight, state["fc_norm.weight"])
    assert backbone.head.weight.shape == (4, 32)


def test_pos_embed_interpolated_along_time(tmp_path: Path) -> None:
    state = audiomae_pretrain_state(target_length=64)
    cols = 2
    column_values = torch.randn(1, 1, cols, 32)
    state["pos_embed"] = torch.cat([torch.randn(1, 1, 32), column_values.expand(1, 4, cols, 32).reshape(1, 8, 32)], 1)
    path = tmp_path / "audiomae.pth"
    torch.save({"model": state}, path)
    pos = AudioClassifier(num_classes=3, target_ckpt=str(path), target_length=128, **TINY).backbone.pos_embed
    assert pos.shape == (1, 1 + 8 * cols, 32)
    assert torch.equal(pos[:, :1], state["pos_embed"][:, :1])
    grid = pos[:, 1:].reshape(1, 8, cols, 32)
    assert torch.allclose(grid, column_values.expand_as(grid), atol=1e-5)


def test_sincos_pos_embed_is_fixed() -> None:
    model = build_audio_vit(3, target_length=64, pos_embed="sincos", **TINY)
    expected = sincos_pos_embed_2d(32, (4, 2))
    assert torch.equal(model.pos_embed.data, expected) and not model.pos_embed.requires_grad
    assert torch.equal(expected[0, 0], torch.zeros(32))
    rows = expected[0, 1:].reshape(4, 2, 32)
    assert torch.equal(rows[0, 0, :8], torch.zeros(8)) and torch.equal(rows[0, 0, 8:16], torch.ones(8))
    assert not torch.equal(rows[1, 0, :16], rows[0, 0, :16]) and torch.equal(rows[1, 0, 16:], rows[0, 0, 16:])
    with pytest.raises(ValueError, match="multiples of the patch size"):
        build_audio_vit(3, target_length=70, **TINY)


def test_multilabel_map_on_toy_case() -> None:
    model = AudioClassifier(num_classes=2, multilabel=True, target_length=64, **TINY)
    scores = torch.tensor([[0.9, 0.2], [0.8, 0.7], [0.3, 0.6], [0.1, 0.4]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(model.scores(torch.logit(scores)), scores, atol=1e-6)
    metrics = model.val_metrics
    metrics.update(model.scores(torch.logit(scores)), model._metric_target(targets))
    # class 0 ranks hit, miss, hit, miss: AP = (1/1 + 2/3) / 2; class 1 ranks its only hit first: AP = 1.
    assert metrics.compute()["val/mAP"].item() == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2, abs=1e-6)


def _audioset_tree(root: Path) -> tuple[Path, Path]:
    tones = make_tone_dataset(root / "tones", classes=["tone_low", "chirp_up", "noise_burst"], per_class=2,
                              val_per_class=1, seconds=0.7)
    csv = root / "class_labels_indices.csv"
    csv.write_text("index,mid,display_name\n0,/m/low,Low\n1,/m/up,Up\n2,/m/noise,Noise\n")
    mids = {"tone_low": "/m/low", "chirp_up": "/m/up", "noise_burst": "/m/noise"}
    entries = [{"wav": str(p), "labels": mids[p.parent.name] + (",/m/noise" if i % 2 else "")}
               for i, p in enumerate(sorted((tones / "train").rglob("*.wav")))]
    data = root / "train.json"
    data.write_text(json.dumps({"data": entries}))
    return data, csv


def _fit(model: AudioClassifier, dm: AudioDataModule) -> L.Trainer:
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    return trainer


def test_pathway_fit_multilabel_audioset(tmp_path: Path, aux_ckpt: Path) -> None:
    data, csv = _audioset_tree(tmp_path)
    dm = AudioDataModule(format="audioset", train_json=str(data), val_json=str(data), label_csv=str(csv),
                         batch_size=2, num_workers=0, pin_memory=False, num_mel_bins=32, target_length=64,
                         freqm=8, timem=16, wave_mixup=0.5, roll=True)
    model = AudioClassifier(num_classes=dm.num_classes, multilabel=True, target_length=64, aux_ckpts=[str(aux_ckpt)],
                            aux_trainable=False, lr=1e-2, warmup_epochs=0.0, **TINY)
    aux_qkv = torch.load(aux_ckpt)["blocks.0.attn.qkv.weight"]
    layer = dict(pathway_layers(model.backbone))["blocks.0.attn.qkv"]
    assert torch.equal(layer.aux_weight_0, aux_qkv) and layer.lambdas.abs().sum() == 0
    trainer = _fit(model, dm)
    assert trainer.global_step == 2
    assert layer.lambdas.abs().sum() > 0 and torch.equal(layer.aux_weight_0, aux_qkv)
    metrics = trainer.validate(model, datamodule=dm, verbose=False)[0]
    assert 0.0 <= metrics["val/mAP"] <= 1.0 and np.isfinite(metrics["val/loss"])


def test_pathway_fit_single_label_with_wave_mixup(tmp_path: Path, aux_ckpt: Path) -> None:
    root = make_tone_dataset(tmp_path / "tones", classes=["tone_low", "tone_high"], per_class=2, seconds=0.7)
    dm = AudioDataModule(format="folder", root=str(root), batch_size=2, num_workers=0, pin_memory=False,
                         num_mel_bins=32, target_length=64, wave_mixup=1.0)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))[1].dtype == torch.float32
    model = AudioClassifier(num_classes=dm.num_classes, target_length=64, aux_ckpts=[str(aux_ckpt)], lr=1e-2,
                            aux_trainable=False, store_aux_in_checkpoint=True, warmup_epochs=0.0, **TINY)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainer = _fit(model, dm)
    after = model.backbone.state_dict()
    assert trainer.global_step == 2
    assert not torch.equal(before["blocks.0.mlp.fc1.lambdas"], after["blocks.0.mlp.fc1.lambdas"])
    assert torch.equal(before["blocks.0.mlp.fc1.aux_weight_0"], after["blocks.0.mlp.fc1.aux_weight_0"])


def test_multilabel_flag_must_match_data(tmp_path: Path) -> None:
    data, csv = _audioset_tree(tmp_path)
    dm = AudioDataModule(format="audioset", train_json=str(data), val_json=str(data), label_csv=str(csv),
                         batch_size=2, num_workers=0, pin_memory=False, num_mel_bins=32, target_length=64)
    model = AudioClassifier(num_classes=dm.num_classes, multilabel=False, target_length=64, lr=1e-3, **TINY)
    with pytest.raises(ValueError, match="multilabel"):
        _fit(model, dm)


def test_fbank_grid_matches_the_model(tmp_path: Path) -> None:
    for name in ("x", "y"):
        (tmp_path / "train" / name).mkdir(parents=True)
        wave = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
        sf.write(tmp_path / "train" / name / "a.wav", wave, 16000)
    dm = AudioDataModule(format="folder", root=str(tmp_path), num_mel_bins=32, target_length=64, num_workers=0)
    fbank, _ = dm.build_dataset("train")[0]
    assert fbank.shape == (1, 64, 32)
    logits = AudioClassifier(num_classes=dm.num_classes, target_length=64, **TINY)(fbank.unsqueeze(0))
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
