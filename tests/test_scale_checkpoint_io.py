"""Atomic checkpoint writes, the CLI's default CheckpointIO, and which file ``--ckpt_path last`` resumes from."""
from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

import pathway.atomic
import pathway.checkpoint_io as checkpoint_io
from pathway.checkpoint import CheckpointError
from pathway.checkpoint_io import AtomicCheckpointIO
from pathway.resume import resolve_last_checkpoint


def test_crash_in_the_middle_of_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(4)}, path)

    def crash(obj, fh) -> None:  # half the bytes reach the disk, then the process "dies"
        fh.write(b"PK\x03\x04 truncated")
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


def test_disk_full_names_enospc_and_the_checkpoint(tmp_path: Path) -> None:
    # The temporary file the write goes to is a link to /dev/full: every write fails with ENOSPC, as on a full disk.
    # torch.save alone reports that as "RuntimeError: unexpected pos", naming neither the cause nor the file.
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(4)}, path)
    (tmp_path / f".last.ckpt.tmp-{os.getpid()}").symlink_to("/dev/full")
    with pytest.raises(OSError, match=r"ENOSPC: no space left .* checkpoint .*last\.ckpt") as info:
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(256, 256)}, path)
    assert info.value.errno == errno.ENOSPC
    assert io.load_checkpoint(path)["global_step"] == 1  # the previous checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.mark.parametrize("content", [b"", b"hello\n", b"PK\x03\x04 truncated zip"])
def test_unreadable_checkpoint_is_named(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"{path}: (is empty|not a readable Lightning checkpoint)"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_load_is_weights_only_unless_trusted(tmp_path: Path) -> None:
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "module": torch.nn.Linear(2, 2)}, path)  # a pickled module: needs full pickle
    with pytest.raises(CheckpointError, match="trust_pickle"):
        AtomicCheckpointIO().load_checkpoint(path)
    assert isinstance(AtomicCheckpointIO(trust_pickle=True).load_checkpoint(path)["module"], torch.nn.Linear)
    assert isinstance(AtomicCheckpointIO().load_checkpoint(path, weights_only=False)["module"], torch.nn.Linear)
    with pytest.raises(CheckpointError, match="is a URL"):
        AtomicCheckpointIO().load_checkpoint("http://127.0.0.1:9/x.ckpt")


def test_rng_states_load_weights_only(tmp_path: Path) -> None:
    import numpy as np

    path = tmp_path / "rng.ckpt"
    state = np.random.RandomState(0).get_state()
    torch.save({"rng": {"numpy": state}, "score": np.float64(0.5)}, path)
    loaded = AtomicCheckpointIO().load_checkpoint(path)
    assert np.array_equal(loaded["rng"]["numpy"][1], state[1]) and loaded["score"] == 0.5


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
