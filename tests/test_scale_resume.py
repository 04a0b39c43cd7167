"""Kill ``python -m Image fit`` mid-epoch (SIGKILL, then SIGTERM) and restart with ``--ckpt_path last``: the run
continues from the newest checkpoint with the same step, optimizer and scheduler state and λ values."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from _scale_utils import save_aux, tiny_image_fit_config
from Image.synthetic import make_image_dataset
from pathway.resume import EXIT_SIGTERM, resolve_last_checkpoint

TESTS = Path(__file__).resolve().parent
BATCHES_PER_EPOCH = 240  # 3 classes x 160 images / batch 2


def write_config(tmp_path: Path) -> Path:
    root = make_image_dataset(tmp_path / "data", classes=3, per_class=160)
    return tiny_image_fit_config(
        tmp_path, root, save_aux(tmp_path / "aux.pt"),
        trainer=dict(accelerator="cpu", max_steps=100000, enable_progress_bar=False, num_sanity_val_steps=0,
                     limit_val_batches=2),
        model=dict(lr=5.0e-3, warmup_epochs=0.0),  # MAE's warmup runs step 0 at lr 0: λ must move from step 1
        # monitor: Lightning 2.6 defers step checkpoints until the monitored val metric exists
        checkpoint=dict(every_n_train_steps=1, monitor=None),
        lambda_monitor=dict(heatmap=False),
    )


def start_fit(config: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp_path / f"fit{time.monotonic_ns()}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "Image", "fit", "--config", str(config), *extra],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"fit exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "timed out waiting for the fit"
        time.sleep(0.05)


def dump_args(path: Path) -> list[str]:
    return ["--trainer.callbacks+=_scale_utils.DumpTrainingState", f"--trainer.callbacks.path={path}"]


def assert_resumed_from(dump_path: Path, ckpt_path: str) -> int:
    dump, ckpt = torch.load(dump_path, weights_only=False), torch.load(ckpt_path, weights_only=False)
    assert dump["global_step"] == ckpt["global_step"] > 0
    saved_opt = ckpt["optimizer_states"][0]
    assert dump["optimizer"]["state"].keys() == saved_opt["state"].keys() and saved_opt["state"]
    for key, state in saved_opt["state"].items():
        for name, value in state.items():
            assert torch.equal(dump["optimizer"]["state"][key][name], value), (key, name)
    for name in ("last_epoch", "_last_lr", "base_lrs"):
        assert dump["scheduler"][name] == ckpt["lr_schedulers"][0][name]
    saved_lambdas = {k[len("backbone."):-len(".lambdas")]: v.tolist() for k, v in ckpt["state_dict"].items()
                     if k.endswith(".lambdas")}
    assert dump["lambdas"] == saved_lambdas and any(abs(v) > 0 for lams in saved_lambdas.values() for v in lams)
    return ckpt["global_step"]


def test_sigkill_then_sigterm_then_resume(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    root = tmp_path / "run"

    first = start_fit(config, tmp_path)
    wait_for(lambda: resolve_last_checkpoint(str(root)) is not None, first)
    first.send_signal(signal.SIGKILL)  # no handler runs: whatever is on disk must be a whole checkpoint
    first.wait(30)
    killed_at = resolve_last_checkpoint(str(root))
    killed = torch.load(killed_at, weights_only=False)
    assert killed["epoch"] == 0 and 0 < killed["global_step"] < BATCHES_PER_EPOCH  # mid-epoch

    second = start_fit(config, tmp_path, "--ckpt_path", "last", *dump_args(tmp_path / "second.pt"))
    wait_for(lambda: (tmp_path / "second.pt").exists(), second)
    step_a = assert_resumed_from(tmp_path / "second.pt", killed_at)
    wait_for(lambda: torch.load(resolve_last_checkpoint(str(root)), weights_only=False)["global_step"] > step_a + 2,
             second)
    second.send_signal(signal.SIGTERM)  # Lightning stops after the batch; SigtermCheckpoint writes last.ckpt
    assert second.wait(60) == EXIT_SIGTERM  # 143: stopped, not finished
    terminated_at = resolve_last_checkpoint(str(root))
    assert Path(terminated_at).parent != Path(killed_at).parent  # a new logger version, still found

    step_b = torch.load(terminated_at, weights_only=False)["global_step"]
    assert step_b > step_a + 2
    third = start_fit(config, tmp_path, "--ckpt_path", "last", *dump_args(tmp_path / "third.pt"),
                      "--trainer.max_steps", str(step_b + 2))
    try:
        assert third.wait(120) == 0
    finally:
        if third.poll() is None:
            third.kill()
    assert assert_resumed_from(tmp_path / "third.pt", terminated_at) == step_b
    final = torch.load(resolve_last_checkpoint(str(root)), weights_only=False)
    assert final["global_step"] == step_b + 2  # continued, not restarted
