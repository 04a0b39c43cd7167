"""Evaluating a trained run needs only its checkpoint: `python -m Image test --ckpt_path X` reads neither the
pre-training target file nor (unless X holds them by reference) the aux files, and a missing aux file is named."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_MODEL_KWARGS, make_vit
from Image.datamodule import ImageDataModule
from Image.model import ImageClassifier
from pathway.checkpoint import CheckpointError
from pathway.cli import run_cli

CONFIG = Path(__file__).resolve().parents[1] / "Image" / "configs" / "demo.yaml"


def _args(digits_root: Path, target: Path, aux: Path, out: Path) -> list[str]:
    return [
        "--config", str(CONFIG), "--model.model_kwargs", json.dumps(TINY_MODEL_KWARGS),
        "--model.target_ckpt", str(target), "--model.aux_ckpts", json.dumps([str(aux)]),
        "--model.aux_trainable", "false", "--data.root", str(digits_root), "--data.img_size", "16",
        "--data.batch_size", "8", "--data.num_workers", "0", "--trainer.default_root_dir", str(out),
    ]


def test_cli_test_with_ckpt_path_needs_no_target_file(
    digits_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["python"])  # pytest's own arguments are not for the CLI
    target, aux = tmp_path / "target.pt", tmp_path / "aux.pt"
    torch.save(make_vit(seed=5, num_classes=7).state_dict(), target)
    torch.save(make_vit(seed=123, num_classes=7).state_dict(), aux)
    args = _args(digits_root, target, aux, tmp_path / "run")
    fit = run_cli(ImageClassifier, ImageDataModule, args=["fit", *args, "--trainer.max_steps", "2",
                                                          "--trainer.limit_val_batches", "1"])
    last = fit.trainer.checkpoint_callback.last_model_path
    digest = torch.load(last, map_location="cpu", weights_only=True)["pathway_aux_sha256"][str(aux)]
    target.rename(tmp_path / "moved.pt")

    test = run_cli(ImageClassifier, ImageDataModule, args=["test", *args, "--trainer.limit_test_batches", "2",
                                                           "--ckpt_path", last])
    assert "test/acc1" in test.trainer.callback_metrics
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(test.model.eval()(x), fit.model.eval()(x), atol=1e-6, rtol=0)

    aux.unlink()  # frozen aux stored by reference: this one is needed, and its absence is explained
    with pytest.raises(CheckpointError, match="is missing") as info:
        run_cli(ImageClassifier, ImageDataModule, args=["validate", *args, "--ckpt_path", last])
    assert str(aux) in str(info.value) and digest in str(info.value) and "merged.safetensors" in str(info.value)
