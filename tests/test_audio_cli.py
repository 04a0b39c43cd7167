"""The Audio command line: demo config end to end (tiny) and the links from data to model (recipes: test_configs.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from Audio.backbone import build_audio_vit
from Audio.datamodule import AudioDataModule
from Audio.model import AudioClassifier
from Audio.synthetic import make_tone_dataset
from pathway.cli import run_cli
from pathway.export import export_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "Audio" / "configs"


def test_demo_config_fits_and_exports_plain_vit(
    tmp_path: Path, aux_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["python"])
    root = make_tone_dataset(tmp_path / "tones", classes=["tone_low", "chirp_down", "click_train"], per_class=2,
                             val_per_class=1, seconds=0.7)
    args = [
        "fit", "--config", str(CONFIGS / "demo.yaml"),
        "--model.embed_dim", "32", "--model.depth", "2", "--model.num_heads", "2",
        "--model.aux_ckpts", json.dumps([str(aux_ckpt)]),
        "--data.root", str(root), "--data.target_length", "64", "--data.num_mel_bins", "32",
        "--data.batch_size", "2", "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path / "run"),
    ]
    cli = run_cli(AudioClassifier, AudioDataModule, args=args)
    assert cli.model.hparams.num_classes == 3 and cli.trainer.global_step == 2
    merged = sorted((tmp_path / "run").rglob("merged.safetensors"))
    assert merged, "no merged export written"
    plain = build_audio_vit(3, model_name="vit_tiny_patch16_224", embed_dim=32, depth=2, num_heads=2,
                            target_length=64, num_mel_bins=32, pos_embed="sincos")
    plain.load_state_dict(load_file(str(merged[-1])), strict=True)
    last = sorted((tmp_path / "run").rglob("last.ckpt"))[-1]
    sidecar = export_checkpoint(last, tmp_path / "export", onnx=False)
    assert (tmp_path / "export" / "model.safetensors").is_file() and sidecar


def test_cli_links_fbank_grid_and_label_kind_from_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`data.format: audioset` makes the model multi-label (BCE + mAP) and the data's fbank grid sizes the model."""
    from test_audio_data import make_audioset

    monkeypatch.setattr(sys, "argv", ["python"])
    data, csv = make_audioset(tmp_path)
    cli = run_cli(AudioClassifier, AudioDataModule, run=False, args=[
        "--config", str(CONFIGS / "demo.yaml"), "--model.embed_dim", "32", "--model.depth", "2",
        "--model.num_heads", "2", "--data.format", "audioset", "--data.train_json", str(data),
        "--data.val_json", str(data), "--data.label_csv", str(csv), "--data.target_length", "64",
        "--data.num_mel_bins", "32", "--data.synthetic", "false",
    ])
    assert cli.model.hparams.multilabel is True and cli.model.hparams.num_classes == 3
    assert (cli.model.hparams.target_length, cli.model.hparams.num_mel_bins) == (64, 32)
    assert cli.model.example_input_shape() == (1, 64, 32)
