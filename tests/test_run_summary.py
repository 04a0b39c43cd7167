"""The end of a fit: a summary with the best metric, its epoch and checkpoint, the merged export, wall time and
throughput; best checkpoint names carry the monitored metric (without the '/' that would make a folder)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import TINY_MODEL_KWARGS
from Image.datamodule import ImageDataModule
from Image.model import ImageClassifier
from Image.synthetic import make_image_dataset
from pathway.callbacks import RunSummary
from pathway.cli import run_cli
from pathway.resume import LastAndBestCheckpoint

REPO = Path(__file__).resolve().parents[1]


def test_fit_prints_a_summary_with_the_best_checkpoint(tmp_path: Path, aux_ckpt: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    root = make_image_dataset(tmp_path / "data", classes=3, per_class=4, width=16, height=16)
    monkeypatch.setattr(sys, "argv", ["python"])
    cli = run_cli(ImageClassifier, ImageDataModule, run=False, args=[
        "--config", str(REPO / "Image" / "configs" / "demo.yaml"),
        "--model.model_kwargs", json.dumps(TINY_MODEL_KWARGS), "--model.aux_ckpts", json.dumps([str(aux_ckpt)]),
        "--data.root", str(root), "--data.batch_size", "4", "--data.num_workers", "0",
        "--trainer.max_epochs", "3", "--trainer.default_root_dir", str(tmp_path / "run"),
        "--lambda_monitor.heatmap", "false",
    ])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    printed = capsys.readouterr().out

    checkpoint = cli.trainer.checkpoint_callback
    summary = next(c for c in cli.trainer.callbacks if isinstance(c, RunSummary)).last_summary
    best = Path(checkpoint.best_model_path)
    match = re.fullmatch(r"best-epoch=(\d+)-val_acc1=(\d\.\d{4})\.ckpt", best.name)
    assert match, best.name
    assert int(match.group(1)) == summary["best_epoch"] == torch.load(best, weights_only=False)["epoch"]
    assert float(match.group(2)) == pytest.approx(summary["best"], abs=5e-5)
    assert summary["monitor"] == "val/acc1" and summary["best"] == pytest.approx(float(checkpoint.best_model_score))
    assert summary["best_checkpoint"] == str(best) and Path(summary["merged_export"]).is_file()
    assert summary["train_samples"] == 3 * 12 and summary["samples_per_second"] > 0 and summary["wall_seconds"] > 0
    assert "Run summary" in printed and str(best) in printed and summary["merged_export"] in printed
    written = json.loads((Path(cli.trainer.log_dir) / "run_summary.json").read_text())
    assert written == summary


def test_best_checkpoint_name_carries_any_monitored_metric(tmp_path: Path) -> None:
    callback = LastAndBestCheckpoint(dirpath=tmp_path, monitor="val/mAP", mode="max",
                                     filename="best-epoch={epoch}-{monitor}", auto_insert_metric_name=False)
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[callback], enable_progress_bar=False)
    callback.setup(trainer, L.LightningModule(), "fit")
    name = callback.format_checkpoint_name({"epoch": torch.tensor(3), "val/mAP": torch.tensor(0.351234)})
    assert Path(name).name == "best-epoch=3-val_mAP=0.3512.ckpt"
    unmonitored = LastAndBestCheckpoint(dirpath=tmp_path, filename="best-epoch={epoch}-{monitor}",
                                        auto_insert_metric_name=False)
    unmonitored.setup(trainer, L.LightningModule(), "fit")
    name = unmonitored.format_checkpoint_name({"epoch": torch.tensor(3), "step": torch.tensor(120)})
    assert Path(name).name == "best-epoch=3-step=120.ckpt"
