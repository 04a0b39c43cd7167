"""Training and multi-view testing through Lightning, with the pathway, on a generated mp4 set."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pathway.surgery import pathway_layers
from Video.datamodule import VideoDataModule
from Video.model import VideoClassifier
from Video.synthetic import make_video_dataset

TINY_VIDEO: dict[str, Any] = dict(img_size=16, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=32, depth=2,
                                  num_heads=2, drop_path_rate=0.1)
TINY_DATA: dict[str, Any] = dict(num_frames=4, sampling_rate=2, img_size=16, batch_size=2, num_workers=0,
                                 pin_memory=False, test_num_clips=2, test_num_crops=3)


def trainer(**kwargs: Any) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kwargs)


@pytest.fixture(scope="module")
def video_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fit_videos")
    make_video_dataset(root, classes=2, per_class=2, frames=12, size=(20, 24), fps=10, seed=1)
    return root


def test_two_step_fit_with_pathway_and_cutmix_on_clips(video_root: Path, aux_ckpt: Path) -> None:
    torch.manual_seed(0)
    data = VideoDataModule(str(video_root), **TINY_DATA)
    model = VideoClassifier(num_classes=data.num_classes, aux_ckpts=[str(aux_ckpt)], aux_trainable=False,
                            lr=1e-2, warmup_epochs=0,
                            mixup=0.8, cutmix=1.0, **TINY_VIDEO)
    layers = dict(pathway_layers(model.backbone))
    aux_before = {name: layer.aux_weight_0.clone() for name, layer in layers.items()}
    run = trainer(max_steps=2)
    run.fit(model, datamodule=data)
    assert run.global_step == 2
    for name, layer in layers.items():
        assert layer.lambdas.abs().item() > 0, f"λ of {name} was not trained"
        torch.testing.assert_close(layer.aux_weight_0, aux_before[name], rtol=0, atol=0)


def test_multi_view_scores_are_averaged_per_video() -> None:
    """Video 0 (label 0) is right in 1 of its 3 views but right on average; video 1 (label 1) is always wrong."""
    logits = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0], [3.0, 0.0, 0.0], [3.0, 0.0, 0.0],
                           [3.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    video_index = torch.tensor([0, 0, 0, 1, 1, 1])
    order = torch.tensor([3, 0, 4, 1, 5, 2])  # views of a video spread over batches
    loader = DataLoader(TensorDataset(logits[order], labels[order], video_index[order]), batch_size=4)
    model = VideoClassifier(num_classes=3, **TINY_VIDEO)
    model.backbone = nn.Identity()  # the "clips" are the logits themselves
    results = trainer().test(model, dataloaders=loader, verbose=False)[0]
    assert results["test/num_samples"] == 2
    assert results["test/acc1"] == pytest.approx(0.5)  # per-view accuracy would be 1/6


def test_multi_view_test_run_scores_each_video_once(video_root: Path) -> None:
    data = VideoDataModule(str(video_root), **{**TINY_DATA, "batch_size": 4})
    model = VideoClassifier(num_classes=data.num_classes, **TINY_VIDEO)
    results = trainer().test(model, datamodule=data, verbose=False)[0]
    assert results["test/num_samples"] == 4  # 4 videos x 2 clips x 3 crops = 24 views
    assert {"test/acc1", "test/loss"} <= set(results)
