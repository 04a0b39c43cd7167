"""Prepare the CPU video demo: synthetic clips and a tiny auxiliary image ViT at the paths of configs/demo.yaml.

The auxiliary model is a randomly initialised timm image ViT of the demo model's width and depth: it exercises the
whole mechanism (loading an image ViT as aux, λ training, merged export) offline.  For a real experiment, point
``model.aux_ckpts`` at a trained checkpoint of another modality.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch

from Video.synthetic import make_video_dataset


def prepare(out: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``<out>/data/video_synthetic`` and ``<out>/aux/video_demo_image_vit.pt``; returns both paths."""
    data = out / "data" / "video_synthetic"
    make_video_dataset(data, classes=4, per_class=8, frames=40, size=(48, 64), fps=25, seed=seed)
    torch.manual_seed(seed)
    aux = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64,
                            depth=4, num_heads=4, num_classes=10)
    aux_path = out / "aux" / "video_demo_image_vit.pt"
    aux_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(aux.state_dict(), aux_path)
    return data, aux_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output", help="folder the demo config reads from")
    args = parser.parse_args(argv)
    data, aux = prepare(Path(args.out))
    print(f"wrote {data} and {aux}; now run:\n"
          "  python -m Video fit --config Video/configs/demo.yaml\n"
          "  python -m Video test --config Video/configs/demo.yaml --ckpt_path last")


if __name__ == "__main__":
    main()
