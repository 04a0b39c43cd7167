"""Helpers shared by the scale, resume and launcher tests: tensor data, tiny Image checkpoints, fit configs."""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import TINY_MODEL_KWARGS, make_vit

TINY_IMAGE_MODEL: dict[str, Any] = dict(
    model_name="vit_tiny_patch16_224", img_size=16, drop_path_rate=0.0, model_kwargs=dict(TINY_MODEL_KWARGS)
)
QUIET_TRAINER: dict[str, Any] = dict(
    accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0
)


def save_aux(path: Path, seed: int = 123, **overrides: Any) -> Path:
    torch.save(make_vit(seed=seed, num_classes=7, **overrides).state_dict(), path)
    return path


class TensorDataModule(L.LightningDataModule):
    """In-memory ``(x, y[, sample_ids])`` splits with unshuffled loaders (Lightning still shuffles training under DDP)."""

    def __init__(self, train: tuple, batch_size: int, val: Optional[tuple] = None, test: Optional[tuple] = None):
        super().__init__()
        self.splits = {"train": train, "val": val, "test": test}
        self.batch_size = batch_size

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(TensorDataset(*self.splits[split]), batch_size=self.batch_size, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val") if self.splits["val"] is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


def random_split(n: int, num_classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, num_classes, (n,), generator=g)


def train_image_checkpoint(path: Path, aux: Optional[Path], steps: int = 3, num_classes: int = 3,
                           **model_args: Any):
    """Fit a tiny ``ImageClassifier`` (with a pathway from ``aux``) for ``steps`` steps and save a checkpoint."""
    from Image.model import ImageClassifier

    torch.manual_seed(0)
    args = dict(TINY_IMAGE_MODEL, num_classes=num_classes, aux_ckpts=[str(aux)] if aux else [], lr=5e-2,
                warmup_epochs=0.0, weight_decay=0.0, label_smoothing=0.0)
    model = ImageClassifier(**{**args, **model_args})
    trainer = L.Trainer(max_steps=steps, enable_checkpointing=False, **QUIET_TRAINER)
    trainer.fit(model, TensorDataModule(random_split(8, num_classes), batch_size=4))
    trainer.save_checkpoint(path)
    return model


class DumpTrainingState(L.Callback):
    """Writes what a (resumed) fit starts from: step, optimizer and scheduler state, λ (used by the resume test)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from pathway.atomic import atomic_write
        from pathway.surgery import lambda_table

        state = {
            "global_step": trainer.global_step,
            "optimizer": trainer.optimizers[0].state_dict(),
            "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
            "lambdas": lambda_table(pl_module.backbone),
        }
        # whole or absent: the test polls for the file and reads it while this process keeps training
        atomic_write(self.path, lambda tmp: torch.save(state, tmp))


def tiny_image_fit_config(tmp_path: Path, root: Path, aux: Path, trainer: dict[str, Any], model: dict[str, Any],
                          data: Optional[dict[str, Any]] = None, **sections: Any) -> Path:
    """``tmp_path/fit.yaml`` for ``python -m Image fit``: the tiny ViT with a pathway from ``aux`` on a 16-px
    ImageFolder without RandAugment or erasing (unless ``data`` says otherwise), runs in ``tmp_path/run``; each test
    adds its trainer and model settings and any other section (``checkpoint``, ``lambda_monitor`` ...)."""
    import yaml

    config = {
        "seed_everything": 0,
        "trainer": {"default_root_dir": str(tmp_path / "run"), "enable_model_summary": False, **trainer},
        "model": {"model_name": "vit_tiny_patch16_224", "drop_path_rate": 0.0,
                  "model_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
                  "aux_ckpts": [str(aux)], **model},
        "data": {"root": str(root), "img_size": 16, "batch_size": 2, "num_workers": 0, "pin_memory": False,
                 "auto_augment": None, "re_prob": 0.0, **(data or {})},
        **sections,
    }
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class StopAfterEpoch(L.Callback):
    """Stops the fit at the end of epoch ``epoch``, the way a job ends at an epoch boundary (``last.ckpt`` written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class SigtermAtStep(L.Callback):
    """Sends SIGTERM to rank 0's process before step ``step`` (``kill <pid>`` of a running job): the ranks agree to
    stop after that step and write ``last.ckpt``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.step and trainer.global_rank == 0:
            os.kill(os.getpid(), signal.SIGTERM)


class LastValMetrics(L.Callback):
    """Keeps the last validation's metrics (``val/*``) next to the checkpoints, as ``val_metrics.pt``."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = trainer.checkpoint_callback.dirpath
        metrics = {k: v.detach().cpu() for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if trainer.is_global_zero and not trainer.sanity_checking:
            Path(folder).mkdir(parents=True, exist_ok=True)
            torch.save({"epoch": trainer.current_epoch, "metrics": metrics}, Path(folder) / "val_metrics.pt")


def augmented_fit_args(tmp_path: Path, root: Path, aux: Path, run: str, epochs: int, workers: int = 1) -> list[str]:
    """``python -m Image fit`` arguments for the tiny pathway ViT with every random augmentation on (RandAugment,
    random erasing, drop path, mixup/cutmix) and ``workers`` loader workers, running in ``tmp_path/run``."""
    import json

    return ["fit", "--seed_everything", "0", "--trainer.default_root_dir", str(tmp_path / run),
            "--trainer.max_epochs", str(epochs), "--trainer.accelerator", "cpu", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.num_sanity_val_steps", "0", "--lambda_monitor.heatmap", "false",
            "--model.model_name", "vit_tiny_patch16_224", "--model.drop_path_rate", "0.1",
            "--model.model_kwargs", json.dumps({"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}),
            "--model.aux_ckpts", json.dumps([str(aux)]), "--model.lr", "5e-3", "--model.warmup_epochs", "1",
            "--model.mixup", "0.8", "--model.cutmix", "1.0",
            "--data.root", str(root), "--data.img_size", "16", "--data.batch_size", "2",
            "--data.num_workers", str(workers), "--data.pin_memory", "false",
            "--data.auto_augment", "rand-m9-mstd0.5-inc1", "--data.re_prob", "0.25",
            "--trainer.callbacks+=_scale_utils.LastValMetrics"]


def assert_same_training_state(resumed_path: Path, reference_path: Path) -> None:
    """Bit for bit: step, weights (λ included), optimizer and scheduler state, and the last validation's metrics
    (``LastValMetrics``)."""
    resumed = torch.load(resumed_path, map_location="cpu", weights_only=True)
    reference = torch.load(reference_path, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == reference["global_step"] > 0
    assert resumed["state_dict"].keys() == reference["state_dict"].keys()
    for key, value in reference["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    lambdas = [v for k, v in reference["state_dict"].items() if k.endswith(".lambdas")]
    assert lambdas and any(bool(v.abs().max() > 0) for v in lambdas)
    saved, expected = resumed["optimizer_states"][0]["state"], reference["optimizer_states"][0]["state"]
    assert saved.keys() == expected.keys() and expected
    for index, state in expected.items():
        for name, value in state.items():
            assert torch.equal(saved[index][name], value), (index, name)
    assert resumed["lr_schedulers"] == reference["lr_schedulers"]
    val = [torch.load(Path(p).parent / "val_metrics.pt", weights_only=True) for p in (resumed_path, reference_path)]
    assert val[0]["epoch"] == val[1]["epoch"] and val[0]["metrics"].keys() == val[1]["metrics"].keys()
    for name, value in val[1]["metrics"].items():
        assert torch.equal(val[0]["metrics"][name], value), name
