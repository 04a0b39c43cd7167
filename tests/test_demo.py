"""README command one, shortened: the embedded demo runs end to end and its merged export reproduces the model."""
import sys
from pathlib import Path

import pytest

from demo.cross_modal import main


def test_demo_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["python"])  # LightningCLI must not read pytest's arguments
    summary = main(["--out", str(tmp_path), "--epochs", "1", "--aux-epochs", "1"])
    assert summary["image merged test acc1"] == pytest.approx(summary["image pathway test acc1"], abs=1e-6)
    assert summary["mean |lambda|"] > 0  # the pathway trained
    assert (tmp_path / "export" / "model.safetensors").is_file() and (tmp_path / "export" / "model.pt2").is_file()
    assert (tmp_path / "summary.json").is_file()
