"""The command line refuses what would report numbers of the wrong model or run code from a file: evaluation without
trained weights, a URL or an unreadable ``--ckpt_path``, NaN outputs, settings a resumed run would silently ignore,
resubmitting a finished run, and a debug run's checkpoint that ``last`` would resume."""
from __future__ import annotations

import http.server
import json
import logging
import sys
import threading
from pathlib import Path

import pytest
import torch

from conftest import TINY_MODEL_KWARGS, make_vit
from Image.datamodule import ImageDataModule
from Image.model import ImageClassifier
from pathway.checkpoint import CheckpointError
from pathway.cli import run_cli

CONFIG = Path(__file__).resolve().parents[1] / "Image" / "configs" / "demo.yaml"


def _args(digits_root: Path, aux: Path, out: Path) -> list[str]:
    return [
        "--config", str(CONFIG), "--model.model_kwargs", json.dumps(TINY_MODEL_KWARGS),
        "--model.aux_ckpts", json.dumps([str(aux)]), "--data.root", str(digits_root), "--data.img_size", "16",
        "--data.batch_size", "8", "--data.num_workers", "0", "--trainer.default_root_dir", str(out),
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
        "--trainer.limit_predict_batches", "1", "--trainer.max_epochs", "1", "--lambda_monitor.heatmap", "false",
    ]


@pytest.fixture(scope="module")
def run(digits_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path, Path]:
    """A finished one-epoch run: (its arguments, its root folder, its last.ckpt)."""
    root = tmp_path_factory.mktemp("run")
    aux = root / "aux.pt"
    torch.save(make_vit(seed=123, num_classes=7).state_dict(), aux)
    args = _args(digits_root, aux, root / "out")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["python"])
        fit = run_cli(ImageClassifier, ImageDataModule, args=["fit", *args])
    return args, root / "out", Path(fit.trainer.checkpoint_callback.last_model_path)


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["python"])


def _cli(*args: str):
    return run_cli(ImageClassifier, ImageDataModule, args=list(args))


def _refused(capsys: pytest.CaptureFixture, *args: str) -> str:
    with pytest.raises(SystemExit) as info:
        _cli(*args)
    assert info.value.code == 2
    return " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluation_without_trained_weights_is_refused(run, tmp_path: Path, subcommand: str,
                                                       capsys: pytest.CaptureFixture) -> None:
    args, _, _ = run
    out = tmp_path / "eval"
    err = _refused(capsys, subcommand, *args, "--trainer.default_root_dir", str(out))
    assert f"{subcommand} needs trained weights: pass --ckpt_path" in err and "--model.target_ckpt" in err
    err = _refused(capsys, subcommand, *args, "--trainer.default_root_dir", str(out), "--ckpt_path", "last")
    assert f"--ckpt_path last: no checkpoint to {subcommand} under {out}" in err
    assert not out.exists()  # no predictions.csv, no log folder of a run that never happened


def test_url_ckpt_path_is_refused_before_any_request(run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The URL pickle probe: a server hands out a checkpoint whose unpickling creates a file."""
    marker = tmp_path / "pickle-ran"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    payload = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}, "x": Payload()}, payload)
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            body = payload.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/x.ckpt"
    args, _, _ = run
    try:
        for subcommand in ("fit", "validate", "test", "predict"):
            err = _refused(capsys, subcommand, *args, "--trainer.default_root_dir", str(tmp_path / "out"),
                           "--ckpt_path", url)
            assert f"--ckpt_path {url}: is a URL" in err
        assert requests == [] and not marker.exists()
    finally:
        server.shutdown()
        server.server_close()
    torch.load(payload, weights_only=False)  # the probe is real: unpickled, it runs its code
    assert marker.exists()


@pytest.mark.parametrize("content", [b"", b"hello\n", b"PK\x03\x04 a truncated zip"])
def test_unreadable_ckpt_path_names_the_file(run, tmp_path: Path, content: bytes) -> None:
    args, _, _ = run
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(content)
    for subcommand in ("fit", "validate", "test", "predict"):
        with pytest.raises(CheckpointError, match=rf"{broken}: (is empty|not a readable Lightning checkpoint)"):
            _cli(subcommand, *args, "--trainer.default_root_dir", str(tmp_path / "out"), "--ckpt_path", str(broken))


def test_checkpoint_of_another_model_is_refused(run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args, _, last = run
    checkpoint = torch.load(last, weights_only=False)
    checkpoint["pathway_module_class"] = "Point.model.PointClassifier"
    other = tmp_path / "point.ckpt"
    torch.save(checkpoint, other)
    err = _refused(capsys, "test", *args, "--ckpt_path", str(other))
    assert "was written by Point.model.PointClassifier" in err and "python -m Point test" in err


def test_non_finite_outputs_fail_evaluation_and_prediction(run, tmp_path: Path) -> None:
    args, _, last = run
    checkpoint = torch.load(last, weights_only=False)
    checkpoint["state_dict"]["backbone.blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    broken = tmp_path / "nan.ckpt"
    torch.save(checkpoint, broken)
    out = tmp_path / "out"
    for subcommand in ("validate", "test", "predict"):
        with pytest.raises(FloatingPointError, match=rf"non-finite \(weights from {broken}\); non-finite weights: "
                                                     r"\['backbone.blocks.0.mlp.fc1.weight'\]"):
            _cli(subcommand, *args, "--trainer.default_root_dir", str(out), "--ckpt_path", str(broken))
    assert not list(out.rglob("predictions.csv"))
    test = _cli("test", *args, "--trainer.default_root_dir", str(out), "--ckpt_path", str(last))  # finite: runs
    assert torch.isfinite(test.trainer.callback_metrics["test/loss"])


def test_resume_refuses_settings_it_would_ignore(run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args, out, last = run
    longer = [*args, "--trainer.max_epochs", "2"]
    for ckpt in ("last", str(last)):
        err = _refused(capsys, "fit", *longer, "--model.lr", "0.5", "--ckpt_path", ckpt)
        assert f"resumes a run with its own settings, and these differ: --model.lr 0.5 (the checkpoint's: 0.003)" in err
        err = _refused(capsys, "fit", *longer, "--model.aux_ckpts", "[]", "--ckpt_path", ckpt)
        assert "--model.aux_ckpts [] (the checkpoint's: [" in err
    assert sorted(p.name for p in (out / "lightning_logs").iterdir()) == ["version_0"]


def test_evaluation_names_ignored_settings_and_logs_the_checkpoints(run, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    args, _, last = run
    with caplog.at_level(logging.WARNING, logger="pathway.cli"):
        test = _cli("test", *args, "--trainer.default_root_dir", str(tmp_path), "--model.lr", "0.5",
                    "--model.aux_ckpts", "[]", "--ckpt_path", str(last))
    assert "test with the checkpoint's settings; ignored: " in caplog.text
    assert "--model.lr 0.5 (the checkpoint's: 0.003)" in caplog.text
    assert "--model.aux_ckpts [] (the checkpoint's: [" in caplog.text
    assert test.model.hparams.lr == 0.003 and len(test.model.hparams.aux_ckpts) == 1  # hparams.yaml tells the truth
    saved = test.trainer.loggers[0].experiment.hparams
    assert saved["lr"] == 0.003 and saved["aux_ckpts"] == test.model.hparams.aux_ckpts


def test_resubmitting_a_finished_run_says_so(run, caplog: pytest.LogCaptureFixture) -> None:
    args, out, last = run
    before = torch.load(last, weights_only=False)["global_step"]
    with caplog.at_level(logging.WARNING, logger="pathway.cli"):
        _cli("fit", *args, "--ckpt_path", "last")
    assert f"{last}: this run is finished, it reached max_epochs=1 (1 epochs done); nothing to resume" in caplog.text
    assert sorted(p.name for p in (out / "lightning_logs").iterdir()) == ["version_0"]  # no empty version folder
    assert torch.load(last, weights_only=False)["global_step"] == before


def test_fast_dev_run_leaves_nothing_to_resume(run, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    args, _, _ = run
    out = tmp_path / "debug"
    _cli("fit", *args, "--trainer.default_root_dir", str(out), "--trainer.fast_dev_run", "true")
    assert not list(out.rglob("*.ckpt"))
    with caplog.at_level(logging.INFO, logger="pathway.resume"):
        resumed = _cli("fit", *args, "--trainer.default_root_dir", str(out), "--ckpt_path", "last",
                       "--trainer.limit_val_batches", "0")
    assert "starting a new run" in caplog.text and resumed.trainer.global_step == 2


def test_evaluating_a_target_checkpoint_needs_all_of_its_weights(run, tmp_path: Path) -> None:
    args, _, _ = run
    out = ["--trainer.default_root_dir", str(tmp_path / "out")]
    complete = tmp_path / "complete.pt"  # the model exactly as configured (10 digit classes, fc_norm)
    torch.save(ImageClassifier(num_classes=10, img_size=16, model_kwargs=TINY_MODEL_KWARGS,
                               global_pool="avg").backbone.state_dict(), complete)
    test = _cli("test", *args, *out, "--model.target_ckpt", str(complete))
    assert "test/acc1" in test.trainer.callback_metrics
    headless = tmp_path / "other_head.pt"  # 7 classes: its head is not loaded, and no fc_norm
    torch.save(make_vit(seed=4, num_classes=7).state_dict(), headless)
    with pytest.raises(CheckpointError, match=rf"{headless}: test without --ckpt_path evaluates model.target_ckpt, "
                                              r"which leaves 4 weights at random init \(e\.g\. \['fc_norm"):
        _cli("test", *args, *out, "--model.target_ckpt", str(headless))
