"""The LightningModule base every modality builds on: backbone + target checkpoint + pathway + optimizer.

A subclass only says how to build its backbone (``build_backbone``) and, where its checkpoints come in a foreign
format, how to rename their keys (``convert_target_state_dict``).  With ``aux_ckpts: []`` the same config is the
plain fine-tuning baseline, which is what makes pathway-vs-baseline comparisons honest.
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from torch import Tensor, nn

from pathway.checkpoint import CheckpointError, load_state_dict, load_weights
from pathway.optim import layer_decay_param_groups, warmup_cosine_scheduler
from pathway.surgery import DEFAULT_LAYER_NAMES, pathway_layers, reparameterize_aux_into_target_model

log = logging.getLogger(__name__)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class PathwayModule(L.LightningModule):
    """Builds ``self.backbone``, loads the target checkpoint, applies the pathway from ``aux_ckpts``, optimizes.

    Args:
        num_classes: output classes of the head (linked from ``data.num_classes`` by the CLI).
        target_ckpt: checkpoint the target starts from (any format ``pathway.checkpoint`` reads).
        aux_ckpts: auxiliary models, one λ per aux per layer; empty = plain fine-tuning baseline.
        layer_names / main_body_name: which linears of which blocks get a pathway.
        lambda_init: initial λ (the paper: 0, so training starts exactly at the target model).
        aux_trainable: train the aux weights too (the paper's ablation; off by default).
        trust_pickle: allow checkpoints that are pickled ``nn.Module`` files (runs pickle).
        store_aux_in_checkpoint: keep frozen aux weights in Lightning checkpoints; by default only their file
            paths and hashes are stored and they are re-read (and verified) on resume.
        lr: absolute peak lr; when ``None`` it is ``blr · effective_batch / 256``.
        layer_decay: per-block lr decay (1.0 disables it).
        warmup_epochs: linear warmup length; the schedule itself runs per optimizer step.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        target_ckpt: Optional[str] = None,
        aux_ckpts: Sequence[str] = (),
        layer_names: Sequence[str] = DEFAULT_LAYER_NAMES,
        main_body_name: str = "blocks",
        lambda_init: float = 0.0,
        aux_trainable: bool = False,
        trust_pickle: bool = False,
        store_aux_in_checkpoint: bool = False,
        lr: Optional[float] = None,
        blr: float = 5e-4,
        min_lr: float = 1e-6,
        layer_decay: float = 0.75,
        weight_decay: float = 0.05,
        warmup_epochs: float = 5.0,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = self.build_backbone()
        if target_ckpt:
            self.load_target(target_ckpt)
        self.aux_hashes: dict[str, str] = {}
        if aux_ckpts:
            self.apply_pathway(list(aux_ckpts))

    def build_backbone(self) -> nn.Module:
        """The target model; its ``forward`` returns what the task's loss consumes."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_backbone()")

    def example_input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample without the batch dimension (e.g. ``(3, 224, 224)``), for export/tracing."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement example_input_shape() -> the shape of one input sample without "
            "the batch dimension, derived from its hyper-parameters (needed by `python -m pathway export`)"
        )

    def convert_target_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rename a foreign checkpoint's keys to the backbone's (MAE/VideoMAE/... formats); identity here."""
        return state_dict

    def is_head_key(self, key: str) -> bool:
        """Keys that are not loaded from a target checkpoint whose head has another number of classes."""
        return key.startswith("head.")

    def load_target(self, path: str) -> None:
        state = self.convert_target_state_dict(load_state_dict(path, trust_pickle=self.hparams.trust_pickle))
        own = self.backbone.state_dict()
        head_mismatch = lambda k: self.is_head_key(k) and k in own and tuple(state[k].shape) != tuple(own[k].shape)
        load_weights(self.backbone, state, source=str(path), ignore=head_mismatch)
        log.info("loaded target checkpoint %s", path)

    def apply_pathway(self, aux_paths: list[str]) -> None:
        auxes = []
        for path in aux_paths:
            state = self.convert_target_state_dict(load_state_dict(path, trust_pickle=self.hparams.trust_pickle))
            auxes.append(state)
            if not self.hparams.store_aux_in_checkpoint:
                self.aux_hashes[str(path)] = file_sha256(path)
        try:
            reparameterize_aux_into_target_model(
                self.backbone, auxes, layer_names=self.hparams.layer_names,
                main_body_name=self.hparams.main_body_name, lambda_init=self.hparams.lambda_init,
                aux_trainable=self.hparams.aux_trainable,
            )
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise CheckpointError(f"aux checkpoints {aux_paths}: {err}") from err
        # DDP would otherwise broadcast every buffer from rank 0 on each forward: ~340 MB per step and aux for ViT-B.
        self._ddp_params_and_buffers_to_ignore = self._frozen_aux_keys()
        log.info("pathway applied from %d auxiliary model(s) to %d layers", len(auxes),
                 sum(1 for _ in pathway_layers(self.backbone)))

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def skipped_batch_loss(self) -> Tensor:
        """A zero loss for a batch whose samples were all unreadable.

        Returning ``None`` would skip the step on this rank only, and DDP's gradient all-reduce on the other ranks
        would then wait forever; a zero that touches every trainable parameter keeps all ranks in step.
        """
        return sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)

    def log_train_loss(self, loss: Tensor, batch_size: int) -> Tensor:
        """Fail fast on a non-finite loss (naming the step) instead of training on NaNs, and log it."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def eval_step(self, batch: Any, stage: str) -> None:
        """One validation/test batch (``stage`` is ``val`` or ``test``); subclasses compute loss and metrics."""
        raise NotImplementedError(f"{type(self).__name__} must implement eval_step()")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch is not None:  # None: every sample of the batch was unreadable and skipped
            self.eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        if batch is not None:
            self.eval_step(batch, "test")

    def _frozen_aux_keys(self) -> list[str]:
        return [f"backbone.{name}.aux_weight_{i}" for name, layer in pathway_layers(self.backbone)
                if not layer.aux_trainable for i in range(layer.num_aux)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pathway_module_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        if self.hparams.store_aux_in_checkpoint or not self.aux_hashes:
            return
        for key in self._frozen_aux_keys():
            checkpoint["state_dict"].pop(key, None)
        checkpoint["pathway_aux_sha256"] = dict(self.aux_hashes)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("pathway_aux_sha256")
        if not saved:
            return
        for path, digest in saved.items():
            if not Path(path).is_file():
                raise CheckpointError(f"checkpoint was trained with auxiliary model {path}, which is missing")
            if self.aux_hashes.get(path, file_sha256(path)) != digest:
                raise CheckpointError(
                    f"auxiliary model {path} changed since this checkpoint was written (sha256 {digest[:12]}… "
                    f"expected); pass the original file or resume with store_aux_in_checkpoint"
                )
        own = self.state_dict()
        for key in self._frozen_aux_keys():
            checkpoint["state_dict"].setdefault(key, own[key])

    def effective_lr(self) -> float:
        if self.hparams.lr is not None:
            return float(self.hparams.lr)
        datamodule = getattr(self.trainer, "datamodule", None)
        batch_size = getattr(datamodule, "batch_size", None)
        if batch_size is None:
            raise ValueError("blr needs the DataModule's batch_size to compute lr; set model.lr explicitly instead")
        effective = batch_size * self.trainer.accumulate_grad_batches * self.trainer.world_size
        return self.hparams.blr * effective / 256

    def configure_optimizers(self) -> dict[str, Any]:
        lr = self.effective_lr()
        groups = layer_decay_param_groups(self.backbone, lr, self.hparams.weight_decay, self.hparams.layer_decay)
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(self.hparams.betas))
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        batches = self.trainer.num_training_batches
        if math.isinf(batches):
            steps_per_epoch = max(1, total_steps // max(1, self.trainer.max_epochs or 1))
        else:
            steps_per_epoch = max(1, math.ceil(batches / self.trainer.accumulate_grad_batches))
        warmup_steps = min(total_steps, int(round(self.hparams.warmup_epochs * steps_per_epoch)))
        scheduler = warmup_cosine_scheduler(optimizer, warmup_steps, total_steps, self.hparams.min_lr / lr)
        log.info("AdamW lr=%.3g (%d groups), %d warmup of %d steps", lr, len(groups), warmup_steps, total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
