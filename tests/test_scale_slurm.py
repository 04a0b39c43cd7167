"""The SLURM template: its srun command (run through bash with a stand-in ``srun`` that prints its arguments),
built into a Trainer under faked SLURM variables, gives Lightning the right world size, ranks, node count,
accelerator and auto-requeue (no process group is started); every config in the repository runs through the entry
point the template picks for it."""
from __future__ import annotations

import os
import runpy
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from lightning.pytorch.plugins.environments import SLURMEnvironment

from pathway.checkpoint_io import AtomicCheckpointIO

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "scripts" / "slurm" / "train.sbatch"
FAKE_SLURM = {
    "SLURM_NTASKS": "16", "SLURM_NTASKS_PER_NODE": "8", "SLURM_NNODES": "2", "SLURM_PROCID": "11",
    "SLURM_LOCALID": "3", "SLURM_NODEID": "1", "SLURM_JOB_NAME": "pathway", "SLURM_JOB_ID": "4242",
    "SLURM_NODELIST": "gpu[017-018]", "SLURM_CPUS_PER_TASK": "10",
}


def template_srun_args(tmp_path: Path, config: str, env: dict[str, str], *extra: str) -> list[str]:
    """What the template passes to ``srun`` when run under ``env`` (a stand-in ``srun`` prints its arguments)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (bin_dir / "srun").chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "MODALITY"}
    result = subprocess.run(["bash", str(TEMPLATE), config, *extra], cwd=REPO, capture_output=True, text=True,
                            env={**base, **env, "PATH": f"{bin_dir}{os.pathsep}{base['PATH']}"}, check=True)
    return result.stdout.splitlines()


def fit_args(srun_args: list[str]) -> list[str]:
    return srun_args[srun_args.index("fit") + 1:]


def test_template_directives(tmp_path: Path) -> None:
    text = TEMPLATE.read_text()
    for directive in ("#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8", "#SBATCH --signal=SIGUSR1@90",
                      "#SBATCH --requeue", "exec srun"):
        assert directive in text, f"{TEMPLATE.name} lacks {directive!r}"
    args = fit_args(template_srun_args(tmp_path, "Image/configs/demo.yaml", FAKE_SLURM, "--data.root", "/d"))
    assert args[args.index("--ckpt_path") + 1] == "last"
    assert args[args.index("--trainer.devices") + 1] == "8" and args[args.index("--trainer.num_nodes") + 1] == "2"
    assert args[-2:] == ["--data.root", "/d"], "extra arguments come last, so they override the template's"


@pytest.mark.parametrize("gpus, accelerator", [(None, "cpu"), ("0", "cpu"), ("8", "gpu")])
def test_accelerator_follows_the_allocation(tmp_path: Path, gpus, accelerator: str) -> None:
    env = {**FAKE_SLURM, **({"SLURM_GPUS_ON_NODE": gpus} if gpus else {})}
    args = fit_args(template_srun_args(tmp_path, "Image/configs/demo.yaml", env))
    assert args[args.index("--trainer.accelerator") + 1] == accelerator


def print_config(module: str, config: Path, monkeypatch, capsys) -> tuple[int, str]:
    """``python -m <module> fit --config <config> --print_config`` in this process: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", [module, "fit", "--config", str(config), "--print_config"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    return exit_info.value.code or 0, capsys.readouterr().err


def test_every_config_runs_through_the_entry_point_the_template_picks(tmp_path: Path, monkeypatch, capsys) -> None:
    """Classification configs run through their folder's module (tests/test_configs.py parses each of them there);
    part segmentation configs through ``<folder>.seg``, whose parser must accept them where the folder's rejects
    them (pathway overlays are extra ``--config`` arguments after their recipe)."""
    segmentation = []
    for config in sorted(REPO.glob("*/configs/*.yaml")):
        if config.stem.endswith("_pathway"):
            continue
        srun_args = template_srun_args(tmp_path, str(config.relative_to(REPO)), FAKE_SLURM)
        module, folder = srun_args[srun_args.index("-m") + 1], config.parent.parent.name
        assert module in (folder, f"{folder}.seg"), f"{config.name}: {module}"
        if module != folder:
            segmentation.append((module, config))
    assert {c.name for _, c in segmentation} == {"demo_seg.yaml", "shapenetpart.yaml"}
    for module, config in segmentation:
        code, err = print_config(module, config, monkeypatch, capsys)
        assert code == 0, f"python -m {module} rejects {config.name}:\n{err[-2000:]}"
        assert print_config(module.removesuffix(".seg"), config, monkeypatch, capsys)[0] != 0


def test_lightning_reads_world_from_slurm(tmp_path: Path, monkeypatch) -> None:
    from Image.datamodule import ImageDataModule
    from Image.model import ImageClassifier
    from Image.synthetic import make_image_dataset
    from pathway.cli import run_cli

    for name in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_SLURM.items():
        monkeypatch.setenv(name, value)
    root = make_image_dataset(tmp_path / "data", classes=2, per_class=1)
    config = tmp_path / "experiment.yaml"
    config.write_text(
        f"entry_point: Image\ntrainer:\n  default_root_dir: {tmp_path / 'run'}\n  logger: false\n"
        f"model:\n  model_name: vit_tiny_patch16_224\n"
        f"  model_kwargs: {{patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}}\n"
        f"data:\n  root: {root}\n  img_size: 16\n"
    )
    args = fit_args(template_srun_args(tmp_path, str(config), FAKE_SLURM))
    i = args.index("--ckpt_path")
    del args[i:i + 2]  # a `fit` argument; run=False builds the classes without a subcommand
    args = [str(REPO / a) if a.startswith("scripts/") else a for a in args]
    cli = run_cli(ImageClassifier, ImageDataModule, args=args, run=False)
    trainer = cli.trainer
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (16, 11, 3, 1)
    assert (trainer.num_nodes, trainer.num_devices) == (2, 8)
    assert environment.main_address == "gpu017"
    assert type(trainer.strategy).__name__ == "DDPStrategy" and trainer.accelerator.__class__.__name__ == "CPUAccelerator"
    assert environment.creates_processes_externally  # srun starts the tasks, Lightning must not spawn more
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert trainer.strategy._timeout == timedelta(minutes=10)  # the process-group timeout of ddp_slurm.yaml
    args += ["--trainer.strategy.init_args.timeout", "0:02:30"]
    assert run_cli(ImageClassifier, ImageDataModule, args=args, run=False).trainer.strategy._timeout == timedelta(
        minutes=2, seconds=30)


def test_wrong_task_count_is_an_error(monkeypatch) -> None:
    """A template whose --ntasks-per-node disagrees with trainer.devices fails before any process group starts."""
    for name, value in {**FAKE_SLURM, "SLURM_NTASKS_PER_NODE": "4"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="ntasks-per-node=4"):
        SLURMEnvironment().validate_settings(num_devices=8, num_nodes=2)
