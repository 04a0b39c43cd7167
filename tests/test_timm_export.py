"""An Image export is a timm model as it stands: ``config.json`` beside ``model.safetensors`` carries the
architecture, the training preprocessing and the class names, so timm alone (its factory and its own transforms)
reproduces the trained model's predictions from raw image files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image as PILImage
from timm.data import create_transform, resolve_data_config

from conftest import TINY_MODEL_KWARGS
from Image.datamodule import ImageDataModule
from Image.model import ImageClassifier
from Image.synthetic import make_image_dataset
from pathway.cli import run_cli
from pathway.export import export_checkpoint
from pathway.module import PathwayModule

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)  # neither ImageNet's nor timm's ViT default (0.5)


def test_export_config_json_reproduces_predictions_through_timm_alone(tmp_path: Path, aux_ckpt: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_image_dataset(tmp_path / "data", classes=3, per_class=3, width=24, height=20, textured=True)
    monkeypatch.setattr(sys, "argv", ["python"])
    cli = run_cli(ImageClassifier, ImageDataModule, run=False, args=[
        "--config", str(REPO / "Image" / "configs" / "demo.yaml"),
        "--model.model_kwargs", json.dumps(TINY_MODEL_KWARGS), "--model.aux_ckpts", json.dumps([str(aux_ckpt)]),
        "--data.root", str(root), "--data.batch_size", "3", "--data.num_workers", "0",
        "--data.crop_pct", "0.8", "--data.interpolation", "bilinear",
        "--data.mean", json.dumps(MEAN), "--data.std", json.dumps(STD),
        "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "run"),
        "--lambda_monitor.heatmap", "false", "--run_summary.filename", "summary.json",
    ])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    sidecar = export_checkpoint(ckpt, tmp_path / "export", onnx=False)
    assert sidecar["files"]["timm_config"] == "config.json" and sidecar["label_names"] == ["class0", "class1", "class2"]

    model = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True).eval()
    data_config = resolve_data_config(model=model)
    assert tuple(data_config["mean"]) == MEAN and tuple(data_config["std"]) == STD
    assert data_config["crop_pct"] == 0.8 and data_config["interpolation"] == "bilinear"
    assert data_config["input_size"] == (3, 16, 16)
    assert model.pretrained_cfg["label_names"] == ["class0", "class1", "class2"]

    files = sorted((root / "val").glob("*/*.png"))
    transform = create_transform(**data_config)
    pixels = torch.stack([transform(PILImage.open(f).convert("RGB")) for f in files])
    trained = PathwayModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    val = cli.datamodule.build_split("val")
    reference = torch.stack([val[i][0] for i in range(len(files))])
    with torch.no_grad():
        torch.testing.assert_close(model(pixels), trained(reference), atol=1e-5, rtol=1e-5)
        assert model(pixels).abs().max() > 0


def test_export_without_data_settings_says_why_there_is_no_config_json(tmp_path: Path) -> None:
    from _scale_utils import save_aux, train_image_checkpoint

    train_image_checkpoint(tmp_path / "model.ckpt", save_aux(tmp_path / "aux.pt"))  # tensors, no datamodule
    sidecar = export_checkpoint(tmp_path / "model.ckpt", tmp_path / "export", onnx=False)
    assert "timm_config" not in sidecar["files"] and not (tmp_path / "export" / "config.json").exists()
    assert "datamodule_hyper_parameters" in sidecar["skipped"]["config.json"]
    assert sidecar["skipped"]["onnx"] == "--no-onnx"
