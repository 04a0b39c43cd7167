"""Atomic checkpoint writes, the CLI's default CheckpointIO, and which file ``--ckpt_path last`` resumes from."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

import pathway.atomic
import pathway.checkpoint_io as checkpoint_io
from pathway.checkpoint_io import AtomicCheckpointIO
from pathway.resume import resolve_last_checkpoint


def test_crash_in_the_middle_of_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(4)}, path)

    def crash(obj, file) -> None:  # half the bytes reach the disk, then the process "dies"
        Path(file).write_bytes(b"PK\x03\x04 truncated")
        raise OSError("simulated crash during save")

    monkeypatch.setattr(checkpoint_io.torch, "save", crash)
    with pytest.raises(OSError, match="simulated crash"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()

    restored = io.load_checkpoint(path)
    assert restored["global_step"] == 1 and torch.equal(restored["w"], torch.ones(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp file left behind


def test_save_replaces_atomically_and_fsyncs(tmp_path: Path, monkeypatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(pathway.atomic.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "sub" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, path)
    inode = path.stat().st_ino
    io.save_checkpoint({"global_step": 2}, path)
    assert io.load_checkpoint(path)["global_step"] == 2
    assert path.stat().st_ino != inode  # a new file was renamed over the old one, not rewritten in place
    assert len(synced) >= 2
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({"global_step": 3}, path, storage_options={"x": 1})


def _touch(path: Path, age: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_resolve_last_takes_the_newest_of_last_and_hpc_checkpoints(tmp_path: Path) -> None:
    assert resolve_last_checkpoint(str(tmp_path)) is None  # first run: nothing to resume, no error
    _touch(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", age=300)
    newest_last = _touch(tmp_path / "lightning_logs/version_1/checkpoints/last.ckpt", age=200)
    _touch(tmp_path / "lightning_logs/version_1/checkpoints/.last.ckpt.tmp-123", age=0)  # interrupted write
    _touch(tmp_path / "lightning_logs/version_1/last.ckpt", age=0)  # not a checkpoint folder
    assert resolve_last_checkpoint(str(tmp_path)) == str(newest_last)
    hpc = _touch(tmp_path / "hpc_ckpt_1.ckpt", age=100)  # written by Lightning's SLURM requeue handler
    assert resolve_last_checkpoint(str(tmp_path)) == str(hpc)
    fixed = _touch(tmp_path / "ckpts/last.ckpt", age=50)
    assert resolve_last_checkpoint(str(tmp_path), str(tmp_path / "ckpts")) == str(fixed)


def _cli_trainer(tmp_path: Path, *extra: str):
    from Image.datamodule import ImageDataModule
    from Image.model import ImageClassifier
    from Image.synthetic import make_image_dataset
    from pathway.cli import run_cli

    root = make_image_dataset(tmp_path / "data", classes=2, per_class=1)
    args = ["--data.root", str(root), "--data.img_size", "16", "--model.model_name", "vit_tiny_patch16_224",
            "--model.model_kwargs", "{patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
            "--trainer.accelerator", "cpu", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path / "run"), *extra]
    return run_cli(ImageClassifier, ImageDataModule, args=args, run=False).trainer


def test_cli_uses_atomic_checkpoint_io_and_keeps_user_plugins(tmp_path: Path) -> None:
    trainer = _cli_trainer(tmp_path)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert any(type(cb).__name__ == "SigtermCheckpoint" for cb in trainer.callbacks)

    trainer = _cli_trainer(tmp_path, "--trainer.plugins", "lightning.pytorch.plugins.io.TorchCheckpointIO")
    assert type(trainer.strategy.checkpoint_io) is TorchCheckpointIO  # the user's choice wins

    trainer = _cli_trainer(tmp_path, "--trainer.plugins", "lightning.pytorch.plugins.environments.LightningEnvironment")
    assert type(trainer._accelerator_connector.cluster_environment).__name__ == "LightningEnvironment"
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
