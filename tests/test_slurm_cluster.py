"""A real one-node SLURM cluster in the loop: ``scripts/slurm/train.sbatch`` runs 2 tasks of gloo DDP on CPU,
``scancel --signal=USR1`` makes Lightning write ``hpc_ckpt_1.ckpt`` and requeue the job, and the requeued job
resumes from the saved step and ends with the weights of an uninterrupted run, bit for bit, random augmentation on.

It installs and starts SLURM (``scripts/slurm/local_cluster.sh``: root and apt, or a cluster already up) and takes
a few minutes, so it runs only when asked: ``PATHWAY_SLURM_TEST=1`` (``.ci/run`` does, in its own step).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Callable, Optional

import lightning as L
import pytest
import torch

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
EPOCHS, PAUSE_EPOCH = 4, 2  # one optimizer step per epoch: 2 classes x 2 images, batch 2 on each of 2 tasks
JOB_TIMEOUT = 300.0  # per phase (start to pause, requeue, resumed run); a deadlock fails here, never hangs CI


class PauseForSignal(L.Callback):
    """Holds the job's first run at the start of epoch ``epoch`` until SLURM's SIGTERM arrives (or ``timeout``),
    so the requeue signal lands at a known point: every rank idle between steps, no collective in flight.  The
    SIGTERM still reaches the run's own handler, which then stops the run after this epoch's step."""

    def __init__(self, epoch: int, marker_dir: str, timeout: float = JOB_TIMEOUT) -> None:
        self.epoch, self.marker_dir, self.timeout = epoch, marker_dir, timeout

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != self.epoch or os.environ.get("SLURM_RESTART_COUNT", "0") != "0":
            return
        terminated = []
        handler = signal.getsignal(signal.SIGTERM)

        def note_and_pass_on(signum: int, frame: Optional[FrameType]) -> None:
            terminated.append(signum)
            if callable(handler):
                handler(signum, frame)

        signal.signal(signal.SIGTERM, note_and_pass_on)
        Path(self.marker_dir, f"paused.{trainer.global_rank}").touch()
        deadline = time.monotonic() + self.timeout
        while not terminated and time.monotonic() < deadline:
            time.sleep(0.1)
        signal.signal(signal.SIGTERM, handler)


def slurm_cluster() -> None:
    """Start (or find) the local cluster, or skip with the reason ``local_cluster.sh`` gives."""
    if os.environ.get("PATHWAY_SLURM_TEST") != "1":
        pytest.skip("set PATHWAY_SLURM_TEST=1 to run it (installs and starts a one-node SLURM cluster; .ci/run does)")
    setup = subprocess.run([str(REPO / "scripts" / "slurm" / "local_cluster.sh")], capture_output=True, text=True,
                           timeout=600)
    if setup.returncode == 2:
        pytest.skip(setup.stderr.strip())
    assert setup.returncode == 0, f"local_cluster.sh failed:\n{setup.stdout}\n{setup.stderr}"


def write_config(tmp_path: Path) -> Path:
    """2 classes x 2 noise images with every random augmentation on (RandAugment, random erasing, drop path,
    mixup/cutmix) and a loader worker per task: the requeued job continues the stopped job's random streams and data
    position (saved per rank in the checkpoint), so it ends with the uninterrupted job's weights, bit for bit."""
    from _scale_utils import save_aux, tiny_image_fit_config
    from Image.synthetic import make_image_dataset

    return tiny_image_fit_config(
        tmp_path, make_image_dataset(tmp_path / "data", classes=2, per_class=2), save_aux(tmp_path / "aux.pt"),
        trainer=dict(max_epochs=EPOCHS, num_sanity_val_steps=0, log_every_n_steps=1),
        model=dict(lr=5.0e-2, warmup_epochs=0.0, drop_path_rate=0.1, mixup=0.8, cutmix=1.0),
        data=dict(auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, num_workers=1),
    )


def run(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout.strip()


def wait_until(predicate: Callable[[], bool], what: str, log: Path) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            tail = log.read_text()[-4000:] if log.exists() else "(no job output yet)"
            pytest.fail(f"timed out after {JOB_TIMEOUT:.0f} s waiting for {what}; job output:\n{tail}")
        time.sleep(1)


def job_state(job: str) -> str:
    """``STATE REASON`` from squeue, or ``done`` once the job has left the queue."""
    return run("squeue", "-h", "-j", job, "-o", "%T %r") or "done"


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def test_usr1_requeues_and_resumes_to_the_same_weights(tmp_path: Path) -> None:
    slurm_cluster()
    config = write_config(tmp_path)
    out = tmp_path / "slurm.out"
    env = {**os.environ, "MODALITY": "Image", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}

    def submit(output: Path, *args: str) -> str:
        """The template as users submit it, its GPU settings overridden on the command line for a CPU-only node."""
        return subprocess.run(
            ["sbatch", "--parsable", "--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1",
             f"--output={output}", "scripts/slurm/train.sbatch", str(config), *args],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True).stdout.strip().split(";")[0]

    job = submit(out, "--trainer.callbacks+=test_slurm_cluster.PauseForSignal",
                 f"--trainer.callbacks.epoch={PAUSE_EPOCH}", f"--trainer.callbacks.marker_dir={tmp_path}")
    reference_job = ""
    try:
        wait_until(lambda: job_state(job) == "done" or all((tmp_path / f"paused.{r}").exists() for r in (0, 1)),
                   f"both tasks of job {job} to reach epoch {PAUSE_EPOCH}", out)
        assert job_state(job).startswith("RUNNING"), f"job {job} ended before epoch {PAUSE_EPOCH}:\n{out.read_text()}"

        run("scancel", "--signal=USR1", job)
        # Lightning saves, runs `scontrol requeue`, and the job waits out SLURM's requeue delay.
        wait_until(lambda: job_state(job) == "PENDING BeginTime", f"job {job} to be requeued", out)
        hpc = tmp_path / "run" / "hpc_ckpt_1.ckpt"
        assert hpc.is_file(), f"no {hpc}:\n{out.read_text()}"
        saved_step = torch.load(hpc, map_location="cpu", weights_only=False)["global_step"]
        assert saved_step == PAUSE_EPOCH
        assert "Restarts=1" in run("scontrol", "show", "job", job)

        # The uninterrupted run, the same 2 tasks (same gradient all-reduce); it starts after the requeued job.
        reference_job = submit(tmp_path / "reference.out", "--trainer.default_root_dir", str(tmp_path / "reference"))
        run("scontrol", "update", f"JobId={job}", "StartTime=now")
        wait_until(lambda: job_state(job) == "done", f"requeued job {job} to finish", out)
        wait_until(lambda: job_state(reference_job) == "done", "the uninterrupted job to finish",
                   tmp_path / "reference.out")
    finally:
        for submitted in filter(None, (job, reference_job)):
            subprocess.run(["scancel", submitted], capture_output=True, timeout=60)
    log = out.read_text()
    assert "Requeued SLURM job" in log, log[-4000:]
    # The requeued job resumes from the newest checkpoint of the first run: hpc_ckpt_1 or, when the SIGTERM of
    # the requeue came after one more step, the last.ckpt written then.
    assert log.count("Restored all states from the checkpoint at ") == 1, log[-4000:]
    resumed_from = Path(log.split("Restored all states from the checkpoint at ")[1].split()[0])
    first_run = [hpc, *(tmp_path / "run").glob("lightning_logs/version_0/checkpoints/last.ckpt")]
    assert resumed_from == max(first_run, key=lambda p: p.stat().st_mtime)
    resumed_step = torch.load(resumed_from, map_location="cpu", weights_only=False)["global_step"]
    assert resumed_step in (saved_step, saved_step + 1)
    last = tmp_path / "run" / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == EPOCHS, \
        "the resumed run lost or repeated steps"

    reference = weights(tmp_path / "reference" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    resumed = weights(last)
    assert reference.keys() == resumed.keys()
    lambdas = [v for k, v in resumed.items() if k.endswith(".lambdas")]
    assert lambdas and not all(torch.equal(v, torch.zeros_like(v)) for v in lambdas), "λ never moved from 0"
    for name, value in reference.items():
        assert torch.equal(resumed[name], value), f"{name}: the resumed job differs from the uninterrupted one"
