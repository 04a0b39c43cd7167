"""Bad input at scale-out time: foreign or wrong-architecture checkpoints, missing files, changed aux files."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from _scale_utils import QUIET_TRAINER, TINY_IMAGE_MODEL, TensorDataModule, random_split, save_aux, train_image_checkpoint
from conftest import make_vit
from Image.model import ImageClassifier
from pathway.checkpoint import CheckpointError
from pathway.export import export_checkpoint


def image_model(**kwargs) -> ImageClassifier:
    return ImageClassifier(**{**TINY_IMAGE_MODEL, "num_classes": 3, **kwargs})


def test_target_of_another_width_names_keys_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "wide.pt"
    torch.save(make_vit(embed_dim=48, num_heads=2).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"wide\.pt: \d+ shape mismatch.*checkpoint \(1, 1, 48\) vs model \(1, 1, 32\)"):
        image_model(target_ckpt=str(path))


def test_target_of_another_model_family_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "layer1.0.bn1.weight": torch.ones(8),
                "fc.weight": torch.zeros(3, 8)}, path)
    with pytest.raises(CheckpointError, match="resnet.pt.*none of its 3 keys match the model"):
        image_model(target_ckpt=str(path))


def test_audio_patch_embed_as_image_target_names_key_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "audio_vit.pt"  # 1-channel spectrogram patches
    torch.save(make_vit(in_chans=1).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"audio_vit\.pt.*patch_embed\.proj\.weight: checkpoint \(32, 1, 8, 8\) "
                                              r"vs model \(32, 3, 8, 8\)"):
        image_model(target_ckpt=str(path))


def test_aux_of_another_depth_is_rejected(tmp_path: Path) -> None:
    aux = save_aux(tmp_path / "deep.pt", depth=3)
    with pytest.raises(CheckpointError, match="depth mismatch.*2 blocks.*3"):
        image_model(aux_ckpts=[str(aux)])


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nowhere.pt: checkpoint file not found"):
        image_model(target_ckpt=str(tmp_path / "nowhere.pt"))
    with pytest.raises(CheckpointError, match="gone.ckpt: checkpoint file not found"):
        export_checkpoint(tmp_path / "gone.ckpt", tmp_path / "out")
    plain = tmp_path / "plain.pt"
    torch.save(make_vit().state_dict(), plain)
    with pytest.raises(CheckpointError, match="plain.pt: not a Lightning checkpoint"):
        export_checkpoint(plain, tmp_path / "out")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("bad_aux")
    aux = save_aux(folder / "aux.pt")
    train_image_checkpoint(folder / "model.ckpt", aux, steps=1, aux_trainable=False)  # aux stored by reference
    return folder / "model.ckpt", aux


def test_aux_missing_at_export(trained, tmp_path: Path) -> None:
    ckpt, aux = trained
    moved = tmp_path / "moved.pt"
    aux.rename(moved)
    try:
        with pytest.raises(CheckpointError, match=rf"{aux.name} \(sha256 [0-9a-f]{{64}}\) is missing.*merged"):
            export_checkpoint(ckpt, tmp_path / "out")
    finally:
        moved.rename(aux)


def test_changed_aux_fails_export_and_resume(trained, tmp_path: Path) -> None:
    ckpt, aux = trained
    original = aux.read_bytes()
    save_aux(aux, seed=999)  # same path, other weights: the pathway would silently compute something else
    try:
        with pytest.raises(CheckpointError, match="aux.pt changed since this checkpoint was written"):
            export_checkpoint(ckpt, tmp_path / "out")
        model = image_model(aux_ckpts=[str(aux)], lr=1e-3)
        trainer = L.Trainer(max_steps=2, enable_checkpointing=False, **QUIET_TRAINER)
        with pytest.raises(CheckpointError, match="aux.pt changed since this checkpoint was written"):
            trainer.fit(model, TensorDataModule(random_split(8), batch_size=4), ckpt_path=str(ckpt))
    finally:
        aux.write_bytes(original)
    export_checkpoint(ckpt, tmp_path / "out")  # the original file exports again
