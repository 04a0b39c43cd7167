"""Shared fixtures: tiny timm ViTs, a tiny auxiliary checkpoint and a tiny digits ImageFolder (all CPU, all small)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest
import timm
import torch
from torch import nn

# The models here are tiny: intra-op threads only add synchronisation, and on a busy 2-core machine OpenMP
# spin-waiting makes a 1 ms forward take ~0.4 s.  Subprocesses started by tests get OMP_NUM_THREADS=1 too.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

# One tiny ViT configuration used throughout: 16x16 inputs, 8x8 patches -> 4 patch tokens + cls, width 32, depth 2.
TINY_VIT: dict[str, Any] = dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2)
# The same as ``model_kwargs`` of Image.model.ImageClassifier (img_size is its own argument there).
TINY_MODEL_KWARGS: dict[str, Any] = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)


def make_vit(seed: int = 0, num_classes: int = 5, **overrides: Any) -> nn.Module:
    """A tiny timm ViT with reproducible random weights (``seed``) in eval mode."""
    torch.manual_seed(seed)
    config = {**TINY_VIT, **overrides}
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, **config)
    return model.eval()


@pytest.fixture
def vit_factory() -> Callable[..., nn.Module]:
    """``vit_factory(seed=0, num_classes=5, **timm_overrides)`` -> a tiny ViT."""
    return make_vit


@pytest.fixture
def tiny_input() -> torch.Tensor:
    return torch.randn(3, 3, TINY_VIT["img_size"], TINY_VIT["img_size"], generator=torch.Generator().manual_seed(7))


@pytest.fixture
def aux_ckpt(tmp_path: Path) -> Path:
    """A state-dict file of a tiny ViT with other weights (another seed, another head) than any target."""
    path = tmp_path / "aux_vit.pt"
    torch.save(make_vit(seed=123, num_classes=7).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn digits as ``root/{train,val}/<digit>/*.png`` at 16x16, generated once per session."""
    from demo.digits import make_digits_imagefolder

    return make_digits_imagefolder(tmp_path_factory.mktemp("digits"), size=16)
