"""Helpers shared by the tests/test_scale_*.py files: tensor data, tiny Image checkpoints and fit configs."""
from __future__ import annotations

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
                          **sections: Any) -> Path:
    """``tmp_path/fit.yaml`` for ``python -m Image fit``: the tiny ViT with a pathway from ``aux`` on a 16-px
    ImageFolder without RandAugment or erasing, runs in ``tmp_path/run``; each test adds its trainer and model
    settings and any other section (``checkpoint``, ``lambda_monitor`` ...)."""
    import yaml

    config = {
        "seed_everything": 0,
        "trainer": {"default_root_dir": str(tmp_path / "run"), "enable_model_summary": False, **trainer},
        "model": {"model_name": "vit_tiny_patch16_224", "drop_path_rate": 0.0,
                  "model_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
                  "aux_ckpts": [str(aux)], **model},
        "data": {"root": str(root), "img_size": 16, "batch_size": 2, "num_workers": 0, "pin_memory": False,
                 "auto_augment": None, "re_prob": 0.0},
        **sections,
    }
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
