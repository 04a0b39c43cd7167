"""``predictions.csv`` has one schema (``sample, label, class_1, score_1, ...``) for single- and multi-label models,
names classes wherever the data has names (AudioSet display names, a Video label list) and gives part segmentation
one row per point, with the point's row in its file."""
from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from Audio.datamodule import AudioDataModule
from pathway.callbacks import PredictionWriter
from Point.datamodule import ShapeNetPartDataModule
from Point.model import PointSegmenter
from Point.synthetic import make_shapenetpart_dataset
from Video.datamodule import VideoDataModule

QUIET = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


class _Scores(L.LightningModule):
    def __init__(self, multilabel: bool) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.linear = nn.Linear(4, 3)

    def predict_step(self, batch, batch_idx):
        logits = self.linear(batch[0])
        return logits.sigmoid() if self.hparams.multilabel else logits.softmax(-1)


class _Named(L.LightningDataModule):
    classes = ["Speech", "Music", "Dog"]

    def __init__(self, y: torch.Tensor) -> None:
        super().__init__()
        self.y = y

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(len(self.y), 4), self.y), batch_size=2)


def _predict(module: L.LightningModule, data: L.LightningDataModule, folder: Path, top_k: int = 2) -> list[dict]:
    writer = PredictionWriter(top_k=top_k)
    L.Trainer(default_root_dir=folder, callbacks=[writer], **QUIET).predict(module, datamodule=data)
    return list(csv.DictReader(open(writer.last_path)))


def test_single_and_multi_label_rows_share_one_schema_with_class_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    single = _predict(_Scores(multilabel=False), _Named(torch.tensor([0, 2, 1])), tmp_path / "single")
    multi = _predict(_Scores(multilabel=True), _Named(torch.tensor([[1., 0, 1], [0, 1, 0], [0, 0, 0]])),
                     tmp_path / "multi")
    header = ["sample", "label", "class_1", "score_1", "class_2", "score_2"]
    assert list(single[0]) == header and list(multi[0]) == header
    assert [r["label"] for r in single] == ["Speech", "Dog", "Music"]
    assert [r["label"] for r in multi] == ["Speech Dog", "Music", ""]
    for row in single + multi:
        assert {row["class_1"], row["class_2"]} <= set(_Named.classes)
        assert float(row["score_1"]) >= float(row["score_2"])
    every = _predict(_Scores(multilabel=True), _Named(torch.zeros(3, 3)), tmp_path / "every", top_k=10)
    assert len(every[0]) == 2 + 2 * 3  # top_k above the class count: every class's score


def test_audioset_and_video_lists_name_their_classes(tmp_path: Path) -> None:
    labels = tmp_path / "class_labels_indices.csv"
    labels.write_text('index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/04rlf,"Music"\n')
    assert AudioDataModule(format="audioset", label_csv=str(labels)).classes == ["Speech", "Music"]

    (tmp_path / "train.csv").write_text("a.mp4 0\nb.mp4 2\n")
    names = tmp_path / "labels.txt"
    names.write_text("abseiling\nair drumming\nanswering questions\n")
    video = VideoDataModule(root=str(tmp_path), format="list", label_names=str(names), decoder="pyav")
    assert video.classes == ["abseiling", "air drumming", "answering questions"] and video.num_classes == 3
    names.write_text("abseiling\nair drumming\n")
    with pytest.raises(ValueError, match=r"labels.txt: expected one class name per line for labels 0..2"):
        VideoDataModule(root=str(tmp_path), format="list", label_names=str(names), decoder="pyav")


def test_segmentation_rows_map_back_to_the_points_of_each_file(tmp_path: Path) -> None:
    root = make_shapenetpart_dataset(tmp_path / "parts", per_category=1, points=80, categories=["Airplane", "Mug"])
    data = ShapeNetPartDataModule(root=str(root), num_points=64, batch_size=2, num_workers=0, pin_memory=False)
    torch.manual_seed(0)
    model = PointSegmenter(num_classes=data.num_classes, num_groups=8, group_size=8, embed_dim=32, depth=2,
                           num_heads=2, feature_levels=(0, 1), propagation_dims=(32, 16), head_dims=(16, 16))
    rows = _predict(model, data, tmp_path / "run")
    assert list(rows[0]) == ["sample", "point", "label", "class_1"]
    by_file: dict[str, list[dict]] = {}
    for row in rows:
        by_file.setdefault(row["sample"], []).append(row)
    assert len(by_file) == 2 and all(len(points) == 64 for points in by_file.values())
    for file, points in by_file.items():
        cloud = np.loadtxt(file)
        indices = [int(r["point"]) for r in points]
        assert len(set(indices)) == 64 and sorted(indices) != list(range(64))  # FPS rows, not positions
        assert [int(r["label"]) for r in points] == cloud[indices, -1].astype(int).tolist()
        assert all(0 <= int(r["class_1"]) < 50 for r in points)
