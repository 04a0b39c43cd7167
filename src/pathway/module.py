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
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from timm.scheduler import CosineLRScheduler
from timm.scheduler.scheduler import Scheduler as TimmScheduler
from torch import Tensor, nn

from pathway.checkpoint import (
    CheckpointError, aux_state_dict, checkpoint_safe_globals, file_sha256, load_state_dict, load_weights, torch_load,
)
from pathway.layers import aux_weight_name, is_lambdas_key, parse_aux_weight_key
from pathway.optim import layer_decay_param_groups, mae_lr_factor, videomae_lr_factor
from pathway.surgery import DEFAULT_LAYER_NAMES, pathway_layers, reparameterize_aux_into_target_model

log = logging.getLogger(__name__)

# Set while a module is being rebuilt from a trained checkpoint: its constructor then reads no pre-training file.
_RESTORING: contextvars.ContextVar[bool] = contextvars.ContextVar("pathway_restoring", default=False)

_BACKBONE = "backbone."
# A target checkpoint must fill at least this fraction of the backbone's weights outside the head (by count).
MIN_TARGET_FRACTION = 0.9
# torch.compile modes that replay CUDA graphs (their outputs live in memory the next replay overwrites).
_CUDA_GRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})
_LR_SCHEDULES = ("mae", "videomae", "point_mae")


# Packages a checkpoint may name as its module class without ``trust_pickle``: this project's.  Importing a module
# runs its code, so a class path read from a file is imported only from here (or when it is already imported).
PROJECT_PACKAGES: tuple[str, ...] = ("pathway", "Image", "Video", "Point", "Audio")


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _imported_subclass(class_path: str) -> Optional[type]:
    """The already imported ``PathwayModule`` subclass named ``class_path``, if any (importing nothing)."""
    pending = [PathwayModule]
    while pending:
        cls = pending.pop()
        if _class_path(cls) == class_path:
            return cls
        pending.extend(cls.__subclasses__())
    return None


def _checkpoint_class(checkpoint_path: Union[str, Path], checkpoint: Mapping[str, Any],
                      trust_pickle: bool = False) -> type:
    """The ``PathwayModule`` subclass that wrote ``checkpoint`` (recorded by ``on_save_checkpoint``).

    The name comes from the file, so it is imported only from ``PROJECT_PACKAGES`` unless ``trust_pickle``.
    """
    class_path = checkpoint.get("pathway_module_class") or checkpoint.get("hyper_parameters", {}).get("_class_path")
    if not class_path:
        raise CheckpointError(f"{checkpoint_path}: no 'pathway_module_class' entry: not written by a PathwayModule")
    class_path = str(class_path)
    cls = _imported_subclass(class_path)
    if cls is not None:
        return cls
    module_name, _, name = class_path.rpartition(".")
    if module_name.split(".")[0] not in PROJECT_PACKAGES and not trust_pickle:
        raise CheckpointError(
            f"{checkpoint_path}: names its module class '{class_path}', outside this project's packages "
            f"{list(PROJECT_PACKAGES)}; importing it would run that module's code. Call load_from_checkpoint on the "
            f"class itself, or pass trust_pickle=True for a file you trust"
        )
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise CheckpointError(f"{checkpoint_path}: cannot import the module class '{class_path}' ({err})") from err
    if not (isinstance(cls, type) and issubclass(cls, PathwayModule)):
        raise CheckpointError(f"{checkpoint_path}: '{class_path}' is not a PathwayModule subclass")
    return cls


def read_checkpoint(path: Union[str, Path], trust_pickle: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint's contents, memory-mapped (tensors are read only when used), with clear errors.

    Read weights-only (``pathway.checkpoint.torch_load``) unless ``trust_pickle``: a URL is refused, and a file
    cannot run code.
    """
    checkpoint = torch_load(path, trust_pickle=trust_pickle, mmap=True, what="Lightning checkpoint")
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
        partial_target: accept a ``target_ckpt`` that fills none of the tokenizer (``is_tokenizer_key``) or under
            ``MIN_TARGET_FRACTION`` of the backbone's weights outside the head; otherwise such a file (another
            modality's, another architecture's) is refused instead of fine-tuning a mostly random model.
        store_aux_in_checkpoint: keep frozen aux weights in Lightning checkpoints; by default only their file
            paths and hashes are stored and they are re-read (and verified) on resume.  Trained aux are always stored.
        lr: absolute peak lr, used as given at any batch; when ``None`` it is ``blr · effective_batch / 256``
            (MAE's rule), so it follows the batch.  Either way the start of ``fit`` logs the batch figures and lr.
        recipe_batch_size: the effective batch (``data.batch_size × devices × num_nodes ×
            accumulate_grad_batches``) the recipe was written for; when the run's differs, a warning says so and
            whether lr was scaled (``blr``) or kept absolute (``lr``).  ``None``: nothing to check against.
        layer_decay: per-block lr decay (1.0 disables it).
        lambda_lr_scale: λ's lr is its block's lr times this.
        warmup_epochs: linear warmup length.
        lr_schedule: the warmup + cosine rule of the recipe's reference script.  ``mae`` (MAE, AudioMAE): set
            every optimizer step at the fractional epoch, ``lr · epoch / warmup_epochs`` (0 at the first step), then
            a half-cycle cosine to ``min_lr``.  ``videomae``: VideoMAE's per-iteration table, a warmup of
            ``linspace(0, lr, warmup_steps)`` then the cosine.  ``point_mae``: timm's ``CosineLRScheduler``
            (``t_initial = max_epochs``, ``lr_min = min_lr``, ``warmup_lr_init = warmup_lr``) stepped with the
            finished epoch at the end of each epoch, as Point-MAE's runners do: epoch 0 trains at ``warmup_lr``.
        warmup_lr: where the ``point_mae`` warmup starts (Point-MAE: 1e-6); the other rules start from 0.
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
        partial_target: bool = False,
        store_aux_in_checkpoint: bool = False,
        lr: Optional[float] = None,
        blr: float = 5e-4,
        min_lr: float = 1e-6,
        layer_decay: float = 0.75,
        weight_decay: float = 0.05,
        lambda_lr_scale: float = 1.0,
        warmup_epochs: float = 5.0,
        lr_schedule: Literal["mae", "videomae", "point_mae"] = "mae",
        warmup_lr: float = 0.0,
        recipe_batch_size: Optional[int] = None,
        head_init_std: Optional[float] = None,
        betas: tuple[float, float] = (0.9, 0.999),
        compile_backend: Optional[str] = None,
        compile_mode: Optional[str] = None,
    ) -> None:
        super().__init__()
        if lr_schedule not in _LR_SCHEDULES:
            raise ValueError(f"model.lr_schedule must be one of {list(_LR_SCHEDULES)}, got {lr_schedule!r}")
        if warmup_lr and lr_schedule != "point_mae":
            raise ValueError(f"model.warmup_lr={warmup_lr} is where the 'point_mae' warmup starts; the "
                             f"'{lr_schedule}' rule warms up from 0 as its reference does: set model.warmup_lr: 0")
        if recipe_batch_size is not None and recipe_batch_size < 1:
            raise ValueError(f"model.recipe_batch_size must be a positive batch size, got {recipe_batch_size}")
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
        ``PathwayModule`` itself, it builds the subclass that wrote the checkpoint.  The file is read weights-only
        (a URL or a file that needs pickle is refused, naming it) unless ``trust_pickle=True`` is passed.
        """
        trust_pickle = bool(kwargs.get("trust_pickle", False))
        if not hasattr(checkpoint_path, "read"):
            checkpoint = read_checkpoint(checkpoint_path, trust_pickle=trust_pickle)
            if cls is PathwayModule:
                cls = _checkpoint_class(checkpoint_path, checkpoint, trust_pickle=trust_pickle)
        elif cls is PathwayModule:
            raise TypeError("PathwayModule.load_from_checkpoint needs a file path to find the module class; "
                            "call it on the subclass to load from a file object")
        with cls.restoring(), torch.serialization.safe_globals(checkpoint_safe_globals()):
            return super(PathwayModule, cls).load_from_checkpoint(
                checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict,
                weights_only=not trust_pickle, **kwargs
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

    def is_tokenizer_key(self, key: str) -> bool:
        """Keys of the layers that turn the input into tokens (timm's ``patch_embed``), which a target must fill."""
        return key.startswith("patch_embed.")

    def load_target(self, path: str) -> None:
        state = self.checkpoint_filter_fn(load_state_dict(path, trust_pickle=self.hparams.trust_pickle), self.backbone)
        own = self.backbone.state_dict()
        head_mismatch = lambda k: self.is_head_key(k) and k in own and tuple(state[k].shape) != tuple(own[k].shape)
        missing, _ = load_weights(self.backbone, state, source=str(path), ignore=head_mismatch)
        self.target_missing_keys = missing
        self._check_target_coverage(path, own, set(missing))
        log.info("loaded target checkpoint %s", path)

    def _check_target_coverage(self, path: str, own: Mapping[str, Tensor], missing: set[str]) -> None:
        """Refuse a target that leaves the tokenizer, or most of the backbone, at random init (another modality's
        or another architecture's checkpoint), unless ``partial_target``."""
        body = {k: v.numel() for k, v in own.items() if not self.is_head_key(k)}
        loaded = sum(n for k, n in body.items() if k not in missing) / max(1, sum(body.values()))
        tokenizer = [k for k in own if self.is_tokenizer_key(k)]
        problems = []
        if tokenizer and all(k in missing for k in tokenizer):
            problems.append(f"fills none of the tokenizer ({tokenizer[:3]})")
        if loaded < MIN_TARGET_FRACTION:
            problems.append(f"fills {loaded:.0%} of the backbone's weights outside the head "
                            f"(at least {MIN_TARGET_FRACTION:.0%} expected; missing e.g. "
                            f"{sorted(k for k in missing if k in body)[:5]})")
        if not problems:
            return
        message = f"{path}: as target_ckpt of {type(self).__name__} it {' and '.join(problems)}"
        if not self.hparams.get("partial_target", False):
            raise CheckpointError(
                f"{message}: is it another modality's or architecture's checkpoint? Set model.partial_target: true "
                f"to fine-tune from a partial load anyway"
            )
        log.warning("%s (model.partial_target: the rest stays at random init)", message)

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
            if self._aux_by_reference:  # by absolute path: a run resumed or evaluated from another folder finds it
                self.aux_hashes[str(Path(path).resolve())] = verified_hashes.get(str(path)) or file_sha256(path)
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
            if saved and self.aux_hashes and list(saved.values()) != list(self.aux_hashes.values()):
                for (path, digest), (now, actual) in zip(saved.items(), self.aux_hashes.items()):
                    if digest != actual and Path(path).resolve() == Path(now):
                        raise CheckpointError(_changed_message(path, actual, digest))
                raise CheckpointError(
                    f"the checkpoint was trained with auxiliary models {_describe(saved)}, but this model was built "
                    f"from {_describe(self.aux_hashes)}; pass the original files"
                )
            if saved and not self.aux_hashes:
                _locate_aux_files(saved, self.hparams.aux_ckpts)
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
        located = _locate_aux_files(saved, self.hparams.aux_ckpts)
        self.apply_pathway(list(located), verified_hashes=located)

    def batch_figures(self) -> dict[str, Optional[int]]:
        """Per-device batch, devices, nodes, accumulation and their product, the effective batch (``None`` where
        the DataModule has no ``batch_size``)."""
        trainer = self.trainer
        per_device = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
        figures = {"per_device": per_device, "devices": trainer.num_devices, "nodes": trainer.num_nodes,
                   "accumulation": trainer.accumulate_grad_batches}
        effective = None
        if per_device is not None:
            effective = int(per_device) * figures["devices"] * figures["nodes"] * figures["accumulation"]
        return {**figures, "effective": effective}

    def effective_lr(self) -> float:
        """The peak lr: ``model.lr`` as given, else ``blr · effective_batch / 256``."""
        if self.hparams.lr is not None:
            return float(self.hparams.lr)
        effective = self.batch_figures()["effective"]
        if effective is None:
            raise ValueError("blr needs the DataModule's batch_size to compute lr; set model.lr explicitly instead")
        return self.hparams.blr * effective / 256

    def _report_batch(self, lr: float) -> None:
        """What MAE's ``main_finetune.py`` prints at start, and a warning when the batch is not the recipe's.

        One rule for every modality: an lr given as ``blr`` follows the effective batch, an absolute ``lr`` does not.
        """
        f = self.batch_figures()
        effective, recipe = f["effective"], self.hparams.recipe_batch_size
        scaled = self.hparams.lr is None
        rule = f"blr {self.hparams.blr:.3g} x {effective} / 256" if scaled else "model.lr, absolute"
        base = f"{lr * 256 / effective:.3g}" if effective else "unknown"
        rank_zero_info(
            f"batch: {f['per_device']} per device x {f['devices']} device(s) x {f['nodes']} node(s) x "
            f"{f['accumulation']} accumulation = {effective} effective (recipe: {recipe}); "
            f"base lr (lr x 256 / batch) {base}, actual lr {lr:.3g} ({rule})"
        )
        if recipe is None or effective is None or effective == recipe:
            return
        if scaled:
            what = (f"lr was scaled with it (blr rule): {lr:.3g} instead of the recipe's "
                    f"{self.hparams.blr * recipe / 256:.3g}")
        else:
            what = (f"lr was NOT scaled (model.lr={lr:.3g} is absolute); for the recipe's lr per sample set "
                    f"--model.lr {lr * effective / recipe:.3g}, or restore the batch")
        rank_zero_warn(
            f"effective batch {effective} (data.batch_size {f['per_device']} x devices {f['devices']} x num_nodes "
            f"{f['nodes']} x accumulate_grad_batches {f['accumulation']}) differs from the recipe's "
            f"{recipe} (model.recipe_batch_size); {what}"
        )

    def configure_optimizers(self) -> dict[str, Any]:
        lr = self.effective_lr()
        self._report_batch(lr)
        groups = layer_decay_param_groups(self.backbone, lr, self.hparams.weight_decay, self.hparams.layer_decay,
                                          lambda_lr_scale=self.hparams.lambda_lr_scale)
        schedule, min_lr = self.hparams.lr_schedule, self.hparams.min_lr
        total = max(1, int(self.trainer.estimated_stepping_batches))
        batches, accumulation = self.trainer.num_training_batches, self.trainer.accumulate_grad_batches
        if math.isinf(batches):
            steps_per_epoch, batches = max(1, total // max(1, self.trainer.max_epochs or 1)), None
        else:
            steps_per_epoch = max(1, math.ceil(batches / accumulation))
        if schedule == "point_mae":
            epochs = self.trainer.max_epochs
            if epochs is None or epochs < 1:
                epochs = math.ceil(total / steps_per_epoch)  # max_steps only: the epochs those steps span
            warmup = self.hparams.warmup_epochs
            if not float(warmup).is_integer():
                raise ValueError(f"lr_schedule 'point_mae' warms up whole epochs; model.warmup_epochs is {warmup}")
            for group in groups:
                group["lr"] = lr  # timm's schedulers multiply each group's lr_scale in themselves
            optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(self.hparams.betas))
            scheduler = CosineLRScheduler(optimizer, t_initial=epochs, lr_min=min_lr, warmup_t=int(warmup),
                                          warmup_lr_init=self.hparams.warmup_lr, cycle_limit=1, t_in_epochs=True)
            scheduler.step(epoch=0)  # epoch 0 runs at the schedule's value for 0, as in Point-MAE's runners
            log.info("AdamW lr=%.3g (%d groups), timm cosine over %d epochs, %d warmup from %.3g", lr, len(groups),
                     epochs, int(warmup), self.hparams.warmup_lr)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(self.hparams.betas))
        if schedule == "mae":
            epochs = total / steps_per_epoch

            def factor(step: int) -> float:
                # MAE sets lr at the micro-batch that starts each optimizer step: data_iter_step / len(data_loader)
                epoch, within = divmod(step, steps_per_epoch)
                fraction = within * accumulation / batches if batches else within / steps_per_epoch
                return mae_lr_factor(epoch + fraction, self.hparams.warmup_epochs, epochs, min_lr / lr)
        else:
            warmup_steps = min(total, int(round(self.hparams.warmup_epochs * steps_per_epoch)))

            def factor(step: int) -> float:
                return videomae_lr_factor(step, warmup_steps, total, min_lr / lr)
        log.info("AdamW lr=%.3g (%d groups), %s warmup of %g epochs + cosine over %d steps", lr, len(groups),
                 schedule, self.hparams.warmup_epochs, total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """timm schedulers take the finished epoch (Point-MAE's ``scheduler.step(epoch)`` after each epoch)."""
        if isinstance(scheduler, TimmScheduler):
            scheduler.step(epoch=self.current_epoch)
        else:
            super().lr_scheduler_step(scheduler, metric)


def _describe(hashes: Mapping[str, str]) -> str:
    return ", ".join(f"{path} (sha256 {digest[:12]}…)" for path, digest in hashes.items())


_MERGED_ALTERNATIVE = (
    "restore it, or use the merged export, which needs no aux file: merged.safetensors next to the run's logs, or "
    "`python -m pathway export CKPT --out DIR` run where the aux file is available"
)


def _changed_message(path: str, actual: str, digest: str) -> str:
    return (f"auxiliary model {path} changed since this checkpoint was written (sha256 {actual}, expected {digest}); "
            f"{_MERGED_ALTERNATIVE}")


def _locate_aux_files(saved: Mapping[str, str], candidates: Sequence[str]) -> dict[str, str]:
    """``{file: sha256}`` for the aux files a checkpoint holds by reference (``saved``, in order): each at its
    recorded path, or, when it was moved, the one of ``candidates`` (the model's ``aux_ckpts``, where the user says
    the files are now) with the same content.  A missing or changed file is an error saying what to use instead."""
    hashes: dict[str, str] = {}

    def digest_of(path: str) -> Optional[str]:
        if path not in hashes and Path(path).is_file():
            hashes[path] = file_sha256(path)
        return hashes.get(path)

    located: dict[str, str] = {}
    for path, digest in saved.items():
        actual = digest_of(path)
        found = path if actual == digest else next(
            (str(c) for c in candidates if str(c) != path and digest_of(str(c)) == digest), None)
        if found is None and actual is not None:
            raise CheckpointError(_changed_message(path, actual, digest))
        if found is None:
            raise CheckpointError(
                f"auxiliary model {path} (sha256 {digest}) is missing, and none of model.aux_ckpts {list(candidates)} "
                f"has its content: this checkpoint stores its frozen aux weights by reference; pass the file's new "
                f"location in model.aux_ckpts, or {_MERGED_ALTERNATIVE}"
            )
        if found != path:
            log.info("auxiliary model %s (sha256 %s…) found at %s", path, digest[:12], found)
        located[found] = digest
    return located
