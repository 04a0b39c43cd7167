"""2-process DDP (gloo, CPU): a resumed run is the run that was not interrupted, bit for bit, with every random
augmentation on and a loader worker per rank, stopped at an epoch's end or by SIGTERM to rank 0 mid-epoch (exit 143):
each rank gets back its own random state and data position.  Marked ``launch`` (CLI processes, ~1 minute)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from _scale_utils import assert_same_training_state, augmented_fit_args, save_aux
from Image.synthetic import make_image_dataset
from pathway.resume import EXIT_SIGTERM, resolve_last_checkpoint
from test_launch_ddp_demos import run_watched

pytestmark = pytest.mark.launch

DDP = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
EPOCHS = 3  # 12 images / (2 ranks x batch 2): 3 steps per epoch


def _fit(tmp: Path, run: str, *extra: str, expect: int = 0) -> None:
    args = augmented_fit_args(tmp, tmp / "data", tmp / "aux.pt", run, EPOCHS)
    run_watched([sys.executable, "-m", "Image", *args, *DDP, *extra], tmp, expect=expect)


@pytest.mark.parametrize("stop", ["epoch_end", "sigterm_mid_epoch"])
def test_ddp_resumed_run_equals_the_uninterrupted_run(stop: str, tmp_path: Path) -> None:
    make_image_dataset(tmp_path / "data", classes=3, per_class=4)
    save_aux(tmp_path / "aux.pt")
    _fit(tmp_path, "reference")
    if stop == "epoch_end":
        _fit(tmp_path, stop, "--trainer.callbacks+=_scale_utils.StopAfterEpoch", "--trainer.callbacks.epoch=1")
    else:
        _fit(tmp_path, stop, "--trainer.callbacks+=_scale_utils.SigtermAtStep", "--trainer.callbacks.step=4",
             expect=EXIT_SIGTERM)
    interrupted = torch.load(resolve_last_checkpoint(str(tmp_path / stop)), weights_only=True)
    assert (interrupted["epoch"], interrupted["global_step"]) == ((1, 6) if stop == "epoch_end" else (1, 5))
    _fit(tmp_path, stop, "--ckpt_path", "last")
    assert_same_training_state(Path(resolve_last_checkpoint(str(tmp_path / stop))),
                               Path(resolve_last_checkpoint(str(tmp_path / "reference"))))
