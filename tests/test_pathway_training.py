"""Training with the pathway: optimizer/schedule helpers, 2-step Lightning fits of the Image classifier (frozen aux
and the paper's trained aux), the callbacks, reloading trained checkpoints, mixup/cutmix and multi-view evaluation."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import TINY_MODEL_KWARGS, make_vit
from Image.datamodule import ImageDataModule
from Image.model import ImageClassifier
from pathway import CheckpointError, PathwayLinear, pathway_layers, reparameterize_aux_into_target_model
from pathway.callbacks import LambdaMonitor, MergedCheckpoint
from pathway.mixup import BatchMixup
from pathway.module import PathwayModule
from pathway.optim import layer_decay_param_groups, mae_lr_factor

LR = 1e-3
MIN_LR = 1e-5
LAYER_DECAY = 0.5


# --- optimizer and schedule helpers ---------------------------------------------------------------------------
def test_mae_lr_factor_shape() -> None:
    warmup, total, floor = 4, 14, 0.01
    factors = [mae_lr_factor(s, warmup, total, floor) for s in range(total + 3)]
    assert factors[:warmup] == pytest.approx([0.0, 0.25, 0.5, 0.75]), "MAE warms up from lr 0 at the first step"
    assert factors[warmup] == pytest.approx(1.0)
    decay = factors[warmup:total + 1]
    assert all(a > b for a, b in zip(decay, decay[1:])), "cosine part must decrease strictly"
    middle = warmup + (total - warmup) // 2
    assert factors[middle] == pytest.approx(floor + (1 - floor) * 0.5)
    assert factors[total] == pytest.approx(floor)
    assert factors[total + 2] == pytest.approx(floor), "after the schedule the factor stays at min_ratio"
    assert mae_lr_factor(0, 0, 10, 0.0) == pytest.approx(1.0)


def test_layer_decay_param_groups_scales() -> None:
    model = reparameterize_aux_into_target_model(make_vit(seed=0), make_vit(seed=1))
    groups = layer_decay_param_groups(model, lr=LR, weight_decay=0.05, layer_decay=LAYER_DECAY)

    def scale_of(param: torch.Tensor) -> float:
        (group,) = [g for g in groups if any(p is param for p in g["params"])]
        return group["lr_scale"]

    for group in groups:
        assert group["lr"] == pytest.approx(LR * group["lr_scale"])
    # depth 2: layer ids stem 0, blocks 1-2, head 3 -> scales 0.5^3, 0.5^2, 0.5^1, 1.
    assert scale_of(model.patch_embed.proj.weight) == pytest.approx(LAYER_DECAY ** 3)
    assert scale_of(model.blocks[0].attn.qkv.weight) == pytest.approx(LAYER_DECAY ** 2)
    assert scale_of(model.blocks[0].attn.qkv.lambdas) == pytest.approx(LAYER_DECAY ** 2)
    assert scale_of(model.blocks[1].mlp.fc2.weight) == pytest.approx(LAYER_DECAY)
    assert scale_of(model.head.weight) == pytest.approx(1.0)
    assert scale_of(model.blocks[0].attn.qkv.weight) < scale_of(model.blocks[1].mlp.fc1.weight) < scale_of(model.head.weight)


# --- a real 2-step fit ----------------------------------------------------------------------------------------
def _model(aux_ckpts: list[str], **overrides: Any) -> ImageClassifier:
    kwargs: dict[str, Any] = dict(
        model_name="vit_tiny_patch16_224", img_size=16, drop_path_rate=0.0, model_kwargs=dict(TINY_MODEL_KWARGS),
        num_classes=10, aux_ckpts=aux_ckpts, lr=LR, min_lr=MIN_LR, layer_decay=LAYER_DECAY, warmup_epochs=0.0,
        weight_decay=0.05,
    )
    kwargs.update(overrides)
    return ImageClassifier(**kwargs)


def _datamodule(root: Path, **overrides: Any) -> ImageDataModule:
    kwargs: dict[str, Any] = dict(root=str(root), img_size=16, batch_size=8, num_workers=0, pin_memory=False,
                                  auto_augment=None, re_prob=0.0, crop_pct=1.0)
    kwargs.update(overrides)
    return ImageDataModule(**kwargs)


class _RecordLR(L.Callback):
    """The lr of every group as the optimizer is about to step, with the step it belongs to."""

    def __init__(self) -> None:
        self.records: list[tuple[int, list[float], list[float]]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        self.records.append((trainer.global_step, [g["lr"] for g in optimizer.param_groups],
                             [g["lr_scale"] for g in optimizer.param_groups]))


class Trained:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, digits_root: Path) -> Trained:
    out = tmp_path_factory.mktemp("fit")
    aux_path = out / "aux_vit.pt"
    torch.save(make_vit(seed=123, num_classes=7).state_dict(), aux_path)
    L.seed_everything(0)
    model = _model([str(aux_path)], aux_trainable=False)
    lambdas_before = {n: layer.lambdas.detach().clone() for n, layer in pathway_layers(model.backbone)}
    aux_before = {n: layer.aux_weight_0.clone() for n, layer in pathway_layers(model.backbone)}
    recorder, merged = _RecordLR(), MergedCheckpoint(dirpath=str(out / "export"))
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, limit_val_batches=1,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(out),
        callbacks=[recorder, merged, LambdaMonitor(dirpath=str(out / "lambdas"))],
    )
    datamodule = _datamodule(digits_root)
    trainer.fit(model, datamodule=datamodule)
    ckpt_path = out / "trained.ckpt"
    trainer.save_checkpoint(ckpt_path)
    return Trained(out=out, aux_path=aux_path, model=model.eval(), trainer=trainer, recorder=recorder,
                   merged=merged, lambdas_before=lambdas_before, aux_before=aux_before, ckpt_path=ckpt_path,
                   datamodule=datamodule)


def _eval_batch(trained: Trained) -> torch.Tensor:
    x, _ = next(iter(trained.datamodule.val_dataloader()))
    return x


def test_fit_moves_lambdas_but_not_frozen_aux(trained: Trained) -> None:
    assert trained.trainer.global_step == 2
    layers = dict(pathway_layers(trained.model.backbone))
    assert len(layers) == 8
    for name, layer in layers.items():
        assert torch.equal(trained.lambdas_before[name], torch.zeros(1))
        assert layer.lambdas.abs().item() > 0, f"λ of {name} did not train"
        assert torch.equal(layer.aux_weight_0, trained.aux_before[name]), f"aux weight of {name} changed"


def test_optimizer_state_has_no_aux_weights(trained: Trained) -> None:
    optimizer = trained.trainer.optimizers[0]
    state_ids = {id(p) for p in optimizer.state}
    group_ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for name, layer in pathway_layers(trained.model.backbone):
        assert id(layer.aux_weight_0) not in state_ids | group_ids, name
        assert id(layer.lambdas) in state_ids, f"λ of {name} has no optimizer state"
        (group,) = [g for g in optimizer.param_groups if any(p is layer.lambdas for p in g["params"])]
        assert group["weight_decay"] == 0.0


def test_layer_decay_and_schedule_are_applied(trained: Trained) -> None:
    records = trained.recorder.records
    assert [step for step, _, _ in records] == [0, 1]
    total, floor = 2, MIN_LR / LR
    for step, lrs, scales in records:
        factor = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / total))  # no warmup: MAE's cosine
        assert lrs == pytest.approx([LR * s * factor for s in scales], rel=1e-6)
    assert records[1][1][0] < records[0][1][0], "the cosine schedule did not lower the lr"
    optimizer = trained.trainer.optimizers[0]
    model = trained.model.backbone

    def lr_of(param: torch.Tensor) -> float:
        (group,) = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
        return group["initial_lr"]

    assert lr_of(model.blocks[0].attn.qkv.weight) == pytest.approx(LR * LAYER_DECAY ** 2)
    assert lr_of(model.head.weight) == pytest.approx(LR)


def test_baseline_config_is_a_plain_model() -> None:
    model = _model([])
    assert not any(isinstance(m, PathwayLinear) for m in model.modules())
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=16,
                              global_pool="avg", **TINY_MODEL_KWARGS)
    plain.load_state_dict(model.backbone.state_dict(), strict=True)


def test_merged_checkpoint_reproduces_the_pathway_model(trained: Trained) -> None:
    path = trained.merged.last_path
    assert path == trained.out / "export" / "merged.safetensors" and path.is_file()
    state = load_file(str(path))
    assert not [k for k in state if "aux_weight" in k or "lambdas" in k or "merged" in k]
    live = trained.model.backbone.blocks[0].attn.qkv
    assert not torch.allclose(state["blocks.0.attn.qkv.weight"], live.weight), "λ·W_aux was not folded in"
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=16,
                              global_pool="avg", **TINY_MODEL_KWARGS)
    plain.load_state_dict(state, strict=True)
    x = _eval_batch(trained)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), trained.model(x), atol=1e-5, rtol=0)
    assert any(isinstance(m, PathwayLinear) for m in trained.model.modules()), "export must not fuse the live model"


def test_lambda_monitor_writes_heatmap(trained: Trained) -> None:
    path = trained.out / "lambdas" / "lambdas.png"
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lightning_checkpoint_without_aux_weights(trained: Trained) -> None:
    checkpoint = torch.load(trained.ckpt_path, map_location="cpu", weights_only=False)
    keys = list(checkpoint["state_dict"])
    assert not [k for k in keys if "aux_weight" in k]
    assert any(k.endswith("lambdas") for k in keys)
    assert checkpoint["pathway_aux_sha256"].keys() == {str(trained.aux_path)}
    restored = ImageClassifier.load_from_checkpoint(trained.ckpt_path).eval()
    x = _eval_batch(trained)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), trained.model(x), atol=1e-6, rtol=0)
    for (name, a), (_, b) in zip(pathway_layers(restored.backbone), pathway_layers(trained.model.backbone)):
        assert torch.equal(a.lambdas, b.lambdas) and torch.equal(a.aux_weight_0, b.aux_weight_0), name


def test_changed_or_missing_aux_file_is_refused(trained: Trained) -> None:
    original = trained.aux_path.read_bytes()
    digest = torch.load(trained.ckpt_path, map_location="cpu", weights_only=True)["pathway_aux_sha256"]
    try:
        torch.save(make_vit(seed=999, num_classes=7).state_dict(), trained.aux_path)
        with pytest.raises(CheckpointError, match="changed") as info:
            ImageClassifier.load_from_checkpoint(trained.ckpt_path)
        assert str(trained.aux_path) in str(info.value)
        trained.aux_path.unlink()
        with pytest.raises(CheckpointError, match="missing") as info:
            ImageClassifier.load_from_checkpoint(trained.ckpt_path)
        message = str(info.value)
        assert str(trained.aux_path) in message and digest[str(trained.aux_path)] in message
        assert "merged.safetensors" in message and "python -m pathway export" in message
    finally:
        trained.aux_path.write_bytes(original)


def test_resuming_with_another_aux_file_is_refused(trained: Trained, tmp_path: Path) -> None:
    """Frozen aux stored by reference are not in the state dict: a model built from other aux weights would load
    the checkpoint strictly and silently compute another function."""
    other = tmp_path / "other_aux.pt"
    torch.save(make_vit(seed=321, num_classes=7).state_dict(), other)
    model = _model([str(other)], aux_trainable=False)
    checkpoint = torch.load(trained.ckpt_path, map_location="cpu", weights_only=True)
    with pytest.raises(CheckpointError, match="trained with auxiliary models .*aux_vit.pt.*built from .*other_aux.pt"):
        model.on_load_checkpoint(checkpoint)


def test_reload_reads_no_target_file_and_builds_the_recorded_class(tmp_path: Path, digits_root: Path) -> None:
    """The trained weights are in the checkpoint: a moved pre-training file must not matter."""
    target = tmp_path / "target.pt"
    torch.save(make_vit(seed=5, num_classes=7).state_dict(), target)
    aux = tmp_path / "aux.pt"
    torch.save(make_vit(seed=123, num_classes=7).state_dict(), aux)
    model = _fit(_model([str(aux)], target_ckpt=str(target), lambda_init=0.1), digits_root, tmp_path)
    ckpt = tmp_path / "trained.ckpt"
    model.trainer.save_checkpoint(ckpt)
    target.rename(tmp_path / "moved.pt")
    aux.unlink()  # trained aux are in the checkpoint too
    x = torch.randn(2, 3, 16, 16)
    for cls in (ImageClassifier, PathwayModule):
        restored = cls.load_from_checkpoint(ckpt).eval()
        assert type(restored) is ImageClassifier
        assert restored.hparams.target_ckpt == str(target) and restored.hparams.aux_ckpts == [str(aux)]
        with torch.no_grad():
            torch.testing.assert_close(restored(x), model.eval()(x), atol=1e-6, rtol=0)


def _fit(model: ImageClassifier, root: Path, out: Path, callbacks: tuple = (), **trainer_args: Any) -> ImageClassifier:
    args: dict[str, Any] = dict(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                                limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                                default_root_dir=str(out), callbacks=list(callbacks))
    L.Trainer(**{**args, **trainer_args}).fit(model, datamodule=_datamodule(root))
    return model


def test_trained_aux_fit_the_papers_way(tmp_path: Path, digits_root: Path, aux_ckpt: Path) -> None:
    """Default = the reference code's method: aux weights are trained with their block's lr and weight decay 0.05,
    λ without weight decay at its block's lr times lambda_lr_scale; the checkpoint carries the trained aux."""
    L.seed_everything(0)
    model = _model([str(aux_ckpt)], lambda_init=0.1, lambda_lr_scale=10.0)
    aux_before = {n: layer.aux_weight_0.detach().clone() for n, layer in pathway_layers(model.backbone)}
    recorder = _RecordLR()
    trainer = _fit(model, digits_root, tmp_path, callbacks=(recorder,)).trainer
    optimizer = trainer.optimizers[0]

    def group_of(param: torch.Tensor) -> dict:
        (group,) = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
        return group

    for name, layer in pathway_layers(model.backbone):
        assert not torch.equal(layer.aux_weight_0, aux_before[name]), f"aux of {name} was not trained"
        block_lr = group_of(layer.weight)["initial_lr"]
        assert group_of(layer.aux_weight_0)["weight_decay"] == 0.05
        assert group_of(layer.aux_weight_0)["initial_lr"] == pytest.approx(block_lr)
        assert group_of(layer.lambdas)["weight_decay"] == 0.0
        assert group_of(layer.lambdas)["initial_lr"] == pytest.approx(10.0 * block_lr)
    assert not model._ddp_params_and_buffers_to_ignore, "trained aux are parameters DDP must synchronise"
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    assert "backbone.blocks.0.attn.qkv.aux_weight_0" in checkpoint["state_dict"]
    assert "pathway_aux_sha256" not in checkpoint


def test_frozen_aux_are_ignored_by_ddp(aux_ckpt: Path) -> None:
    model = _model([str(aux_ckpt)], aux_trainable=False)
    ignored = set(model._ddp_params_and_buffers_to_ignore)
    assert ignored == {f"backbone.{n}.aux_weight_0" for n, _ in pathway_layers(model.backbone)}
    assert ignored.isdisjoint(model.state_dict()), "frozen aux stored by reference are not in the state dict"


def test_head_init_std_reinitialises_the_head_after_loading_the_target(tmp_path: Path) -> None:
    target = tmp_path / "target.pt"
    source = make_vit(seed=5, num_classes=10)
    with torch.no_grad():
        source.head.weight.fill_(0.5)
        source.head.bias.fill_(0.5)
    torch.save(source.state_dict(), target)
    kept = _model([], target_ckpt=str(target))
    assert torch.equal(kept.backbone.head.weight, source.head.weight)
    model = _model([], target_ckpt=str(target), head_init_std=2e-5)
    head = model.backbone.head
    assert float(head.weight.std()) == pytest.approx(2e-5, rel=0.2) and float(head.weight.abs().max()) < 1e-4
    assert not head.bias.any()
    assert torch.equal(model.backbone.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_lr_schedule_per_epoch(tmp_path: Path, digits_root: Path) -> None:
    """Point-MAE steps timm's cosine once per epoch, after it: the lr is constant within an epoch, epoch 0 runs at
    the warmup start and epoch e at the scheduler's value for e - 1."""
    recorder = _RecordLR()
    model = _model([], lr_schedule="point_mae", warmup_epochs=1, warmup_lr=1e-6)
    _fit(model, digits_root, tmp_path, callbacks=(recorder,), max_steps=-1, max_epochs=3, limit_train_batches=2)
    lrs = [lrs[0] for _, lrs, _ in recorder.records]
    scale = recorder.records[0][2][0]  # timm multiplies the whole schedule by each group's lr_scale
    assert scale < 1
    cosine_at_1 = MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * 1 / 3))
    assert lrs == pytest.approx([scale * v for v in [1e-6] * 4 + [cosine_at_1] * 2], rel=1e-9)
    with pytest.raises(ValueError, match="lr_schedule"):
        _model([], lr_schedule="batch")
    with pytest.raises(ValueError, match="warmup_lr"):
        _model([], warmup_lr=1e-6)


def test_store_aux_in_checkpoint_keeps_aux(aux_ckpt: Path) -> None:
    model = _model([str(aux_ckpt)], store_aux_in_checkpoint=True, lambda_init=0.2)
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    assert "pathway_aux_sha256" not in checkpoint
    assert "backbone.blocks.0.attn.qkv.aux_weight_0" in checkpoint["state_dict"]


# --- mixup / cutmix -------------------------------------------------------------------------------------------
def _clip(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_mixup_4d() -> None:
    np.random.seed(0)
    x, y = _clip((4, 3, 8, 8)), torch.tensor([0, 1, 2, 3])
    mixed, target = BatchMixup(4, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0)(x, y)
    assert target.shape == (4, 4)
    torch.testing.assert_close(target.sum(1), torch.ones(4))
    lam = target[0, 0].item()
    assert 0.0 < lam < 1.0
    assert target[0, 3].item() == pytest.approx(1 - lam)
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (4, 3, 5, 8, 8)])
def test_cutmix_any_rank(shape: tuple[int, ...]) -> None:
    x, y = _clip(shape), torch.tensor([0, 1, 2, 3])
    cutter = BatchMixup(4, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1)
    cut_seen = False
    for seed in range(6):
        np.random.seed(seed)
        mixed, target = cutter(x, y)
        torch.testing.assert_close(target.sum(1), torch.ones(4))
        replaced = mixed != x
        assert torch.equal(mixed[replaced], x.flip(0)[replaced]), "cut pixels must come from the partner sample"
        mask = replaced[0, 0].reshape(-1, *shape[-2:])[0]  # the cut box of sample 0, first frame
        for b in range(shape[0]):
            per_frame = replaced[b].reshape(-1, *shape[-2:])
            assert (per_frame == mask).all(), "cut region differs between channels/frames or samples"
        area = mask.float().mean().item()
        lam_from_target = (target[0, 0].item() - 0.1 / 4) / (1 - 0.1)
        assert lam_from_target == pytest.approx(1 - area, abs=1e-5), "target weight must equal the kept area"
        cut_seen |= area > 0
    assert cut_seen


def test_mixup_multilabel_targets() -> None:
    np.random.seed(1)
    x = _clip((4, 1, 8, 8))
    y = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.float)
    mixed, target = BatchMixup(5, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1)(x, y)
    lam = ((mixed - x.flip(0)) / (x - x.flip(0)))[0].mean().item()
    torch.testing.assert_close(target, lam * y + (1 - lam) * y.flip(0), atol=1e-4, rtol=0)
    assert target.max() <= 1.0 and target.min() >= 0.0


def test_mixup_prob_zero_only_converts_targets() -> None:
    x, y = _clip((4, 3, 8, 8)), torch.tensor([0, 1, 2, 3])
    mixed, target = BatchMixup(4, mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.0, label_smoothing=0.0)(x, y)
    assert torch.equal(mixed, x)
    assert torch.equal(target, torch.eye(4))


# --- multi-view evaluation ------------------------------------------------------------------------------------
class _LogitsFromInput(nn.Module):
    """A stand-in backbone whose logits are written into the input, so each view's prediction is chosen."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :3]


def test_multi_view_scores_are_averaged_per_sample(tmp_path: Path) -> None:
    model = _model([], num_classes=3, top_k=5)
    model.backbone = _LogitsFromInput()
    # sample 0 (label 0): confident right view + weak wrong view  -> averaged right
    # sample 1 (label 1): confident right view + weak wrong view  -> averaged right
    # sample 2 (label 2): confident wrong view + weak right view  -> averaged wrong
    # per view: 3 of 6 right (0.5); per sample after averaging softmax scores: 2 of 3.
    view_logits = [[5, 0, 0], [0, 4, 0], [3, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]]
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    ids = torch.tensor([0, 1, 2, 0, 1, 2])
    x = torch.zeros(6, 3, 4, 4)
    x[:, 0, 0, :3] = torch.tensor(view_logits, dtype=torch.float)
    loader = DataLoader(TensorDataset(x, labels, ids), batch_size=3)  # the views of a sample in different batches
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    (results,) = trainer.test(model, dataloaders=loader, verbose=False)
    assert results["test/acc1"] == pytest.approx(2 / 3)
    assert results["test/num_samples"] == 3


def test_ema_callback_averages_a_pathway_model(digits_root: Path, aux_ckpt: Path) -> None:
    """EMA is Lightning's EMAWeightAveraging: it must cope with the pathway's buffers (frozen aux)."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    class LastLambdas(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            self.value = next(iter(pathway_layers(pl_module.backbone)))[1].lambdas.detach().clone()

    L.seed_everything(0)
    model = _model([str(aux_ckpt)], aux_trainable=False)
    aux_before = next(iter(pathway_layers(model.backbone)))[1].aux_weight_0.clone()
    last = LastLambdas()
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, limit_val_batches=1,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[last, EMAWeightAveraging(decay=0.5)])
    trainer.fit(model, _datamodule(digits_root))
    layer = next(iter(pathway_layers(model.backbone)))[1]  # the averaged weights are copied in at train end
    assert not torch.equal(layer.lambdas.detach(), last.value)  # an average, not the last step's λ
    assert layer.lambdas.abs().max() > 0
    assert torch.equal(layer.aux_weight_0, aux_before)  # frozen aux untouched by averaging


def test_dataloader_workers_get_distinct_numpy_streams(tmp_path: Path) -> None:
    """NumPy-based augmentations (RandAugment, audio mixup/roll) differ between workers: PyTorch seeds NumPy and
    ``random`` per worker itself, so no worker_init_fn is needed (Video had a redundant one)."""
    from torch.utils.data import Dataset

    from pathway.data import SplitDataModule

    class Draws(Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> torch.Tensor:
            return torch.tensor(np.random.rand())

    class Data(SplitDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters({"batch_size": 1, "num_workers": 2, "pin_memory": False})
            self.val_set = Draws()

    draws = [float(x) for x in Data().val_dataloader()]  # items 0, 2 from worker 0; 1, 3 from worker 1
    assert draws[0] != draws[1] and draws[2] != draws[3]
