"""Writes what every modality's ``configs/demo*.yaml`` reads: ``python -m demo.data [--out demo_output]``.

One pattern for all four modalities: a ``make_*`` function per data set (``demo.digits`` for images, then
``<Modality>/synthetic.py``), deterministic in its seed so re-running is safe, and one small auxiliary model of the
demo size (width 64) per demo depth: depth 4 for the Video and Point demo configs, depth 2 for the Audio demo
(an aux must have the target's depth).  That aux is a randomly initialised timm image ViT: it exercises the whole
mechanism offline (loading a foreign ViT, λ training, merged export) but cannot be expected to help accuracy.
``python -m demo`` trains a real cross-modal aux instead.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from Audio.synthetic import make_tone_dataset
from demo.digits import make_digits_imagefolder
from Point.synthetic import make_shape_dataset, make_shapenetpart_dataset
from Video.synthetic import make_video_dataset

AUX_NAME = "tiny_image_vit.safetensors"  # depth 4: Video/configs/demo.yaml, Point/configs/demo*.yaml
AUDIO_AUX_NAME = "tiny_image_vit_depth2.safetensors"  # depth 2: Audio/configs/demo.yaml


def write_random_aux(path: Path, seed: int = 0, depth: int = 4) -> Path:
    """A random timm image ViT of the demo width (64, 4 heads) and ``depth`` as safetensors."""
    torch.manual_seed(seed)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64,
                            depth=depth, num_heads=4, num_classes=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return path


def write_demo_data(out: Path, seed: int = 0) -> dict[str, Path]:
    """Every demo data set and the demo auxes under ``out``; returns their paths by name."""
    data = out / "data"
    video = data / "video_synthetic"
    if not (video / "train.csv").is_file():
        make_video_dataset(video, classes=4, per_class=8, frames=40, size=(48, 64), fps=25, seed=seed)
    return {
        "image digits": make_digits_imagefolder(data / "digits", seed=seed),
        "audio tones": make_tone_dataset(data / "tones", seed=seed),
        "video clips": video,
        "point shapes": make_shape_dataset(data / "point_shapes", classes=8, per_class=16, points=512, seed=seed),
        "point parts": make_shapenetpart_dataset(data / "point_parts", per_category=4, points=512, seed=seed),
        "aux (random tiny image ViT, depth 4)": write_random_aux(out / "aux" / AUX_NAME, seed=seed),
        "aux for the Audio demo (depth 2)": write_random_aux(out / "aux" / AUDIO_AUX_NAME, seed=seed, depth=2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output", help="output folder (the demo configs read demo_output)")
    args = parser.parse_args(argv)
    for name, path in write_demo_data(Path(args.out)).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
