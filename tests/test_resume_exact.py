"""A resumed run is the run that was not interrupted, bit for bit (weights, λ, optimizer and scheduler state, val
metrics), with every random augmentation on and a loader worker: stopped at an epoch's end, or by SIGTERM in the
middle of an epoch (which also exits 143), then ``fit --ckpt_path last``.  One process here; 2-process DDP in
tests/test_launch_resume_ddp.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _scale_utils import assert_same_training_state, augmented_fit_args, save_aux
from Image.datamodule import ImageDataModule
from Image.model import ImageClassifier
from Image.synthetic import make_image_dataset
from pathway.cli import run_cli
from pathway.resume import EXIT_SIGTERM, resolve_last_checkpoint

EPOCHS = 3  # 12 images / batch 2: 6 steps per epoch


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("resume")
    root, aux = make_image_dataset(tmp / "data", classes=3, per_class=4), save_aux(tmp / "aux.pt")
    run_cli(ImageClassifier, ImageDataModule, args=augmented_fit_args(tmp, root, aux, "reference", EPOCHS))
    return tmp, [str(root), str(aux)]


def _last(folder: Path) -> Path:
    return Path(resolve_last_checkpoint(str(folder)))


@pytest.mark.parametrize("stop", ["epoch_end", "sigterm_mid_epoch"])
def test_resumed_run_equals_the_uninterrupted_run(stop: str, uninterrupted: tuple[Path, list[str]]) -> None:
    tmp, (root, aux) = uninterrupted
    args = augmented_fit_args(tmp, Path(root), Path(aux), stop, EPOCHS)
    if stop == "epoch_end":
        run_cli(ImageClassifier, ImageDataModule,
                args=[*args, "--trainer.callbacks+=_scale_utils.StopAfterEpoch", "--trainer.callbacks.epoch=1"])
    else:
        with pytest.raises(SystemExit) as stopped:
            run_cli(ImageClassifier, ImageDataModule,
                    args=[*args, "--trainer.callbacks+=_scale_utils.SigtermAtStep", "--trainer.callbacks.step=8"])
        assert stopped.value.code == EXIT_SIGTERM == 143
    interrupted = torch.load(_last(tmp / stop), weights_only=True)
    assert (interrupted["epoch"], interrupted["global_step"]) == ((1, 12) if stop == "epoch_end" else (1, 9))
    run_cli(ImageClassifier, ImageDataModule, args=[*args, "--ckpt_path", "last"])
    assert_same_training_state(_last(tmp / stop), _last(tmp / "reference"))
