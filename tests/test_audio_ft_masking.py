"""AudioMAE fine-tuning masking (mask_2d, mask_t_prob, mask_f_prob): whole time rows and mel columns are dropped in
training only, and the masked forward is timm's forward on the kept tokens."""
from __future__ import annotations

import pytest
import torch

from Audio.backbone import build_audio_vit, forward_with_patch_masking
from Audio.model import AudioClassifier

TINY = dict(model_name="vit_tiny_patch16_224", embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0)
ROWS, COLS = 6, 4  # the patch grid of a 96 x 64 fbank


def _tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_audio_vit(5, target_length=ROWS * 16, num_mel_bins=COLS * 16, **TINY).eval()


def _tokens_entering_blocks(model: torch.nn.Module, run) -> torch.Tensor:
    seen = []
    handle = model.blocks[0].register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    run()
    handle.remove()
    return seen[0]


def test_masking_keeps_whole_time_rows_and_mel_columns_per_sample() -> None:
    model = _tiny_vit()
    with torch.no_grad():  # each patch token carries its grid index in channel 0, nothing else
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
        model.pos_embed.zero_()
        model.pos_embed[0, 1:, 0] = torch.arange(ROWS * COLS, dtype=torch.float32)
    x = torch.randn(8, 1, ROWS * 16, COLS * 16)
    torch.manual_seed(1)
    tokens = _tokens_entering_blocks(model, lambda: forward_with_patch_masking(model, x, 0.5, 0.25))
    keep_rows, keep_cols = 3, 3  # int(6 * 0.5), int(4 * 0.75)
    assert tokens.shape == (8, 1 + keep_rows * keep_cols, 32)
    kept_sets = []
    for sample in tokens[:, 1:, 0].round().long():
        rows, cols = set((sample // COLS).tolist()), set((sample % COLS).tolist())
        assert len(rows) == keep_rows and len(cols) == keep_cols
        assert set(sample.tolist()) == {r * COLS + c for r in rows for c in cols}  # a T' x F' sub-grid
        kept_sets.append(frozenset(sample.tolist()))
    assert len(set(kept_sets)) > 1  # drawn per sample


def test_no_masking_reproduces_the_timm_forward() -> None:
    model = _tiny_vit()
    x = torch.randn(3, 1, ROWS * 16, COLS * 16)
    with torch.no_grad():  # rows and columns are only permuted: mean pooling makes the order irrelevant
        torch.testing.assert_close(forward_with_patch_masking(model, x, 0.0, 0.0), model(x), atol=1e-5, rtol=1e-5)


def test_classifier_masks_in_training_only() -> None:
    torch.manual_seed(0)
    module = AudioClassifier(num_classes=5, target_length=ROWS * 16, num_mel_bins=COLS * 16, mask_t_prob=0.2,
                             mask_f_prob=0.2, **TINY)
    x = torch.randn(4, 1, ROWS * 16, COLS * 16)
    module.eval()
    assert _tokens_entering_blocks(module.backbone, lambda: module(x)).shape[1] == 1 + ROWS * COLS
    with torch.no_grad():
        torch.testing.assert_close(module(x), module.backbone(x))
    module.train()
    masked = _tokens_entering_blocks(module.backbone, lambda: module(x))
    assert masked.shape[1] == 1 + int(ROWS * 0.8) * int(COLS * 0.8)


@pytest.mark.parametrize("probs", [(1.0, 0.0), (0.0, -0.1)])
def test_masking_probability_out_of_range_is_an_error(probs: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="mask_t_prob and mask_f_prob"):
        forward_with_patch_masking(_tiny_vit(), torch.randn(1, 1, ROWS * 16, COLS * 16), *probs)
