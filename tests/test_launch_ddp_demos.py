"""Each modality's demo config, run the way users run it: ``python -m <Modality> fit`` on 2 processes (gloo DDP on
CPU) with every default on (loggers, λ monitor, merged export, checkpointing, progress bar), then ``validate``,
``test`` and ``predict`` on the result and ``python -m pathway export`` of it.

Every command runs in its own process group under a watchdog: a run that exceeds its time is killed as a whole
(``os.killpg``) and fails the test, so a DDP deadlock fails CI instead of hanging it.  Data and aux checkpoints are
written tiny, at the paths the demo configs read (relative to the working folder), so the configs run unchanged
apart from sizes and ``limit_*_batches``.
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
DDP = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"]
SHORT = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
         "--trainer.limit_predict_batches", "2", "--trainer.log_every_n_steps", "1", "--trainer.num_sanity_val_steps", "0",
         "--trainer.enable_progress_bar", "true"]
RUN_TIMEOUT_S = 150.0


def run_watched(cmd: list[str], cwd: Path, timeout: float = RUN_TIMEOUT_S) -> str:
    """Run ``cmd`` in a new session; on timeout kill its whole process group (DDP ranks included) and fail."""
    log_path = cwd / f"cmd-{time.monotonic_ns()}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            timed_out = proc.poll() is None
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # also reaps DDP ranks left behind by a rank that exited
            except ProcessLookupError:
                pass
            proc.wait()
    output = log_path.read_text(errors="replace")
    shown = " ".join(cmd[1:])
    if timed_out:
        pytest.fail(f"`{shown}` did not finish within {timeout:.0f} s (deadlock?); killed. Output:\n{output[-6000:]}")
    assert proc.returncode == 0, f"`{shown}` exited with {proc.returncode}:\n{output[-6000:]}"
    return output


def tiny_vit(path: Path, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int) -> Path:
    """An auxiliary model: a seeded tiny timm ViT of the demo's width and depth."""
    torch.manual_seed(1)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=img_size, patch_size=patch_size,
                            embed_dim=embed_dim, depth=depth, num_heads=num_heads, num_classes=5)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    save_file(state, str(path)) if path.suffix == ".safetensors" else torch.save(state, path)
    return path


def image_data(out: Path) -> None:
    from _scale_utils import make_imagefolder

    make_imagefolder(out / "data" / "digits", classes=3, per_class=8, size=16)
    tiny_vit(out / "aux" / "audio_vit.safetensors", img_size=16, patch_size=4, embed_dim=64, depth=4, num_heads=4)


@dataclass
class Demo:
    module: str
    config: str
    make_data: Callable[[Path], None]
    overrides: list[str] = field(default_factory=list)


DEMOS = {
    "image": Demo("Image", "Image/configs/demo.yaml", image_data, ["--data.batch_size", "4"]),
}


@pytest.mark.parametrize("name", list(DEMOS))
def test_demo_config_on_two_processes(name: str, tmp_path: Path) -> None:
    demo = DEMOS[name]
    demo.make_data(tmp_path / "demo_output")
    cli = [sys.executable, "-m", demo.module]
    config = ["--config", str(REPO / demo.config), *demo.overrides]
    run_watched([*cli, "fit", *config, *DDP, *SHORT, "--trainer.max_epochs", "2"], tmp_path)
