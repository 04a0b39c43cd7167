"""The SLURM templates: their srun command, built into a Trainer under faked SLURM variables, gives Lightning the
right world size, ranks, node count and auto-requeue (no process group is started)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from lightning.pytorch.plugins.environments import SLURMEnvironment

from pathway.checkpoint_io import AtomicCheckpointIO

SLURM_DIR = Path(__file__).resolve().parents[1] / "scripts" / "slurm"
FAKE_SLURM = {
    "SLURM_NTASKS": "16", "SLURM_NTASKS_PER_NODE": "8", "SLURM_NNODES": "2", "SLURM_PROCID": "11",
    "SLURM_LOCALID": "3", "SLURM_NODEID": "1", "SLURM_JOB_NAME": "pathway", "SLURM_JOB_ID": "4242",
    "SLURM_NODELIST": "gpu[017-018]", "SLURM_CPUS_PER_TASK": "10",
}


def template_fit_args(template: Path, config: Path, env: dict[str, str]) -> list[str]:
    """The arguments after ``fit`` of the template's ``exec srun`` command, with its variables substituted."""
    text = template.read_text().replace("\\\n", " ")
    command = next(line for line in text.splitlines() if line.startswith("exec srun"))
    words = shlex.split(command)
    args = words[words.index("fit") + 1:]
    values = {"CONFIG": str(config), **env}
    args = [re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], a) for a in args if a != "$@"]
    return [str(SLURM_DIR.parents[1] / a) if a.startswith("scripts/") else a for a in args]


@pytest.mark.parametrize("template", ["train_1node_8gpu.sbatch", "train_multinode_8gpu.sbatch"])
def test_template_directives(template: str) -> None:
    text = (SLURM_DIR / template).read_text()
    for directive in ("#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8", "#SBATCH --signal=SIGUSR1@90",
                      "#SBATCH --requeue", "exec srun"):
        assert directive in text, f"{template} lacks {directive!r}"
    args = template_fit_args(SLURM_DIR / template, Path("x.yaml"), FAKE_SLURM)
    assert args[args.index("--ckpt_path") + 1] == "last"
    assert "--trainer.devices" in args and "--trainer.num_nodes" in args


@pytest.mark.parametrize("template", ["train_1node_8gpu.sbatch", "train_multinode_8gpu.sbatch"])
def test_lightning_reads_world_from_slurm(template: str, tmp_path: Path, monkeypatch) -> None:
    from _scale_utils import make_imagefolder

    from Image.datamodule import ImageDataModule
    from Image.model import ImageClassifier
    from pathway.cli import run_cli

    for name in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_SLURM.items():
        monkeypatch.setenv(name, value)
    root = make_imagefolder(tmp_path / "data", classes=2, per_class=1)
    config = tmp_path / "experiment.yaml"
    config.write_text(
        f"trainer:\n  default_root_dir: {tmp_path / 'run'}\n  logger: false\n"
        f"model:\n  model_name: vit_tiny_patch16_224\n  img_size: 16\n"
        f"  model_kwargs: {{patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}}\n"
        f"data:\n  root: {root}\n  img_size: 16\n"
    )
    args = template_fit_args(SLURM_DIR / template, config, FAKE_SLURM)
    i = args.index("--ckpt_path")
    del args[i:i + 2]  # a `fit` argument; run=False builds the classes without a subcommand
    cli = run_cli(ImageClassifier, ImageDataModule, args=[*args, "--trainer.accelerator", "cpu"], run=False)
    trainer = cli.trainer
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (16, 11, 3, 1)
    assert (trainer.num_nodes, trainer.num_devices) == (2, 8)
    assert environment.main_address == "gpu017"
    assert type(trainer.strategy).__name__ == "DDPStrategy"
    assert environment.creates_processes_externally  # srun starts the tasks, Lightning must not spawn more
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_wrong_task_count_is_an_error(monkeypatch) -> None:
    """A template whose --ntasks-per-node disagrees with trainer.devices fails before any process group starts."""
    for name, value in {**FAKE_SLURM, "SLURM_NTASKS_PER_NODE": "4"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="ntasks-per-node=4"):
        SLURMEnvironment().validate_settings(num_devices=8, num_nodes=2)
