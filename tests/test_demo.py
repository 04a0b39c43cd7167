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
    assert (tmp_path / "export" / "config.json").is_file()  # timm's own loader reads the export (test_timm_export)
    assert (tmp_path / "summary.json").is_file()


def test_audio_demo_takes_the_aux_demo_data_writes(tmp_path: Path) -> None:
    """The Audio demo config (depth 2) names an aux of its depth that ``python -m demo.data`` writes."""
    import yaml

    from Audio.model import AudioClassifier
    from demo.data import AUDIO_AUX_NAME, write_random_aux
    from pathway import lambda_table

    config_path = Path(__file__).resolve().parents[1] / "Audio" / "configs" / "demo.yaml"
    assert f"demo_output/aux/{AUDIO_AUX_NAME}" in config_path.read_text()
    config = yaml.safe_load(config_path.read_text())
    aux = write_random_aux(tmp_path / AUDIO_AUX_NAME, depth=2)
    data = config["data"]
    model = AudioClassifier(**{**config["model"], "aux_ckpts": [str(aux)]}, num_classes=8,
                            target_length=data["target_length"], num_mel_bins=data["num_mel_bins"])
    assert len(lambda_table(model.backbone)) == 4 * config["model"]["depth"]
