"""The Image command line (LightningCLI through pathway.cli) and the Image data module's bad-file handling."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_MODEL_KWARGS
from Image.datamodule import ImageDataModule
from Image.model import ImageClassifier
from pathway import pathway_layers
from pathway.cli import run_cli
from pathway.data import BadSampleError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "Image" / "configs"


def _tiny_overrides(digits_root: Path, aux_ckpt: Path, out: Path) -> list[str]:
    """demo.yaml shrunk to the tiny model, the tiny digits set and the tiny aux checkpoint."""
    return [
        "--config", str(CONFIGS / "demo.yaml"),
        "--model.model_kwargs", json.dumps(TINY_MODEL_KWARGS),
        "--model.aux_ckpts", json.dumps([str(aux_ckpt)]),
        "--data.root", str(digits_root),
        "--data.img_size", "16",
        "--data.batch_size", "8",
        "--data.num_workers", "0",
        "--trainer.default_root_dir", str(out),
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _python_m_image(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "Image", *args], cwd=REPO, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, proc.args))} failed:\n{output[-4000:]}"
    return output


def test_run_cli_links_num_classes(
    digits_root: Path, aux_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["python"])  # pytest's own arguments are not for the CLI
    args = _tiny_overrides(digits_root, aux_ckpt, tmp_path) + ["--trainer.max_steps", "2"]
    cli = run_cli(ImageClassifier, ImageDataModule, args=args, run=False)
    assert cli.datamodule.num_classes == 10
    assert cli.model.hparams.num_classes == 10
    assert cli.model.backbone.head.out_features == 10
    assert cli.model.backbone.embed_dim == TINY_MODEL_KWARGS["embed_dim"]
    assert len(list(pathway_layers(cli.model.backbone))) == 4 * TINY_MODEL_KWARGS["depth"]
    callbacks = {type(c).__name__ for c in cli.trainer.callbacks}
    assert {"LastAndBestCheckpoint", "LambdaMonitor", "MergedCheckpoint"} <= callbacks


def test_fit_then_test_subprocess(digits_root: Path, aux_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = _tiny_overrides(digits_root, aux_ckpt, out)
    output = _finish(_python_m_image("fit", *common, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
                                     "--trainer.accumulate_grad_batches", "2"))
    # demo.yaml is written for an effective batch of 64 with an absolute lr: the run's 8 x 2 = 16 is reported
    assert "batch: 8 per device x 1 device(s) x 1 node(s) x 2 accumulation = 16 effective (recipe: 64)" in output
    assert "differs from the recipe's 64 (model.recipe_batch_size); lr was NOT scaled" in output
    (last,) = out.rglob("last.ckpt")
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2
    assert [k for k in checkpoint["state_dict"] if "aux_weight" in k]  # trained aux (the paper's method) are saved
    assert any(p.name == "merged.safetensors" for p in out.rglob("*.safetensors"))
    output = _finish(_python_m_image("test", *common, "--trainer.limit_test_batches", "2", "--ckpt_path", str(last)))
    assert "test/acc1" in output


# --- unreadable images ----------------------------------------------------------------------------------------
@pytest.fixture
def folder_with_bad_image(digits_root: Path, tmp_path: Path) -> tuple[Path, Path, int]:
    root = tmp_path / "mini"
    good = 0
    for split in ("train", "val"):
        for label in ("0", "1"):
            dst = root / split / label
            dst.mkdir(parents=True)
            for src in sorted((digits_root / split / label).glob("*.png"))[:3]:
                shutil.copy(src, dst / src.name)
                good += split == "val"
    bad = root / "val" / "1" / "0000_broken.png"
    bad.write_bytes(b"definitely not a PNG file" * 4)
    return root, bad, good


def test_bad_image_is_skipped_and_counted(folder_with_bad_image: tuple[Path, Path, int]) -> None:
    root, bad, good = folder_with_bad_image
    datamodule = ImageDataModule(root=str(root), img_size=16, batch_size=4, num_workers=0, pin_memory=False,
                                 auto_augment=None, re_prob=0.0, crop_pct=1.0)
    assert datamodule.num_classes == 2
    datamodule.setup("validate")
    seen = sum(x.shape[0] for x, _ in datamodule.val_dataloader())
    assert seen == good == 6
    assert datamodule.skipped() == 1


def test_bad_image_error_names_the_file(folder_with_bad_image: tuple[Path, Path, int]) -> None:
    root, bad, _ = folder_with_bad_image
    datamodule = ImageDataModule(root=str(root), img_size=16, batch_size=4, num_workers=0, pin_memory=False,
                                 auto_augment=None, re_prob=0.0, crop_pct=1.0, on_bad_file="error")
    datamodule.setup("validate")
    with pytest.raises(BadSampleError) as info:
        for _ in datamodule.val_dataloader():
            pass
    assert str(bad) in str(info.value)


def test_num_classes_mismatch_is_an_error(digits_root: Path) -> None:
    with pytest.raises(ValueError, match=r"num_classes=3.*10 class folders"):
        ImageDataModule(root=str(digits_root), num_classes=3)


def test_paper_randaugment_survives_its_strongest_posterize() -> None:
    """`rand-m9-mstd0.5-inc1` reaches posterize(bits=0); Pillow 13 raises there, which used to surface as
    "unreadable image" skips. requirements.txt pins a Pillow where it gives a black image, as timm expects."""
    from PIL import Image as PILImage
    from timm.data.auto_augment import posterize

    image = PILImage.new("RGB", (8, 8), (200, 100, 50))
    assert posterize(image, 0).getpixel((0, 0)) == (0, 0, 0)


def test_augmentation_errors_are_not_counted_as_bad_files() -> None:
    """Only read errors are skipped: a bug in a transform must stop the run, not be logged as a bad image."""
    from pathway.data import SkippingDataset

    class Broken(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int):
            raise ValueError("bits must be between or equal to 1 and 8")

    dataset = SkippingDataset(Broken(), lambda i: f"item {i}", on_bad_file="skip")
    with pytest.raises(ValueError, match="bits must be"):
        dataset[0]
    assert dataset.skipped == 0
