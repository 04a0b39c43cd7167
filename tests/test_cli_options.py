"""CLI defaults a user meets: the progress bar they pick (whole lines in a file), CSV + TensorBoard loggers, a refused
``--optimizer``, ``python -m pathway --help``, exported files that respect the umask, and ``predictions.csv`` from
``predict``."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from safetensors.torch import save_file

from conftest import TINY_MODEL_KWARGS
from Image.datamodule import ImageDataModule
from Image.model import ImageClassifier
from pathway.atomic import atomic_write
from pathway.cli import run_cli
from pathway.export import export_checkpoint
from pathway.progress import LineProgressBar

REPO = Path(__file__).resolve().parents[1]


def _args(digits_root: Path, aux_ckpt: Path, out: Path) -> list[str]:
    return [
        "--config", str(REPO / "Image" / "configs" / "demo.yaml"),
        "--model.model_kwargs", json.dumps(TINY_MODEL_KWARGS),
        "--model.aux_ckpts", json.dumps([str(aux_ckpt)]), "--data.root", str(digits_root), "--data.img_size", "16",
        "--data.batch_size", "8", "--data.num_workers", "0", "--trainer.default_root_dir", str(out),
        "--trainer.enable_progress_bar", "true",
    ]


def _cli(args: list[str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "argv", ["python"])
    return run_cli(ImageClassifier, ImageDataModule, args=args, run=False)


def test_progress_bar_is_the_users_choice(digits_root: Path, aux_ckpt: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    args = _args(digits_root, aux_ckpt, tmp_path)
    default = [c for c in _cli(args, monkeypatch).trainer.callbacks if isinstance(c, ProgressBar)]
    assert [type(c) for c in default] == [LineProgressBar]  # pytest's stdout is no terminal: whole lines
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    default = [c for c in _cli(args, monkeypatch).trainer.callbacks if isinstance(c, ProgressBar)]
    assert len(default) == 1 and isinstance(default[0], TQDMProgressBar)
    assert default[0]._leave  # on a terminal, one line per epoch with its val metrics stays
    rich = _cli(args + ["--trainer.callbacks+=RichProgressBar"], monkeypatch).trainer.callbacks
    assert [type(c) for c in rich if isinstance(c, ProgressBar)] == [RichProgressBar]
    off = _cli(args + ["--trainer.enable_progress_bar", "false"], monkeypatch).trainer
    assert off.progress_bar_callback is None


def test_csv_and_tensorboard_log_into_one_run_folder(digits_root: Path, aux_ckpt: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _cli(_args(digits_root, aux_ckpt, tmp_path), monkeypatch).trainer
    loggers = {type(logger): logger for logger in trainer.loggers}
    assert set(loggers) == {CSVLogger, TensorBoardLogger}
    assert Path(loggers[TensorBoardLogger].log_dir).parent == Path(loggers[CSVLogger].log_dir)
    assert Path(trainer.log_dir) == Path(loggers[CSVLogger].log_dir)
    none = _cli(_args(digits_root, aux_ckpt, tmp_path) + ["--trainer.logger", "false"], monkeypatch).trainer
    assert not none.loggers


def test_optimizer_override_is_refused(digits_root: Path, aux_ckpt: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _cli(_args(digits_root, aux_ckpt, tmp_path) + ["--optimizer", "SGD", "--optimizer.lr", "0.1"], monkeypatch)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--optimizer would replace the model's optimizer" in err and "model.layer_decay" in err


def test_pathway_help_explains_the_commands() -> None:
    result = subprocess.run([sys.executable, "-m", "pathway", "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "export fold the pathway" in text and "python -m Image|Video|Point|Point.seg|Audio fit|validate" in text


def test_atomic_writes_respect_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        tensors = {"w": torch.zeros(2)}
        written = atomic_write(tmp_path / "model.safetensors", lambda tmp: save_file(tensors, str(tmp)))
        assert written.stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        written = atomic_write(tmp_path / "group.safetensors", lambda tmp: save_file(tensors, str(tmp)))
        assert written.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(previous)


def test_predict_writes_top_k_rows_with_files_and_labels(digits_root: Path, aux_ckpt: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    args = _args(digits_root, aux_ckpt, tmp_path) + ["--trainer.enable_progress_bar", "false",
                                                     "--trainer.limit_predict_batches", "2"]
    cli = _cli(args, monkeypatch)
    cli.trainer.predict(cli.model, datamodule=cli.datamodule)
    writer = next(c for c in cli.trainer.callbacks if type(c).__name__ == "PredictionWriter")
    assert writer.last_path is not None and writer.last_path.parent == Path(cli.trainer.log_dir)
    rows = list(csv.DictReader(open(writer.last_path)))
    assert len(rows) == 16  # 2 batches of 8, one row each
    classes = cli.datamodule.classes
    for row in rows:
        sample = Path(row["sample"])
        assert sample.is_file() and row["label"] == sample.parent.name  # the true label, by class name
        scores = [float(row[f"score_{i}"]) for i in range(1, 6)]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-5
        assert {row[f"class_{i}"] for i in range(1, 6)} <= set(classes)
    with torch.no_grad():
        cli.model.eval()
        first = cli.datamodule.predict_dataloader().dataset[0][0]
        expected = cli.model(first[None]).softmax(-1)[0]
    assert float(rows[0]["score_1"]) == pytest.approx(float(expected.max()), abs=1e-5)
    assert rows[0]["class_1"] == classes[int(expected.argmax())]


def test_last_checkpoint_is_the_last_epoch_even_without_improvement(
        digits_root: Path, aux_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # lr ~0: val/acc1 never improves after epoch 0, so Lightning alone would leave last.ckpt at epoch 0
    args = _args(digits_root, aux_ckpt, tmp_path) + [
        "--model.lr", "1e-12", "--model.min_lr", "1e-13", "--trainer.max_epochs", "3",
        "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--lambda_monitor.heatmap", "false"]
    cli = _cli(args, monkeypatch)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    callback = cli.trainer.checkpoint_callback
    assert Path(callback.best_model_path).name.startswith("best-epoch=0-val_acc1=")  # no improvement after epoch 0
    last = torch.load(callback.last_model_path, weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 3)


def test_compile_backend_compiles_the_backbone_and_keeps_checkpoint_keys(digits_root: Path, aux_ckpt: Path,
                                                                         tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._dynamo.utils import counters

    args = _args(digits_root, aux_ckpt, tmp_path) + ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"]
    eager = _cli(args, monkeypatch).model
    torch._dynamo.reset()
    counters.clear()
    cli = _cli(args + ["--model.compile_backend", "aot_eager"], monkeypatch)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert counters["stats"]["unique_graphs"] > 0, "the backbone never ran under torch.compile"
    assert set(cli.model.state_dict()) == set(eager.state_dict())
    assert float(cli.model.backbone.blocks[0].attn.qkv.lambdas.detach().abs().max()) > 0


def test_compile_mode_with_cuda_graphs_marks_every_step_and_clones_outputs(digits_root: Path, aux_ckpt: Path,
                                                                          tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA graphs (mode reduce-overhead) replay into the same memory: each batch must start a new graph step, and
    # what forward returns must outlive the next replay.  On CPU the backend ignores the mode; the hooks are tested.
    marks: list[int] = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    args = _args(digits_root, aux_ckpt, tmp_path) + ["--trainer.max_epochs", "1", "--trainer.limit_train_batches",
                                                     "2", "--trainer.limit_val_batches", "1"]
    eager = _cli(args, monkeypatch)
    eager.trainer.fit(eager.model, datamodule=eager.datamodule)
    assert marks == []
    cli = _cli(args + ["--model.compile_backend", "aot_eager", "--model.compile_mode", "reduce-overhead"],
               monkeypatch)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert len(marks) == 1 + 2 + 1  # the sanity check's validation batch, two training batches, one validation batch
    # The checkpoint exports where no compiler runs (export loads it eager, whatever mode it was trained in).
    sidecar = export_checkpoint(cli.trainer.checkpoint_callback.last_model_path, tmp_path / "export", onnx=False)
    assert (tmp_path / "export" / "model.pt2").is_file() and sidecar
    out = torch.randn(2, 3)
    for module in (eager.model, cli.model):
        module.backbone = torch.nn.Identity()
    assert eager.model(out) is out
    cloned = cli.model(out)
    assert cloned.data_ptr() != out.data_ptr() and torch.equal(cloned, out)


def test_compile_mode_needs_a_backend() -> None:
    with pytest.raises(ValueError, match="compile_mode='reduce-overhead' needs a compile_backend"):
        ImageClassifier(model_kwargs=TINY_MODEL_KWARGS, compile_mode="reduce-overhead")
