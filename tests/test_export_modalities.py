"""`python -m pathway export` on every modality's trained checkpoint, part segmentation (two inputs) included: the
module is rebuilt from the checkpoint alone, folded, and exported with a dynamic batch."""
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from Audio.model import AudioClassifier
from pathway import pathway_layers, reparameterize_aux_into_target_model, set_lambdas
from pathway.__main__ import main as pathway_main
from Point.model import PointClassifier, PointSegmenter
from Video.model import VideoClassifier

TINY = dict(embed_dim=32, depth=2, num_heads=2)


def _video() -> VideoClassifier:
    return VideoClassifier(num_classes=4, img_size=32, num_frames=4, patch_size=16, **TINY)


def _point() -> PointClassifier:
    return PointClassifier(num_classes=4, num_groups=8, group_size=8, **TINY)


def _point_seg() -> PointSegmenter:
    return PointSegmenter(num_groups=8, group_size=8, feature_levels=(0, 1), propagation_dims=(32, 16),
                          head_dims=(16, 8), **TINY)


def _audio() -> AudioClassifier:
    return AudioClassifier(num_classes=4, model_name="vit_tiny_patch16_224", target_length=64, num_mel_bins=32, **TINY)


def _save_checkpoint(module: L.LightningModule, path: Path) -> None:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)


def _small_clouds(monkeypatch: pytest.MonkeyPatch) -> None:
    """64-point clouds instead of 1,024/2,048: tracing the pure-torch FPS is what takes the time."""
    real = PointSegmenter.example_inputs
    monkeypatch.setattr(PointClassifier, "example_input_shape", lambda self: (64, 3))
    monkeypatch.setattr(PointSegmenter, "example_inputs",
                        lambda self, n, gen: (real(self, n, gen)[0][:, :64].contiguous(), real(self, n, gen)[1]))


def test_segmentation_example_inputs_are_clouds_and_categories() -> None:
    points, category = _point_seg().example_inputs(3, torch.Generator().manual_seed(0))
    assert points.shape == (3, 2048, 3) and category.shape == (3,)
    assert category.dtype == torch.long and 0 <= int(category.min()) and int(category.max()) < 16


@pytest.mark.parametrize("build", [_video, _point, _point_seg, _audio], ids=["video", "point", "point_seg", "audio"])
def test_every_modality_exports_from_its_checkpoint(build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _small_clouds(monkeypatch)
    torch.manual_seed(0)
    module = build().eval()
    aux = {k: torch.randn_like(v) for k, v in module.backbone.state_dict().items() if v.is_floating_point()}
    reparameterize_aux_into_target_model(module.backbone, aux)
    set_lambdas(module.backbone, 0.2)
    _save_checkpoint(module, tmp_path / "model.ckpt")
    assert pathway_main(["export", str(tmp_path / "model.ckpt"), "--out", str(tmp_path / "out"), "--no-onnx"]) == 0

    sidecar = json.loads((tmp_path / "out" / "export.json").read_text())
    assert sidecar["model_class"] == f"{type(module).__module__}.{type(module).__name__}"
    inputs = module.example_inputs(3, torch.Generator().manual_seed(1))
    assert [i["shape"] for i in sidecar["inputs"]] == [["batch", *x.shape[1:]] for x in inputs]
    assert set(sidecar["max_abs_diff"]) == {"fused", "safetensors", "torch_export", "torch_export_batch1"}
    with torch.no_grad():
        expected = module(*inputs)
        plain = module.build_backbone().eval()
        plain.load_state_dict(load_file(str(tmp_path / "out" / "model.safetensors")), strict=True)
        torch.testing.assert_close(plain(*inputs), expected, atol=1e-5, rtol=1e-5)
