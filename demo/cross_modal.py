"""The embedded cross-modal demo (README command one, ``python -m demo``): the whole method, offline, on data that
ships with the stack.

1. Real images: scikit-learn's handwritten digits, written as an ImageFolder.
2. Another modality: synthetic sounds (tones, chirps, noise bursts...), on which a tiny audio ViT is trained;
   its weights are the auxiliary model.
3. The same tiny image ViT (same seed, same init) is fine-tuned twice from one config: without the pathway
   (baseline) and with the pathway from the audio ViT.  The pathway run is the paper's method: the aux weights are
   trained with their block's lr and weight decay (``model.aux_trainable: true`` in ``Image/configs/demo.yaml``).
4. The pathway model's last checkpoint is merged and exported (``pathway.export``: safetensors + torch.export,
   each verified), the safetensors are loaded strictly into a plain timm ViT and re-tested: the merged model must
   score exactly what the pathway model scored.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file

import Audio
import Image
from Audio.datamodule import AudioDataModule
from Audio.model import AudioClassifier
from Audio.synthetic import make_tone_dataset
from demo.digits import make_digits_imagefolder
from Image.datamodule import ImageDataModule
from Image.model import ImageClassifier
from pathway.cli import run_cli
from pathway.export import export_checkpoint

IMAGE_CONFIGS = Path(Image.__file__).resolve().parent / "configs"
AUDIO_CONFIGS = Path(Audio.__file__).resolve().parent / "configs"


def _fit_and_test(cli_args: list[str], model_class: type, datamodule_class: type, monitor: str) -> tuple[dict, object]:
    cli = run_cli(model_class, datamodule_class, args=cli_args, run=False, monitor=monitor)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    return metrics, cli


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output", help="folder for data, runs and exports")
    parser.add_argument("--epochs", type=int, default=None, help="image epochs (default: Image/configs/demo.yaml)")
    parser.add_argument("--aux-epochs", type=int, default=10, help="epochs of the auxiliary audio ViT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    start = time.time()

    digits = make_digits_imagefolder(out / "data" / "digits")
    tones = make_tone_dataset(out / "data" / "tones")
    aux_path = out / "aux" / "audio_vit.safetensors"

    print("[1/4] training the auxiliary audio ViT on synthetic sounds", flush=True)
    audio_metrics, audio_cli = _fit_and_test([
        "--config", str(AUDIO_CONFIGS / "demo.yaml"),
        "--data.root", str(tones),
        "--model.depth", "4",
        "--trainer.max_epochs", str(args.aux_epochs),
        "--trainer.default_root_dir", str(out / "runs" / "audio_aux"),
        "--merged_export.dirpath", str(out / "aux"),
        "--merged_export.filename", aux_path.name,
    ], AudioClassifier, AudioDataModule, monitor="val/acc1")

    image_args = ["--config", str(IMAGE_CONFIGS / "demo.yaml"), "--data.root", str(digits)]
    if args.epochs is not None:
        image_args += ["--trainer.max_epochs", str(args.epochs)]
    print("[2/4] fine-tuning the image ViT without a pathway (baseline)", flush=True)
    base_metrics, _ = _fit_and_test(image_args + [
        "--model.aux_ckpts", "[]", "--trainer.default_root_dir", str(out / "runs" / "image_baseline"),
    ], ImageClassifier, ImageDataModule, monitor="val/acc1")

    print("[3/4] fine-tuning the same image ViT with the pathway from the audio ViT", flush=True)
    path_metrics, path_cli = _fit_and_test(image_args + [
        "--model.aux_ckpts", f"[{aux_path}]", "--trainer.default_root_dir", str(out / "runs" / "image_pathway"),
    ], ImageClassifier, ImageDataModule, monitor="val/acc1")

    print("[4/4] merging and exporting the pathway model (safetensors + torch.export), re-testing it", flush=True)
    export_dir = out / "export"
    sidecar = export_checkpoint(path_cli.trainer.checkpoint_callback.last_model_path, export_dir)
    hp = path_cli.model.hparams
    plain = timm.create_model(hp.model_name, pretrained=False, num_classes=hp.num_classes, img_size=hp.img_size,
                              global_pool=hp.global_pool, **(hp.model_kwargs or {}))
    plain.load_state_dict(load_file(str(export_dir / sidecar["files"]["safetensors"])), strict=True)
    init_args = {k: v for k, v in hp.items() if not k.startswith("_")}
    merged_model = ImageClassifier(**{**init_args, "aux_ckpts": [], "target_ckpt": None})
    merged_model.backbone = plain
    merged_metrics = path_cli.trainer.test(merged_model, datamodule=path_cli.datamodule, verbose=False)[0]
    lambdas = torch.cat([m.lambdas.detach().abs() for m in path_cli.model.modules() if hasattr(m, "lambdas")])

    summary = {
        "variant": "trained aux (the paper's method)" if hp.aux_trainable else "frozen aux (our cheaper variant)",
        "aux audio val acc1": audio_metrics["test/acc1"],
        "image baseline test acc1": base_metrics["test/acc1"],
        "image pathway test acc1": path_metrics["test/acc1"],
        "image merged test acc1": merged_metrics["test/acc1"],
        "mean |lambda|": float(lambdas.mean()),
        "export": ", ".join(str(export_dir / name) for name in sidecar["files"].values()),
        "seconds": round(time.time() - start, 1),
    }
    print("\nMultimodal Pathway demo (digits images <- synthetic-sound ViT)")
    for key, value in summary.items():
        print(f"  {key:28s} {value:.4f}" if isinstance(value, float) else f"  {key:28s} {value}")
    if abs(merged_metrics["test/acc1"] - path_metrics["test/acc1"]) > 1e-6:
        raise SystemExit("merged model does not reproduce the pathway model's accuracy")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
