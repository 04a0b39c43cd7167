"""What a command line says before anything trains: a pathway overlay alone or before its recipe is refused (it
would silently run code defaults or the baseline), a config of another entry point names the right one, errors come
first and short, ``--help`` is titled by the command, and every entry point sets the CPU-thread environment before
torch loads.  The SLURM template takes the entry point from the config itself."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from Image.datamodule import ImageDataModule
from Image.model import ImageClassifier
from pathway.checkpoint import CheckpointError
from pathway.cli import run_cli
from pathway.entry import errors_as_messages
from Point.datamodule import PointDataModule
from Point.model import PointClassifier

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = sorted(REPO.glob("*/configs/*_pathway.yaml"))
TEMPLATE = REPO / "scripts" / "slurm" / "train.sbatch"
ENTRY_FILES = {"Image": "Image/__main__.py", "Video": "Video/__main__.py", "Point": "Point/__main__.py",
               "Point.seg": "Point/seg.py", "Audio": "Audio/__main__.py", "demo": "demo/__main__.py",
               "pathway": "src/pathway/__main__.py"}


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["python"])


def _refused(args: list[str], capsys: pytest.CaptureFixture, model=ImageClassifier, data=ImageDataModule,
             command: str = "Image") -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(model, data, args=args, command=command)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: "), f"the error comes first, not after the usage text:\n{err[:500]}"
    assert len(err.splitlines()) <= 3, err
    return err


def _entry(overlay: Path) -> str:
    return yaml.safe_load((overlay.parent / yaml.safe_load(overlay.read_text())["overlay_of"]).read_text())[
        "entry_point"]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_alone_or_first_is_refused_naming_the_command(overlay: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = overlay.with_name(overlay.name.replace("_pathway", ""))
    command = _entry(overlay)
    right = f"python -m {command} fit --config {recipe} --config {overlay}"
    alone = _refused(["fit", "--config", str(overlay), "--data.root", "/data"], capsys, command=command)
    assert "alone it trains on code defaults" in alone and right in alone
    first = _refused(["fit", "--config", str(overlay), "--config", str(recipe)], capsys, command=command)
    assert "comes before it" in first and right in first


def test_recipe_then_overlay_is_the_pathway_recipe(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The right order gives the recipe's settings plus the pathway, also with a copy of the recipe under its own
    name elsewhere (a user's edited copy), and the printed config is whole: usable alone."""
    overlay = REPO / "Image" / "configs" / "in1k_vitb_pathway.yaml"
    recipe = tmp_path / "in1k_vitb.yaml"
    shutil.copy(REPO / "Image" / "configs" / "in1k_vitb.yaml", recipe)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(ImageClassifier, ImageDataModule, command="Image",
                args=["fit", "--config", str(recipe), "--config", str(overlay), "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["aux_ckpts"] and config["model"]["layer_decay"] == 0.65
    assert config["model"]["mixup"] == 0.8 and config["trainer"]["max_epochs"] == 100
    assert config["overlay_of"] is None
    printed = tmp_path / "printed.yaml"
    printed.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(ImageClassifier, ImageDataModule, command="Image",
                args=["fit", "--config", str(printed), "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err


def test_config_of_another_entry_point_names_it(capsys: pytest.CaptureFixture) -> None:
    config = REPO / "Point" / "configs" / "demo_seg.yaml"
    err = _refused(["fit", "--config", str(config)], capsys, PointClassifier, PointDataModule, "Point")
    assert f"run python -m Point.seg fit --config {config}" in err


def test_parse_error_is_one_line_before_a_short_usage(capsys: pytest.CaptureFixture) -> None:
    err = _refused(["fit", "--config", str(REPO / "Image" / "configs" / "demo.yaml"), "--model.layer_decay", "abc"],
                   capsys)
    assert "model.layer_decay" in err.splitlines()[0] + err.splitlines()[1]
    assert "python -m Image fit --help" in err


def test_help_is_titled_by_the_command(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        run_cli(PointClassifier, PointDataModule, args=["fit", "--help"], command="Point.seg")
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m Point.seg") and "__main__" not in out


def test_project_errors_print_one_message(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATHWAY_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info, errors_as_messages():
        raise CheckpointError("runs/x/last.ckpt: truncated")
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.splitlines()[0] == "error: runs/x/last.ckpt: truncated"
    with pytest.raises(ZeroDivisionError), errors_as_messages():  # a bug keeps its traceback
        raise ZeroDivisionError
    monkeypatch.setenv("PATHWAY_TRACEBACK", "1")
    with pytest.raises(CheckpointError), errors_as_messages():
        raise CheckpointError("runs/x/last.ckpt: truncated")


def test_entry_point_reports_a_bad_checkpoint_in_one_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"garbage")
    env = {k: v for k, v in os.environ.items() if k != "PATHWAY_TRACEBACK"}
    result = subprocess.run(
        [sys.executable, "-m", "Image", "validate", "--config", "Image/configs/demo.yaml", "--data.root",
         str(tmp_path), "--ckpt_path", str(bad)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {bad}: not a readable Lightning checkpoint"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) <= 3


@pytest.mark.parametrize("entry", sorted(ENTRY_FILES))
def test_entry_point_sets_the_thread_environment_before_torch(entry: str) -> None:
    """The first import of every entry point is ``pathway.entry``, and that import loads no torch (OpenMP reads
    ``OMP_WAIT_POLICY`` once, when torch loads it)."""
    tree = ast.parse((REPO / ENTRY_FILES[entry]).read_text())
    imports = [node.names[0].name if isinstance(node, ast.Import) else node.module for node in tree.body
               if isinstance(node, (ast.Import, ast.ImportFrom))]
    first = next(name for name in imports if name.split(".")[0] not in sys.stdlib_module_names)
    assert first == "pathway.entry", f"{ENTRY_FILES[entry]} imports {first} before pathway.entry"
    probe = "import sys, os, pathway.entry; print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "PASSIVE"]


def test_thread_environment_keeps_the_users_choice() -> None:
    probe = "import os, pathway.entry; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["ACTIVE"]
    late = "import os, torch, pathway.entry; print(os.environ.get('OMP_WAIT_POLICY'))"  # too late to matter
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", late], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["None"]


def _sbatch(tmp_path: Path, config: Path, **env: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (bin_dir / "srun").chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "MODALITY"}
    slurm = {"SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_CPUS_PER_TASK": "1"}
    return subprocess.run(["bash", str(TEMPLATE), str(config)], cwd=REPO, capture_output=True, text=True,
                          env={**base, **slurm, **env, "PATH": f"{bin_dir}{os.pathsep}{base['PATH']}"})


def test_sbatch_takes_the_entry_point_from_the_config(tmp_path: Path) -> None:
    copy = tmp_path / "h3" / "configs" / "my_parts.yaml"  # outside the repo, in a folder named like no module
    copy.parent.mkdir(parents=True)
    shutil.copy(REPO / "Point" / "configs" / "shapenetpart.yaml", copy)
    srun = _sbatch(tmp_path, copy).stdout.splitlines()
    assert srun[srun.index("-m") + 1] == "Point.seg"
    assert _sbatch(tmp_path, copy, MODALITY="Point").stdout.splitlines()[srun.index("-m") + 1] == "Point"
    bare = tmp_path / "h3" / "configs" / "mine.yaml"
    bare.write_text("trainer:\n  max_epochs: 1\n")
    result = _sbatch(tmp_path, bare)
    assert result.returncode != 0 and "MODALITY=" in result.stderr and not result.stdout
    result = _sbatch(tmp_path, REPO / "Image" / "configs" / "in1k_vitb_pathway.yaml")
    assert result.returncode != 0 and "give its recipe first" in result.stderr
