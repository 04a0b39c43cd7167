"""What a run shows: whole progress lines in a log file, lr curves named by block, no tips or warnings nobody acts
on, no empty ``version_N`` folder after a run that failed before training, one backend line for Point, and one name
(``re_prob``) for random erasing."""
from __future__ import annotations

import csv
import json
import logging
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import pathway.cli
from conftest import TINY_MODEL_KWARGS, make_vit
from Image.datamodule import ImageDataModule
from Image.model import ImageClassifier
from pathway import reparameterize_aux_into_target_model
from pathway.cli import run_cli
from pathway.optim import layer_decay_param_groups
from Point import ops
from Video.datamodule import VideoDataModule

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["python"])


def _args(digits_root: Path, aux_ckpt: Path, out: Path) -> list[str]:
    return [
        "--config", str(REPO / "Image" / "configs" / "demo.yaml"),
        "--model.model_kwargs", json.dumps(TINY_MODEL_KWARGS), "--model.aux_ckpts", json.dumps([str(aux_ckpt)]),
        "--data.root", str(digits_root), "--data.img_size", "16", "--data.batch_size", "8",
        "--data.num_workers", "0", "--trainer.default_root_dir", str(out), "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1", "--lambda_monitor.heatmap", "false",
    ]


def test_fit_into_a_file_prints_lines_and_names_lr_groups(digits_root: Path, aux_ckpt: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(pathway.cli, "FILE_PROGRESS_REFRESH_RATE", 2)
    caplog.set_level(logging.INFO)
    args = _args(digits_root, aux_ckpt, tmp_path) + ["--trainer.callbacks+=LearningRateMonitor",
                                                     "--trainer.log_every_n_steps", "1"]
    with warnings.catch_warnings(record=True) as seen:
        cli = run_cli(ImageClassifier, ImageDataModule, args=["fit", *args], command="Image")
    out = capsys.readouterr().out
    assert "\r" not in out and "\x1b[" not in out
    lines = out.splitlines()
    assert any(line.startswith("epoch 0 train 2/3 batches") and "train/loss" in line for line in lines), out
    assert not any(line.startswith("epoch 0 train 3/3") for line in lines), "the epoch line says it"
    assert any(line.startswith("epoch 0 done in") and "val/acc1=" in line for line in lines), out
    assert not [r for r in caplog.records if "Tip" in r.getMessage()], "Lightning's litlogger/litmodels tips"
    assert not [w for w in seen if "LeafSpec" in str(w.message)]
    header = next(csv.reader(open(Path(cli.trainer.log_dir) / "metrics.csv")))
    assert {"lr-AdamW/embed", "lr-AdamW/block0", "lr-AdamW/block1_lambda", "lr-AdamW/head"} <= set(header), header
    assert not [name for name in header if name.startswith("lr-AdamW/pg")]

    last = cli.trainer.checkpoint_callback.last_model_path
    with warnings.catch_warnings(record=True) as seen:
        run_cli(ImageClassifier, ImageDataModule, args=["validate", *args, "--ckpt_path", last], command="Image")
    assert not [w for w in seen if "dirpath has changed" in str(w.message)]
    assert any(line.startswith("validate 1/1 batches") for line in capsys.readouterr().out.splitlines())


def test_lr_groups_are_named_by_block() -> None:
    model = make_vit(seed=0)
    reparameterize_aux_into_target_model(model, [make_vit(seed=1).state_dict()], lambda_init=0.1)
    groups = layer_decay_param_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    names = [g["name"] for g in groups]
    assert len(set(names)) == len(names)
    assert {"embed", "embed_no_wd", "block0", "block0_no_wd", "block0_lambda", "block1_lambda", "head"} <= set(names)
    by_name = {g["name"]: g for g in groups}
    lambdas = {id(m.lambdas) for m in model.modules() if hasattr(m, "lambdas")}
    assert {id(p) for p in by_name["block0_lambda"]["params"]} <= lambdas
    assert by_name["block0"]["weight_decay"] == 0.05 and by_name["block0_no_wd"]["weight_decay"] == 0.0
    assert model.blocks[1].attn.qkv.weight in by_name["block1"]["params"]
    assert by_name["head"]["lr"] == 1.0 and by_name["block1"]["lr"] == 0.5 and by_name["embed"]["lr"] == 0.125


@pytest.mark.parametrize("fail_at, kept", [(0, False), (1, True)])
def test_run_that_fails_before_training_leaves_no_version_folder(digits_root: Path, aux_ckpt: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, fail_at: int,
                                                                 kept: bool) -> None:
    train = ImageClassifier.training_step

    def failing(self, batch, batch_idx):
        if batch_idx == fail_at:
            raise RuntimeError("stop here")
        return train(self, batch, batch_idx)

    monkeypatch.setattr(ImageClassifier, "training_step", failing)
    with pytest.raises(RuntimeError, match="stop here"):
        run_cli(ImageClassifier, ImageDataModule, args=["fit", *_args(digits_root, aux_ckpt, tmp_path)])
    versions = list((tmp_path / "lightning_logs").glob("version_*"))
    assert bool(versions) == kept, versions  # after one optimizer step the run has logs worth keeping


class _WorkerProbe(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> torch.Tensor:
        ops.farthest_point_sample(torch.rand(1, 8, 3), 2)
        return torch.tensor(ops._backend_logged)


def test_point_backend_is_not_logged_again_by_each_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "_backend_logged", False)
    (logged_in_worker,) = DataLoader(_WorkerProbe(), batch_size=None, num_workers=1)
    assert not logged_in_worker


def test_random_erasing_is_re_prob_in_video_as_in_image(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "train.csv").write_text("a.mp4 0\nb.mp4 1\n")
    assert VideoDataModule(str(tmp_path), re_prob=0.4).hparams.re_prob == 0.4
    with caplog.at_level(logging.WARNING):
        old = VideoDataModule(str(tmp_path), reprob=0.4)
    assert old.hparams.re_prob == 0.4 and "data.reprob is the former name of data.re_prob" in caplog.text
    with pytest.raises(ValueError, match="set re_prob only"):
        VideoDataModule(str(tmp_path), reprob=0.4, re_prob=0.1)
