"""Files decide nothing they should not: a stored class name imports only this project's code, integer tensors are
not cast into weights, another model's checkpoint is not a target, and frozen aux files are found by content."""
from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_MODEL_KWARGS, make_vit
from Image.datamodule import ImageDataModule
from Image.model import ImageClassifier
from pathway.checkpoint import CheckpointError
from pathway.cli import run_cli
from pathway.module import PathwayModule, _checkpoint_class

CONFIG = Path(__file__).resolve().parents[1] / "Image" / "configs" / "demo.yaml"


def _image(**kwargs) -> ImageClassifier:
    return ImageClassifier(num_classes=5, img_size=16, model_kwargs=TINY_MODEL_KWARGS, **kwargs)


def test_stored_module_class_is_imported_only_from_the_project(tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "evil_module.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Evil:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    checkpoint = {"pathway_module_class": "evil_module.Evil", "hyper_parameters": {}}
    with pytest.raises(CheckpointError, match=r"x\.ckpt: names its module class 'evil_module\.Evil', outside"):
        _checkpoint_class("x.ckpt", checkpoint)
    assert not marker.exists()  # refused before importing anything
    with pytest.raises(CheckpointError, match="is not a PathwayModule subclass"):
        _checkpoint_class("x.ckpt", checkpoint, trust_pickle=True)  # trusted: imported, then still checked
    assert marker.exists()
    for name in ("pathway.checkpoint.CheckpointError", "os.system"):
        with pytest.raises(CheckpointError, match="is not a PathwayModule subclass|outside this project"):
            _checkpoint_class("x.ckpt", {"pathway_module_class": name})
    assert _checkpoint_class("x.ckpt", {"pathway_module_class": "Image.model.ImageClassifier"}) is ImageClassifier

    class Local(ImageClassifier):  # already imported (defined by the caller): used without importing anything
        pass

    assert _checkpoint_class("x.ckpt", {"pathway_module_class": f"{Local.__module__}.{Local.__qualname__}"}) is Local


def test_load_from_checkpoint_refuses_urls_and_names_broken_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a URL"):
        PathwayModule.load_from_checkpoint("http://127.0.0.1:9/x.ckpt")
    for kwargs in ({"target_ckpt": "https://127.0.0.1:9/t.pth"}, {"aux_ckpts": ["https://127.0.0.1:9/a.pth"]}):
        with pytest.raises(CheckpointError, match=r"https://127\.0\.0\.1:9/.\.pth: is a URL"):
            _image(**kwargs)
    broken = tmp_path / "broken.ckpt"
    broken.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=rf"{broken}: not a readable Lightning checkpoint"):
        PathwayModule.load_from_checkpoint(broken)


@pytest.mark.parametrize("role", ["target", "aux"])
def test_integer_weights_are_refused_not_cast(tmp_path: Path, role: str) -> None:
    state = make_vit(seed=3, num_classes=5).state_dict()
    state["blocks.0.mlp.fc1.weight"] = (state["blocks.0.mlp.fc1.weight"] * 100).to(torch.int32)
    path = tmp_path / "int.pt"
    torch.save(state, path)
    kwargs = {"target_ckpt": str(path)} if role == "target" else {"aux_ckpts": [str(path)]}
    with pytest.raises(CheckpointError, match=r"int\.pt: .*blocks\.0\.mlp\.fc1\.weight \(torch\.int32\)"):
        _image(**kwargs)


def test_another_modalitys_checkpoint_is_not_a_target(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from Point.model import PointClassifier

    point = PointClassifier(num_classes=4, embed_dim=32, depth=2, num_heads=2, num_groups=8, group_size=8)
    path = tmp_path / "point.pt"
    torch.save(point.backbone.state_dict(), path)  # its blocks fit the tiny ViT's; its tokenizer does not
    with pytest.raises(CheckpointError, match=r"point\.pt: as target_ckpt of ImageClassifier it fills none of the "
                                              r"tokenizer .*model\.partial_target"):
        _image(target_ckpt=str(path))
    with caplog.at_level(logging.WARNING, logger="pathway.module"):
        model = _image(target_ckpt=str(path), partial_target=True)
    assert "fills none of the tokenizer" in caplog.text
    torch.testing.assert_close(model.backbone.blocks[0].mlp.fc1.weight, point.backbone.blocks[0].mlp.fc1.weight)

    deep = tmp_path / "deep.pt"  # a tokenizer that fits, but half the blocks missing
    torch.save(make_vit(seed=1, num_classes=5, depth=1).state_dict(), deep)
    with pytest.raises(CheckpointError, match=r"deep\.pt: .* fills \d+% of the backbone's weights outside the head "
                                              r"\(at least 90% expected; missing e\.g\. \['blocks\.1\."):
        _image(target_ckpt=str(deep))
    full = tmp_path / "full.pt"
    torch.save(make_vit(seed=1, num_classes=7).state_dict(), full)  # another head: still a complete target
    _image(target_ckpt=str(full))


def test_frozen_aux_is_stored_by_absolute_path_and_found_when_moved(
    digits_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sys, "argv", ["python"])
    monkeypatch.chdir(tmp_path)
    torch.save(make_vit(seed=123, num_classes=7).state_dict(), tmp_path / "aux.pt")
    args = ["--config", str(CONFIG), "--model.model_kwargs", json.dumps(TINY_MODEL_KWARGS),
            "--model.aux_trainable", "false", "--data.root", str(digits_root), "--data.img_size", "16",
            "--data.batch_size", "8", "--data.num_workers", "0", "--trainer.default_root_dir", str(tmp_path / "run"),
            "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
            "--lambda_monitor.heatmap", "false"]
    fit = run_cli(ImageClassifier, ImageDataModule, args=["fit", *args, "--model.aux_ckpts", "[aux.pt]"])
    last = fit.trainer.checkpoint_callback.last_model_path
    recorded = torch.load(last, weights_only=False)["pathway_aux_sha256"]
    assert list(recorded) == [str(tmp_path / "aux.pt")]  # absolute, though given relative to the run's folder

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    moved = elsewhere / "aux_moved.pt"
    shutil.move(tmp_path / "aux.pt", moved)
    with pytest.raises(CheckpointError, match=r"aux\.pt \(sha256 [0-9a-f]{64}\) is missing, and none of"):
        run_cli(ImageClassifier, ImageDataModule, args=["test", *args, "--ckpt_path", last])
    with caplog.at_level(logging.INFO, logger="pathway.module"):
        test = run_cli(ImageClassifier, ImageDataModule,
                       args=["test", *args, "--model.aux_ckpts", json.dumps([str(moved)]), "--ckpt_path", last])
    assert f"found at {moved}" in caplog.text
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(test.model.eval()(x), fit.model.eval()(x), atol=1e-6, rtol=0)

    other = elsewhere / "other.pt"  # same count, other content: not the file the run was trained with
    torch.save(make_vit(seed=9, num_classes=7).state_dict(), other)
    moved.unlink()
    with pytest.raises(CheckpointError, match="is missing, and none of model.aux_ckpts"):
        run_cli(ImageClassifier, ImageDataModule,
                args=["test", *args, "--model.aux_ckpts", json.dumps([str(other)]), "--ckpt_path", last])


def test_part_segmentation_refuses_non_finite_outputs() -> None:
    from Point.model import PointSegmenter

    model = PointSegmenter(num_groups=8, group_size=8, feature_levels=(0, 1), propagation_dims=(32, 16),
                           head_dims=(16, 8), embed_dim=32, depth=2, num_heads=2).eval()
    points = torch.randn(2, 64, 3, generator=torch.Generator().manual_seed(0))
    category, parts = torch.zeros(2, dtype=torch.long), torch.zeros(2, 64, dtype=torch.long)  # airplanes, part 0
    with torch.no_grad():
        model.eval_step((points, category, parts), "test")  # finite: evaluated
        model.backbone.blocks[0].mlp.fc1.weight[0, 0] = float("nan")
        with pytest.raises(FloatingPointError, match=r"test: \d+ of \d+ model outputs are non-finite; non-finite "
                                                     r"weights: \['backbone\.blocks\.0\.mlp\.fc1\.weight'\]"):
            model.eval_step((points, category, parts), "test")
        with pytest.raises(FloatingPointError, match="predict: "):
            model.predict_step((points, category, parts, torch.zeros(2, 64)), 0)
