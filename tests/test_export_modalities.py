"""Every modality's merged backbone goes through torch.export with a dynamic batch (what `pathway export` needs)."""
import pytest
import torch

from Audio.model import AudioClassifier
from pathway import fuse_pathway, pathway_layers, reparameterize_aux_into_target_model, set_lambdas
from Point.model import PointClassifier
from Video.model import VideoClassifier

TINY = dict(embed_dim=32, depth=2, num_heads=2)


def _video() -> VideoClassifier:
    return VideoClassifier(num_classes=4, img_size=32, num_frames=4, patch_size=16, **TINY)


def _point() -> PointClassifier:
    return PointClassifier(num_classes=4, num_groups=8, group_size=8, **TINY)


def _audio() -> AudioClassifier:
    return AudioClassifier(num_classes=4, model_name="vit_tiny_patch16_224", target_length=64, num_mel_bins=32, **TINY)


@pytest.mark.parametrize("build", [_video, _point, _audio], ids=["video", "point", "audio"])
def test_merged_backbone_exports_with_dynamic_batch(build) -> None:
    torch.manual_seed(0)
    module = build().eval()
    aux = {k: torch.randn_like(v) for k, v in module.backbone.state_dict().items() if v.is_floating_point()}
    reparameterize_aux_into_target_model(module.backbone, aux)
    set_lambdas(module.backbone, 0.2)
    shape = module.example_input_shape()
    if isinstance(module, PointClassifier):
        shape = (64, 3)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        expected = module(x)
        plain = fuse_pathway(module.backbone).eval()
        assert not list(pathway_layers(plain))
        program = torch.export.export(plain, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
        exported = program.module()
        torch.testing.assert_close(exported(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(exported(x[:1]), expected[:1], atol=1e-5, rtol=1e-5)
