"""Two-step fits of point classification and part segmentation with a pathway from a tiny image ViT, and vote
testing (the shipped configs parse in test_configs.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from pathway.surgery import pathway_layers
from Point.datamodule import PointDataModule, ShapeNetPartDataModule
from Point.model import PointClassifier, PointSegmenter
from Point.synthetic import make_shape_dataset, make_shapenetpart_dataset

# Width 32 / depth 2 / 2 heads: the size of the conftest's tiny timm ViT, which is the (image) aux model.
TINY = dict(num_groups=8, group_size=8, embed_dim=32, depth=2, num_heads=2)
SEG = dict(feature_levels=(0, 1), propagation_dims=(32, 16), head_dims=(16, 16))


def _fit_with_pathway(model_class: type[L.LightningModule], dm: L.LightningDataModule, aux_ckpt: Path,
                      **kwargs: Any) -> tuple[L.LightningModule, L.Trainer]:
    """A tiny model with the frozen aux, trained for two steps, whose pathway was trained."""
    model = model_class(num_classes=dm.num_classes, aux_ckpts=[str(aux_ckpt)], aux_trainable=False, lr=1e-2,
                        **TINY, **kwargs)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1)
    trainer.fit(model, dm)
    assert trainer.global_step == 2
    aux = torch.load(aux_ckpt)
    layers = dict(pathway_layers(model.backbone))
    assert len(layers) == 8
    assert any(layer.lambdas.abs().max() > 0 for layer in layers.values()), "λ did not move: pathway not trained"
    torch.testing.assert_close(layers["blocks.1.mlp.fc1"].aux_weight_0, aux["blocks.1.mlp.fc1.weight"])
    return model, trainer


def test_classification_fit_and_vote_test(tmp_path: Path, aux_ckpt: Path) -> None:
    root = make_shape_dataset(tmp_path / "shapes", classes=3, per_class=4, points=96, seed=0)
    dm = PointDataModule(root=str(root), format="folder", num_points=64, batch_size=4, num_workers=0,
                         pin_memory=False, vote_num=2)
    model, trainer = _fit_with_pathway(PointClassifier, dm, aux_ckpt)
    result = trainer.test(model, dm, verbose=False)[0]
    assert result["test/num_samples"] == 12  # 24 views averaged into 12 clouds
    assert 0.0 <= result["test/acc1"] <= 1.0 and 0.0 <= result["test/macc"] <= 1.0


def test_segmentation_fit_and_validate(tmp_path: Path, aux_ckpt: Path) -> None:
    root = make_shapenetpart_dataset(tmp_path / "parts", per_category=1, points=80, categories=["Airplane", "Mug"])
    dm = ShapeNetPartDataModule(root=str(root), num_points=64, batch_size=2, num_workers=0, pin_memory=False)
    model, trainer = _fit_with_pathway(PointSegmenter, dm, aux_ckpt, **SEG)
    result = trainer.validate(model, dm, verbose=False)[0]
    assert 0.0 < result["val/ins_miou"] <= 1.0 and 0.0 < result["val/cls_miou"] <= 1.0
