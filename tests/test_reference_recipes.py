"""Behaviour of each recipe against its reference script, written out here independently of our code: the lr of
every optimizer step over a whole schedule (MAE / AudioMAE ``adjust_learning_rate``, VideoMAE ``cosine_scheduler``,
Point-MAE's timm ``CosineLRScheduler`` stepped after each epoch), Point-MAE's block LayerNorm and weight-decay sets,
AudioMAE's frozen position table, VideoMAE V2's K710 → K400 head, and the effective-batch report."""
from __future__ import annotations

import inspect
import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from conftest import TINY_MODEL_KWARGS
from Audio.model import AudioClassifier
from Image.model import ImageClassifier
from pathway.optim import layer_decay_param_groups
from pathway.size import TransformerSize
from Point.backbone import PointTransformer
from Point.model import PointClassifier, PointSegmenter
from Video.model import VideoClassifier

ROOT = Path(__file__).resolve().parents[1]
LR, MIN_LR = 1e-2, 1e-4


# --- the lr of every step, against the reference's rule ------------------------------------------------------
class _Batches(L.LightningDataModule):
    """``n`` batches of random 16x16 images per epoch (``batch_size`` is what the effective-batch figures read)."""

    def __init__(self, n: int, batch_size: int = 2) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(self.n * self.batch_size, 3, 16, 16, generator=generator)
        y = torch.randint(0, 4, (self.n * self.batch_size,), generator=generator)
        return DataLoader(TensorDataset(x, y), batch_size=self.batch_size)


class _RecordLR(L.Callback):
    """Each optimizer step's lr divided by its group's lr_scale (the schedule's value), for every group."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        self.lrs.append([g["lr"] / g["lr_scale"] for g in optimizer.param_groups])


def _image(**overrides: Any) -> ImageClassifier:
    kwargs: dict[str, Any] = dict(model_name="vit_tiny_patch16_224", img_size=16, drop_path_rate=0.0,
                                  model_kwargs=dict(TINY_MODEL_KWARGS), num_classes=4, lr=LR, min_lr=MIN_LR,
                                  layer_decay=0.5, weight_decay=0.05)
    kwargs.update(overrides)
    return ImageClassifier(**kwargs)


def _fit(model: L.LightningModule, tmp_path: Path, epochs: int, batches: int, accumulate: int = 1,
         batch_size: int = 2) -> list[float]:
    recorder = _RecordLR()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        accumulate_grad_batches=accumulate, callbacks=[recorder], default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=_Batches(batches, batch_size))
    for lrs in recorder.lrs:
        assert lrs == pytest.approx([lrs[0]] * len(lrs), rel=1e-12), "every group follows one schedule"
    return [lrs[0] for lrs in recorder.lrs]


def test_mae_rule_over_a_whole_schedule(tmp_path: Path) -> None:
    """MAE/AudioMAE engine_finetune: at every micro-batch ``i`` with ``i % accum_iter == 0`` the lr is
    ``adjust_learning_rate(i / len(data_loader) + epoch)``: linear from 0, then a half-cycle cosine."""
    epochs, batches, accumulate, warmup = 4, 6, 2, 1.5

    def adjust_learning_rate(epoch: float) -> float:
        if epoch < warmup:
            return LR * epoch / warmup
        return MIN_LR + (LR - MIN_LR) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))

    expected = [adjust_learning_rate(i / batches + epoch)
                for epoch in range(epochs) for i in range(batches) if i % accumulate == 0]
    got = _fit(_image(warmup_epochs=warmup), tmp_path, epochs, batches, accumulate)
    assert got[0] == 0.0, "MAE's first step runs at lr 0"
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_videomae_rule_over_a_whole_schedule(tmp_path: Path) -> None:
    """VideoMAE utils.cosine_scheduler: ``linspace(0, lr, warmup_iters)`` then the cosine over the other iterations,
    indexed by the global iteration."""
    epochs, per_epoch, warmup_epochs = 4, 3, 1
    warmup_iters = warmup_epochs * per_epoch
    iters = np.arange(epochs * per_epoch - warmup_iters)
    expected = np.concatenate([
        np.linspace(0, LR, warmup_iters),
        MIN_LR + 0.5 * (LR - MIN_LR) * (1 + np.cos(np.pi * iters / len(iters))),
    ])
    got = _fit(_image(lr_schedule="videomae", warmup_epochs=warmup_epochs), tmp_path, epochs, per_epoch)
    assert got == pytest.approx(expected.tolist(), rel=1e-9, abs=1e-15)


def test_point_mae_rule_over_a_whole_schedule(tmp_path: Path) -> None:
    """Point-MAE: ``CosineLRScheduler(t_initial=epochs, lr_min=1e-6, warmup_lr_init=1e-6, warmup_t=…)`` built
    before training (groups at ``warmup_lr_init``) and ``scheduler.step(epoch)`` after each epoch."""
    epochs, per_epoch, warmup_t, warmup_lr = 6, 2, 2, 1e-6

    def timm_cosine(t: int) -> float:
        if t < warmup_t:
            return warmup_lr + t * (LR - warmup_lr) / warmup_t
        return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * t / epochs))

    per_epoch_lr = [warmup_lr] + [timm_cosine(epoch) for epoch in range(epochs - 1)]
    expected = [lr for lr in per_epoch_lr for _ in range(per_epoch)]
    got = _fit(_image(lr_schedule="point_mae", warmup_epochs=warmup_t, warmup_lr=warmup_lr), tmp_path, epochs,
               per_epoch)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-15)


def _resolved(model_class: type, config: dict, key: str) -> Any:
    if key in config["model"]:
        return config["model"][key]
    for cls in model_class.__mro__:
        parameter = inspect.signature(cls.__init__).parameters.get(key)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    raise AssertionError(f"{model_class.__name__} has no default for {key}")


REFERENCE_SCHEDULES = {  # recipe -> (model class, lr rule, warmup start) of its reference script
    "Image/configs/in1k_vitb.yaml": (ImageClassifier, "mae", 0.0),
    "Audio/configs/audioset20k_vitb.yaml": (AudioClassifier, "mae", 0.0),
    "Audio/configs/audioset2m_vitb.yaml": (AudioClassifier, "mae", 0.0),
    "Audio/configs/esc50_vitb.yaml": (AudioClassifier, "mae", 0.0),
    "Video/configs/k400_vitb.yaml": (VideoClassifier, "videomae", 0.0),
    "Point/configs/modelnet40.yaml": (PointClassifier, "point_mae", 1e-6),
    "Point/configs/scanobjectnn_hardest.yaml": (PointClassifier, "point_mae", 1e-6),
    "Point/configs/shapenetpart.yaml": (PointSegmenter, "point_mae", 1e-6),
}


@pytest.mark.parametrize("recipe", sorted(REFERENCE_SCHEDULES))
def test_each_recipe_uses_its_references_lr_rule(recipe: str) -> None:
    model_class, rule, warmup_lr = REFERENCE_SCHEDULES[recipe]
    config = yaml.safe_load((ROOT / recipe).read_text())
    assert _resolved(model_class, config, "lr_schedule") == rule
    assert _resolved(model_class, config, "warmup_lr") == warmup_lr


def test_point_mae_schedule_refuses_fractional_warmup(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="warmup_epochs"):
        _fit(_image(lr_schedule="point_mae", warmup_epochs=1.5), tmp_path, 2, 1)


# --- Point-MAE's block and weight-decay sets -------------------------------------------------------------------
POINT = dict(num_groups=8, group_size=8, head_dropout=0.0,
             size=TransformerSize(embed_dim=32, depth=2, num_heads=2, qkv_bias=False, drop_path_rate=0.0))


def _point_mae_block(block: torch.nn.Module, x: torch.Tensor, heads: int) -> torch.Tensor:
    """Point-MAE's Block: pre-norm attention and MLP with ``nn.LayerNorm`` defaults (eps 1e-5)."""
    def norm(layer: torch.nn.Module, t: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(t, t.shape[-1:], layer.weight, layer.bias, eps=1e-5)

    batch, tokens, dim = x.shape
    qkv = block.attn.qkv(norm(block.norm1, x)).reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(dim=-1)
    x = x + block.attn.proj((attn @ v).transpose(1, 2).reshape(batch, tokens, dim))
    return x + block.mlp.fc2(F.gelu(block.mlp.fc1(norm(block.norm2, x))))


def test_point_block_is_point_maes_layer_norm() -> None:
    torch.manual_seed(0)
    model = PointTransformer(num_classes=3, **POINT).eval()
    x = 0.01 * torch.randn(2, 5, 32)  # small activations, where the LayerNorm eps shows
    for block in model.blocks:
        assert block.norm1.eps == block.norm2.eps == 1e-5
        with torch.no_grad():
            torch.testing.assert_close(block(x), _point_mae_block(block, x, heads=2), atol=1e-6, rtol=1e-5)


def test_point_weight_decay_matches_point_maes_add_weight_decay(tmp_path: Path) -> None:
    """Point-MAE's add_weight_decay: no decay for 1-D parameters, ``.bias`` and names containing ``token``; every
    other trainable parameter (``cls_pos`` and the trained aux weights included) gets the weight decay."""
    aux = tmp_path / "aux.pt"
    torch.save(PointTransformer(num_classes=3, **POINT).state_dict(), aux)
    model = PointClassifier(num_classes=3, num_groups=8, group_size=8, embed_dim=32, depth=2, num_heads=2,
                            aux_ckpts=[str(aux)], aux_trainable=True, lambda_init=0.1, lr=5e-4)
    groups = layer_decay_param_groups(model.backbone, 5e-4, 0.05, layer_decay=1.0)
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    names = dict(model.backbone.named_parameters())
    assert set(decay_of) == {id(p) for p in names.values() if p.requires_grad}
    for name, param in names.items():
        exempt = param.ndim == 1 or name.endswith(".bias") or "token" in name
        assert decay_of[id(param)] == (0.0 if exempt else 0.05), name
    assert decay_of[id(names["cls_pos"])] == 0.05 and decay_of[id(names["cls_token"])] == 0.0
    assert {g["lr"] for g in groups} == {5e-4}, "Point-MAE has no layer decay: one lr for every group"


# --- AudioMAE's position table -----------------------------------------------------------------------------------
AUDIO_RECIPES = ("audioset20k_vitb.yaml", "audioset2m_vitb.yaml", "esc50_vitb.yaml")


@pytest.mark.parametrize("recipe", AUDIO_RECIPES)
def test_audio_recipes_keep_the_position_table_frozen(recipe: str, tmp_path: Path) -> None:
    """AudioMAE fine-tuning: ``pos_embed = nn.Parameter(..., requires_grad=False)`` (the pre-trained sin-cos table)."""
    pos_embed = yaml.safe_load((ROOT / "Audio/configs" / recipe).read_text())["model"]["pos_embed"]
    tiny = dict(model_name="vit_tiny_patch16_224", embed_dim=32, depth=2, num_heads=2, num_mel_bins=32,
                target_length=64, drop_path_rate=0.0)
    source = AudioClassifier(num_classes=5, pos_embed="learn", **tiny).backbone
    with torch.no_grad():
        source.pos_embed.normal_()
    target = tmp_path / "target.pt"
    torch.save(source.state_dict(), target)
    model = AudioClassifier(num_classes=5, pos_embed=pos_embed, target_ckpt=str(target), **tiny)
    assert not model.backbone.pos_embed.requires_grad
    assert torch.equal(model.backbone.pos_embed, source.pos_embed), "the checkpoint's table is the one kept"
    groups = layer_decay_param_groups(model.backbone, 1e-3, 0.05, 0.75)
    assert all(p is not model.backbone.pos_embed for g in groups for p in g["params"])


# --- VideoMAE V2's K710 head -------------------------------------------------------------------------------------
VIDEO = dict(img_size=16, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=32, depth=2, num_heads=2,
             drop_path_rate=0.0)


def _k710_checkpoint(tmp_path: Path, rows: int = 7) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    state = VideoClassifier(num_classes=rows, **VIDEO).backbone.state_dict()
    path = tmp_path / "k710.pt"
    torch.save({"module": state}, path)
    return path, state


def test_video_head_is_mapped_through_the_label_map(tmp_path: Path) -> None:
    ckpt, state = _k710_checkpoint(tmp_path)
    label_map = tmp_path / "label_710to400.json"
    label_map.write_text(json.dumps([6, 0, 3]))
    model = VideoClassifier(num_classes=3, target_ckpt=str(ckpt), head_label_map=str(label_map), **VIDEO)
    assert torch.equal(model.backbone.head.weight, state["head.weight"][[6, 0, 3]])
    assert torch.equal(model.backbone.head.bias, state["head.bias"][[6, 0, 3]])
    fresh = VideoClassifier(num_classes=3, target_ckpt=str(ckpt), **VIDEO)
    assert float(fresh.backbone.head.weight.abs().max()) < 1e-3, "without a map the head starts fresh (x 0.001)"
    assert torch.equal(fresh.backbone.blocks[0].mlp.fc1.weight, state["blocks.0.mlp.fc1.weight"])


@pytest.mark.parametrize("content, message", [
    ([6, 0], "2 entries, but the model has 3 classes"),
    ([6, 0, 7], "row 7 does not exist"),
    ({"a": 1}, "JSON list of non-negative integers"),
])
def test_bad_label_maps_are_refused(tmp_path: Path, content: Any, message: str) -> None:
    ckpt, _ = _k710_checkpoint(tmp_path)
    label_map = tmp_path / "map.json"
    label_map.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        VideoClassifier(num_classes=3, target_ckpt=str(ckpt), head_label_map=str(label_map), **VIDEO)


# --- effective batch ---------------------------------------------------------------------------------------------
def _batch_report(tmp_path: Path, caplog: pytest.LogCaptureFixture, **overrides: Any) -> list[str]:
    with caplog.at_level(logging.INFO):
        _fit(_image(**overrides), tmp_path, epochs=1, batches=2, accumulate=2, batch_size=3)
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("batch: ")]


def test_start_logs_the_batch_figures_and_the_lr(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = _batch_report(tmp_path, caplog, lr=None, blr=0.1, recipe_batch_size=6)
    assert lines == ["batch: 3 per device x 1 device(s) x 1 node(s) x 2 accumulation = 6 effective (recipe: 6); "
                     f"base lr (lr x 256 / batch) 0.1, actual lr {0.1 * 6 / 256:.3g} (blr 0.1 x 6 / 256)"]


def test_another_batch_with_blr_warns_that_lr_was_scaled(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.warns(UserWarning, match=r"effective batch 6 .* differs from the recipe's 12 .*lr was scaled"):
        _batch_report(tmp_path, caplog, lr=None, blr=0.1, recipe_batch_size=12)


def test_another_batch_with_absolute_lr_warns_that_it_was_not(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    with pytest.warns(UserWarning, match=r"differs from the recipe's 24 .*NOT scaled.*--model.lr 0.0025"):
        _batch_report(tmp_path, caplog, recipe_batch_size=24)


def test_the_recipe_batch_gives_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture, recwarn) -> None:
    _batch_report(tmp_path, caplog, recipe_batch_size=6)
    assert not [w for w in recwarn if "effective batch" in str(w.message)]
    with pytest.raises(ValueError, match="recipe_batch_size"):
        _image(recipe_batch_size=0)


class _StopAfterEpoch(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.should_stop = trainer.current_epoch == self.epoch


def test_point_mae_schedule_resumes_where_it_stopped(tmp_path: Path) -> None:
    """timm's scheduler state and the groups' lr come back from ``last.ckpt``: a run stopped after epoch 1 and
    resumed trains the later epochs at the lr, and ends at the weights, of the uninterrupted run."""
    def fit(folder: str, *callbacks: L.Callback, ckpt: Any = None) -> tuple[ImageClassifier, list[float]]:
        torch.manual_seed(0)
        model = _image(lr_schedule="point_mae", warmup_epochs=1, warmup_lr=1e-6)
        recorder = _RecordLR()
        checkpoints = ModelCheckpoint(dirpath=str(tmp_path / folder), save_last=True)
        trainer = L.Trainer(max_epochs=4, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path),
                            callbacks=[recorder, checkpoints, *callbacks])
        trainer.fit(model, datamodule=_Batches(2), ckpt_path=ckpt)
        return model, [lrs[0] for lrs in recorder.lrs]

    whole, whole_lrs = fit("whole")
    _, first_lrs = fit("first", _StopAfterEpoch(1))
    resumed, resumed_lrs = fit("resumed", ckpt=str(tmp_path / "first" / "last.ckpt"))
    assert first_lrs == whole_lrs[:4] and resumed_lrs == whole_lrs[4:] and resumed_lrs[0] > 100 * first_lrs[0]
    for a, b in zip(resumed.parameters(), whole.parameters()):
        assert torch.equal(a, b)
