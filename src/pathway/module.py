"""The LightningModule base every modality builds on: backbone + target checkpoint + pathway + optimizer.

A subclass only says how to build its backbone (``build_backbone``) and, where its checkpoints come in a foreign
format, how to rename their keys (``checkpoint_filter_fn``, as in timm).  With ``aux_ckpts: []`` the same config is
the plain fine-tuning baseline, which is what makes pathway-vs-baseline comparisons honest.

A trained model is reloaded from its Lightning checkpoint alone (``load_from_checkpoint``, or ``--ckpt_path`` for
validate/test/predict): the pre-training files are not read again, and the pathway is rebuilt from the checkpoint.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal, Optional, Union

import lightning as L
import torch
from torch import Tensor, nn

from pathway.checkpoint import CheckpointError, aux_state_dict, file_sha256, load_state_dict, load_weights
from pathway.layers import aux_weight_name, is_lambdas_key, parse_aux_weight_key
from pathway.optim import layer_decay_param_groups, warmup_cosine_scheduler
from pathway.surgery import DEFAULT_LAYER_NAMES, pathway_layers, reparameterize_aux_into_target_model

log = logging.getLogger(__name__)

# Set while a module is being rebuilt from a trained checkpoint: its constructor then reads no pre-training file.
_RESTORING: contextvars.ContextVar[bool] = contextvars.ContextVar("pathway_restoring", default=False)

_BACKBONE = "backbone."
# torch.compile modes that replay CUDA graphs (their outputs live in memory the next replay overwrites).
_CUDA_GRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})


def _checkpoint_class(checkpoint_path: Union[str, Path], checkpoint: Mapping[str, Any]) -> type:
    """The ``PathwayModule`` subclass that wrote ``checkpoint`` (recorded by ``on_save_checkpoint``)."""
    class_path = checkpoint.get("pathway_module_class") or checkpoint.get("hyper_parameters", {}).get("_class_path")
    if not class_path:
        raise CheckpointError(f"{checkpoint_path}: no 'pathway_module_class' entry: not written by a PathwayModule")
    module_name, _, name = str(class_path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise CheckpointError(f"{checkpoint_path}: cannot import the module class '{class_path}' ({err})") from err
    if not (isinstance(cls, type) and issubclass(cls, PathwayModule)):
        raise CheckpointError(f"{checkpoint_path}: '{class_path}' is not a PathwayModule subclass")
    return cls


def read_checkpoint(path: Union[str, Path]) -> dict[str, Any]:
    """A Lightning checkpoint's contents, memory-mapped (tensors are read only when used), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable Lightning checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning checkpoint with 'state_dict' and 'hyper_parameters'")
    return checkpoint


class PathwayModule(L.LightningModule):
    """Builds ``self.backbone``, loads the target checkpoint, applies the pathway from ``aux_ckpts``, optimizes.

    Args:
        num_classes: output classes of the head (linked from ``data.num_classes`` by the CLI).
        target_ckpt: checkpoint the target starts from (any format ``pathway.checkpoint`` reads).
        aux_ckpts: auxiliary models, one λ per aux per layer; empty = plain fine-tuning baseline.
        layer_names / main_body_name: which linears of which blocks get a pathway.
        lambda_init: initial λ (the paper: 0, so training starts exactly at the target model).
        aux_trainable: train the aux weights with their block's lr and weight decay, as the paper's reference code
            does (default); ``False`` is the cheaper frozen-aux variant (no grads, no optimizer state).
        trust_pickle: allow checkpoints that are pickled ``nn.Module`` files (runs pickle).
        store_aux_in_checkpoint: keep frozen aux weights in Lightning checkpoints; by default only their file
            paths and hashes are stored and they are re-read (and verified) on resume.  Trained aux are always stored.
        lr: absolute peak lr; when ``None`` it is ``blr · effective_batch / 256``.
        layer_decay: per-block lr decay (1.0 disables it).
        lambda_lr_scale: λ's lr is its block's lr times this.
        warmup_epochs: linear warmup length.
        lr_schedule_interval: step the warmup + cosine schedule per optimizer ``step`` (MAE) or per ``epoch``
            (Point-MAE).
        head_init_std: after loading ``target_ckpt``, re-initialise the classifier ``backbone.head`` with
            ``trunc_normal(std)`` and a zero bias (MAE fine-tuning: 2e-5); ``None`` keeps the model's own init.
        compile_backend: run the backbone under ``torch.compile`` with this backend (``inductor`` on GPUs, where
            eager pathway steps are bound by the host: benchmarks/README §5); ``nn.Module.compile`` keeps the
            state-dict keys, so checkpoints are the same either way.  ``None``: eager.
        compile_mode: ``torch.compile``'s mode.  ``reduce-overhead`` replays forward and backward as CUDA graphs,
            taking the host out of the step: the setting that meets the pathway's step-time targets on an H100
            (benchmarks/README §5).  Every batch then marks a new CUDA-graph step, and the backbone's outputs are
            cloned, because the next replay overwrites them.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        target_ckpt: Optional[str] = None,
        aux_ckpts: Sequence[str] = (),
        layer_names: Sequence[str] = DEFAULT_LAYER_NAMES,
        main_body_name: str = "blocks",
        lambda_init: float = 0.0,
        aux_trainable: bool = True,
        trust_pickle: bool = False,
        store_aux_in_checkpoint: bool = False,
        lr: Optional[float] = None,
        blr: float = 5e-4,
        min_lr: float = 1e-6,
        layer_decay: float = 0.75,
        weight_decay: float = 0.05,
        lambda_lr_scale: float = 1.0,
        warmup_epochs: float = 5.0,
        lr_schedule_interval: Literal["step", "epoch"] = "step",
        head_init_std: Optional[float] = None,
        betas: tuple[float, float] = (0.9, 0.999),
        compile_backend: Optional[str] = None,
        compile_mode: Optional[str] = None,
    ) -> None:
        super().__init__()
        if lr_schedule_interval not in ("step", "epoch"):
            raise ValueError(f"lr_schedule_interval must be 'step' or 'epoch', got {lr_schedule_interval!r}")
        if compile_mode is not None and compile_backend is None:
            raise ValueError(f"compile_mode={compile_mode!r} needs a compile_backend (e.g. inductor)")
        self.save_hyperparameters()
        self.backbone = self.build_backbone()
        if compile_backend is not None:
            # traced at the first call, after the pathway exists
            self.backbone.compile(backend=compile_backend, mode=compile_mode)
        self.aux_hashes: dict[str, str] = {}
        if _RESTORING.get():
            return  # the trained weights and the pathway come from the checkpoint (`on_load_checkpoint`)
        if target_ckpt:
            self.load_target(target_ckpt)
            if head_init_std is not None:
                self.reset_head(head_init_std)
        if aux_ckpts:
            self.apply_pathway(list(aux_ckpts))

    @classmethod
    @contextlib.contextmanager
    def restoring(cls) -> Iterator[None]:
        """Modules built inside read neither ``target_ckpt`` nor ``aux_ckpts``: a trained checkpoint follows."""
        token = _RESTORING.set(True)
        try:
            yield
        finally:
            _RESTORING.reset(token)

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: Union[str, Path, IO],
        map_location: Any = None,
        hparams_file: Optional[Union[str, Path]] = None,
        strict: Optional[bool] = None,
        **kwargs: Any,
    ) -> "PathwayModule":
        """Lightning's ``load_from_checkpoint``, without reading the pre-training files again.

        The target's trained weights are in the checkpoint; the pathway is rebuilt by ``on_load_checkpoint`` (aux
        files are read, and verified, only when the checkpoint holds them by reference).  Called on
        ``PathwayModule`` itself, it builds the subclass that wrote the checkpoint.
        """
        if cls is PathwayModule:
            cls = _checkpoint_class(checkpoint_path, read_checkpoint(checkpoint_path))
        with cls.restoring():
            return super(PathwayModule, cls).load_from_checkpoint(
                checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict, **kwargs
            )

    def build_backbone(self) -> nn.Module:
        """The target model; its ``forward`` returns what the task's loss consumes."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_backbone()")

    def example_input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample without the batch dimension (e.g. ``(3, 224, 224)``), for export/tracing."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement example_input_shape() -> the shape of one input sample without "
            "the batch dimension, derived from its hyper-parameters (needed by `python -m pathway export`)"
        )

    def example_inputs(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Positional arguments of ``forward`` for a batch (tracing and export checks); random ``example_input_shape``."""
        return (torch.randn(batch_size, *self.example_input_shape(), generator=generator),)

    @staticmethod
    def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        """Rename a foreign target checkpoint's keys to ``model``'s (timm convention); identity here."""
        return state_dict

    def is_head_key(self, key: str) -> bool:
        """Keys that are not loaded from a target checkpoint whose head has another number of classes."""
        return key.startswith("head.")

    def load_target(self, path: str) -> None:
        state = self.checkpoint_filter_fn(load_state_dict(path, trust_pickle=self.hparams.trust_pickle), self.backbone)
        own = self.backbone.state_dict()
        head_mismatch = lambda k: self.is_head_key(k) and k in own and tuple(state[k].shape) != tuple(own[k].shape)
        load_weights(self.backbone, state, source=str(path), ignore=head_mismatch)
        log.info("loaded target checkpoint %s", path)

    @torch.no_grad()
    def reset_head(self, std: float) -> None:
        """A fresh classifier for fine-tuning: ``trunc_normal(std)`` weight, zero bias."""
        head = getattr(self.backbone, "head", None)
        if not isinstance(head, nn.Linear):
            raise ValueError(
                f"head_init_std needs the classifier at backbone.head to be an nn.Linear; "
                f"{type(self.backbone).__name__}.head is {type(head).__name__}"
            )
        nn.init.trunc_normal_(head.weight, std=std)
        if head.bias is not None:
            head.bias.zero_()

    @property
    def _aux_by_reference(self) -> bool:
        """Frozen aux weights kept out of checkpoints (path + sha256 instead)."""
        return not (self.hparams.aux_trainable or self.hparams.store_aux_in_checkpoint)

    def apply_pathway(self, aux_paths: list[str], verified_hashes: Mapping[str, str] = {}) -> None:
        """Build the pathway from aux files; ``verified_hashes`` are digests already checked (not hashed again)."""
        auxes = []
        for path in aux_paths:
            state = load_state_dict(path, trust_pickle=self.hparams.trust_pickle)
            auxes.append(aux_state_dict(state, main_body_name=self.hparams.main_body_name, source=str(path)))
            if self._aux_by_reference:
                self.aux_hashes[str(path)] = verified_hashes.get(str(path)) or file_sha256(path)
        self._build_pathway(auxes, source=f"aux checkpoints {aux_paths}")

    def _build_pathway(self, auxes: list[Mapping[str, Tensor]], source: str) -> None:
        try:
            reparameterize_aux_into_target_model(
                self.backbone, auxes, layer_names=self.hparams.layer_names,
                main_body_name=self.hparams.main_body_name, lambda_init=self.hparams.lambda_init,
                aux_trainable=self.hparams.aux_trainable, save_aux=not self._aux_by_reference,
            )
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{source}: {err}") from err
        # DDP would otherwise broadcast every buffer from rank 0 on each forward: ~340 MB per step and aux for ViT-B.
        self._ddp_params_and_buffers_to_ignore = self._frozen_aux_keys()
        log.info("pathway applied from %d auxiliary model(s) to %d layers (aux %s)", len(auxes),
                 sum(1 for _ in pathway_layers(self.backbone)),
                 "trained" if self.hparams.aux_trainable else "frozen")

    def forward(self, x: Tensor) -> Tensor:
        out = self.backbone(x)
        return out.clone() if self._cuda_graphs else out

    @property
    def _cuda_graphs(self) -> bool:
        return self.hparams.compile_mode in _CUDA_GRAPH_MODES

    def _mark_cuda_graph_step(self, *batch_and_indices: Any) -> None:
        if self._cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    on_train_batch_start = on_validation_batch_start = on_test_batch_start = _mark_cuda_graph_step
    on_predict_batch_start = _mark_cuda_graph_step

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
        return [f"{_BACKBONE}{name}.{aux_weight_name(i)}" for name, layer in pathway_layers(self.backbone)
                if not layer.aux_trainable for i in range(layer.num_aux)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pathway_module_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        if self.aux_hashes:
            checkpoint["pathway_aux_sha256"] = dict(self.aux_hashes)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Make the model fit the checkpoint's state dict: verify the aux files it was trained with, and build the
        pathway when this module was constructed without one (``load_from_checkpoint``, evaluation runs)."""
        state = checkpoint["state_dict"]
        saved: dict[str, str] = dict(checkpoint.get("pathway_aux_sha256") or {})
        if any(True for _ in pathway_layers(self.backbone)):  # built from the config's aux files (resuming a fit)
            for path, digest in saved.items():
                if path not in self.aux_hashes:
                    _verify_aux_file(path, digest)
                elif self.aux_hashes[path] != digest:
                    raise CheckpointError(_changed_message(path, self.aux_hashes[path], digest))
            if saved and self.aux_hashes and list(saved.values()) != list(self.aux_hashes.values()):
                raise CheckpointError(
                    f"the checkpoint was trained with auxiliary models {_describe(saved)}, but this model was built "
                    f"from {_describe(self.aux_hashes)}; pass the original files"
                )
            return
        if not any(is_lambdas_key(k) for k in state if k.startswith(_BACKBONE)):
            return  # a baseline checkpoint: no pathway
        stored: dict[int, dict[str, Tensor]] = {}
        for key, value in state.items():
            parsed = parse_aux_weight_key(key[len(_BACKBONE):]) if key.startswith(_BACKBONE) else None
            if parsed is not None:
                stored.setdefault(parsed[1], {})[f"{parsed[0]}.weight"] = value
        if stored:
            self._build_pathway([stored[i] for i in sorted(stored)], source="aux weights stored in the checkpoint")
            return
        if not saved:
            raise CheckpointError(
                "the checkpoint has pathway λ but neither its auxiliary weights nor the aux files they came from; "
                "use its merged export (merged.safetensors) instead"
            )
        for path, digest in saved.items():
            _verify_aux_file(path, digest)
        self.apply_pathway(list(saved), verified_hashes=saved)

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
        groups = layer_decay_param_groups(self.backbone, lr, self.hparams.weight_decay, self.hparams.layer_decay,
                                          lambda_lr_scale=self.hparams.lambda_lr_scale)
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(self.hparams.betas))
        interval = self.hparams.lr_schedule_interval
        if interval == "epoch":
            total = self.trainer.max_epochs
            if total is None or total < 1:
                raise ValueError("lr_schedule_interval='epoch' needs trainer.max_epochs (the cosine's length)")
            warmup = min(total, int(round(self.hparams.warmup_epochs)))
        else:
            total = max(1, int(self.trainer.estimated_stepping_batches))
            batches = self.trainer.num_training_batches
            if math.isinf(batches):
                steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
            else:
                steps_per_epoch = max(1, math.ceil(batches / self.trainer.accumulate_grad_batches))
            warmup = min(total, int(round(self.hparams.warmup_epochs * steps_per_epoch)))
        scheduler = warmup_cosine_scheduler(optimizer, warmup, total, self.hparams.min_lr / lr)
        log.info("AdamW lr=%.3g (%d groups), %d warmup of %d %ss", lr, len(groups), warmup, total, interval)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}


def _describe(hashes: Mapping[str, str]) -> str:
    return ", ".join(f"{path} (sha256 {digest[:12]}…)" for path, digest in hashes.items())


_MERGED_ALTERNATIVE = (
    "restore it, or use the merged export, which needs no aux file: merged.safetensors next to the run's logs, or "
    "`python -m pathway export CKPT --out DIR` run where the aux file is available"
)


def _changed_message(path: str, actual: str, digest: str) -> str:
    return (f"auxiliary model {path} changed since this checkpoint was written (sha256 {actual}, expected {digest}); "
            f"{_MERGED_ALTERNATIVE}")


def _verify_aux_file(path: str, digest: str) -> None:
    """The aux file a checkpoint holds by reference must be there, unchanged; else say what to use instead."""
    if not Path(path).is_file():
        raise CheckpointError(
            f"auxiliary model {path} (sha256 {digest}) is missing: this checkpoint stores its frozen aux weights by "
            f"reference; {_MERGED_ALTERNATIVE}"
        )
    actual = file_sha256(path)
    if actual != digest:
        raise CheckpointError(_changed_message(path, actual, digest))
