"""SIGTERM during a 2-process DDP fit (gloo, CPU) with the default callbacks ends the run within a bounded time, with
a checkpoint of the step where all ranks stopped: sent to the whole process group (``timeout``, SLURM) or to rank 0
alone (``kill <pid>``).  The signal comes in the second epoch, after the first epoch's end hooks (λ heatmap,
checkpoints), where a rank-zero-only collective used to deadlock the run so that no signal could end it.  Each rank
has a loader worker, which a group SIGTERM reaches too.  The run exits 143: stopped, not finished."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _scale_utils import save_aux, tiny_image_fit_config
from Image.synthetic import make_image_dataset
from pathway.resume import EXIT_SIGTERM

REPO = Path(__file__).resolve().parents[1]
STOP_WITHIN_S = 60.0


def write_config(tmp_path: Path) -> Path:
    root = make_image_dataset(tmp_path / "data", classes=3, per_class=120)
    return tiny_image_fit_config(
        tmp_path, root, save_aux(tmp_path / "aux.pt"),
        trainer=dict(accelerator="cpu", devices=2, strategy="ddp", max_epochs=50, log_every_n_steps=1,
                     limit_val_batches=1),
        model=dict(lr=1.0e-3),
        data=dict(num_workers=1),  # a group SIGTERM reaches the loader workers too: they must leave it to their rank
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("target", ["group", "rank0"])
def test_sigterm_stops_ddp_fit_with_a_checkpoint(target: str, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    log_path = tmp_path / "fit.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "Image", "fit", "--config", str(config)], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "run").rglob("last.ckpt")):  # written at epoch 0's end
            assert proc.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "epoch 1 did not start:\n" + log_path.read_text()[-4000:]
            time.sleep(0.2)
        time.sleep(1.0)  # some steps into epoch 1, far from its end (90 steps of ~0.05-0.2 s)
        if target == "group":
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"SIGTERM ({target}) did not end the DDP run within {STOP_WITHIN_S:.0f} s:\n"
                        + log_path.read_text(errors="replace")[-4000:])
        output = log_path.read_text(errors="replace")
        assert code == EXIT_SIGTERM, output[-4000:]  # 143: a preempted job must not look finished
        stop = time.monotonic() + 20
        while _group_alive(proc.pid) and time.monotonic() < stop:  # rank 1 ends too
            time.sleep(0.2)
        assert not _group_alive(proc.pid), "a DDP rank outlived the run"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "SIGTERM: saved" in output
    (last,) = (tmp_path / "run").rglob("last.ckpt")
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["epoch"] == 1 and 90 < checkpoint["global_step"] < 180  # mid-epoch: 360 samples / (2 x 2)
