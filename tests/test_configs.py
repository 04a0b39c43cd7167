"""Every shipped config parses through its modality's CLI, alone (recipes, demos) or as recipe + pathway overlay, so
none can rot; overlays set only the pathway; each header's effective-batch arithmetic matches the config."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from Audio.datamodule import AudioDataModule
from Audio.model import AudioClassifier
from Image.datamodule import ImageDataModule
from Image.model import ImageClassifier
from pathway.cli import run_cli
from Point.datamodule import PointDataModule, ShapeNetPartDataModule
from Point.model import PointClassifier, PointSegmenter
from Video.datamodule import VideoDataModule
from Video.model import VideoClassifier

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(ROOT.glob("*/configs/*.yaml"))
OVERLAYS = [p for p in CONFIGS if p.stem.endswith("_pathway")]
RECIPES = [p for p in CONFIGS if p not in OVERLAYS]
# What a pathway overlay may set: everything else comes from its recipe, so the two runs cannot drift apart.
OVERLAY_KEYS = {"overlay_of", "trainer.default_root_dir", "model.aux_ckpts", "model.aux_trainable", "model.lambda_init"}
EFFECTIVE_BATCH = re.compile(r"Effective batch = .*?= (\d+) x (\d+) x (\d+) = (\d+)", re.S)


def _classes(config: Path) -> tuple[type, type, str]:
    modality = config.parent.parent.name
    if modality == "Point" and config.stem.startswith(("shapenetpart", "demo_seg")):
        return PointSegmenter, ShapeNetPartDataModule, "val/ins_miou"
    return {
        "Image": (ImageClassifier, ImageDataModule, "val/acc1"),
        "Video": (VideoClassifier, VideoDataModule, "val/acc1"),
        "Point": (PointClassifier, PointDataModule, "val/acc1"),
        "Audio": (AudioClassifier, AudioDataModule, "val/acc1"),
    }[modality]


def _print_config(configs: list[Path], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setattr(sys, "argv", ["python"])
    model_class, data_class, monitor = _classes(configs[0])
    args = ["fit"] + [a for c in configs for a in ("--config", str(c))] + ["--print_config"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(model_class, data_class, args=args, monitor=monitor)
    out = capsys.readouterr()
    assert exit_info.value.code in (0, None), f"{[c.name for c in configs]}: {out.err[-3000:]}"
    return yaml.safe_load(out.out)


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_every_modality_ships_configs() -> None:
    assert {p.parent.parent.name for p in RECIPES} == {"Image", "Video", "Point", "Audio"}
    assert len(OVERLAYS) >= 7


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_recipe_parses_and_states_its_effective_batch(recipe: Path, capsys, monkeypatch) -> None:
    config = _print_config([recipe], capsys, monkeypatch)
    entry = "Point.seg" if _classes(recipe)[0] is PointSegmenter else recipe.parent.parent.name
    assert config["entry_point"] == entry, f"{recipe.name}: entry_point (read by train.sbatch) must be {entry}"
    trainer = config["trainer"]
    as_written = (config["data"]["batch_size"] * trainer["devices"] * trainer.get("num_nodes", 1)
                  * trainer.get("accumulate_grad_batches", 1))
    assert config["model"]["recipe_batch_size"] == as_written, \
        f"{recipe.name}: model.recipe_batch_size must be the effective batch the config runs at ({as_written})"
    if recipe.stem.startswith("demo"):
        return
    assert config["model"]["aux_ckpts"] == [], f"{recipe.name}: a recipe alone is the baseline"
    stated = EFFECTIVE_BATCH.search(recipe.read_text())
    assert stated, f"{recipe.name}: the header must state 'Effective batch = ... = A x B x C = N'"
    per_device, devices, accumulate, total = map(int, stated.groups())
    assert per_device == config["data"]["batch_size"], recipe.name
    assert devices == trainer["devices"] * trainer["num_nodes"], recipe.name
    assert accumulate == trainer["accumulate_grad_batches"], recipe.name
    assert total == per_device * devices * accumulate, recipe.name


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_pathway_overlay_changes_only_the_pathway(overlay: Path, capsys, monkeypatch) -> None:
    recipe = overlay.with_name(overlay.name.replace("_pathway", ""))
    assert recipe.is_file(), f"{overlay.name} has no recipe {recipe.name}"
    changed = set(_flat(yaml.safe_load(overlay.read_text())))
    assert changed <= OVERLAY_KEYS, f"{overlay.name} sets {sorted(changed - OVERLAY_KEYS)}: that belongs in the recipe"
    assert yaml.safe_load(overlay.read_text())["overlay_of"] == recipe.name, f"{overlay.name} must name its recipe"
    combined = _flat(_print_config([recipe, overlay], capsys, monkeypatch))
    assert combined["model.aux_ckpts"], overlay.name
    assert combined["overlay_of"] is None, "the combined config is a whole recipe: usable alone"
    assert combined["model.aux_trainable"] is True, f"{overlay.name}: the paper's method trains the aux weights"


@pytest.mark.parametrize("recipe", [p for p in RECIPES if p.parent.parent.name == "Point" and "demo" not in p.stem],
                         ids=lambda p: p.name)
def test_point_recipes_use_the_reference_heads(recipe: Path) -> None:
    """Point-MAE ViT-B checkpoints use 6 heads at width 768; 12 heads load without error and compute another
    function (same weight shapes), so the recipe must say 6."""
    model = yaml.safe_load(recipe.read_text())["model"]
    assert (model["embed_dim"], model["num_heads"]) == (768, 6)


@pytest.mark.parametrize("module", [PointClassifier, PointSegmenter])
def test_point_modules_default_to_the_reference_heads(module: type) -> None:
    parser = ArgumentParser()
    parser.add_class_arguments(module, "model")  # the defaults LightningCLI resolves (through the base classes)
    defaults = parser.get_defaults().model
    assert (defaults.embed_dim, defaults.num_heads) == (768, 6)


@pytest.mark.parametrize("demo", [p for p in RECIPES if p.stem.startswith("demo")],
                         ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_demo_configs_show_progress(demo: Path) -> None:
    """A demo runs for minutes: it shows progress (whole lines in a log file, see ``pathway.progress``)."""
    assert yaml.safe_load(demo.read_text())["trainer"].get("enable_progress_bar", True) is not False
