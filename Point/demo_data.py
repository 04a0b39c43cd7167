"""Writes what ``Point/configs/demo.yaml`` and ``demo_seg.yaml`` read: the synthetic shape set, a tiny
ShapeNetPart-layout set and an auxiliary checkpoint.

``python -m Point.demo_data [--out demo_output] [--aux FILE]``.  The auxiliary model should come from another
modality with the demo's transformer size (width 64, depth 4), e.g. the merged image ViT the Image demo exports
(``demo_output/export/merged.safetensors``): pass it with ``--aux``.  Without one, a randomly initialised tiny
timm ViT is written instead; it exercises the pathway mechanics but cannot be expected to help accuracy.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from Point.synthetic import make_shape_dataset, make_shapenetpart_dataset

AUX_NAME = "point_demo_aux.safetensors"


def write_demo_data(out: Path, aux: Path | None = None, seed: int = 0) -> dict[str, Path]:
    """Create the demo data sets and aux checkpoint under ``out``; returns their paths."""
    shapes = make_shape_dataset(out / "data" / "point_shapes", classes=8, per_class=16, points=512, seed=seed)
    parts = make_shapenetpart_dataset(out / "data" / "point_parts", per_category=4, points=512, seed=seed)
    target = out / "aux" / AUX_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    if aux is not None:
        shutil.copyfile(aux, target)
    else:
        torch.manual_seed(seed)
        vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4,
                                embed_dim=64, depth=4, num_heads=4, num_classes=10)
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(target))
    return {"shapes": shapes, "parts": parts, "aux": target}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output", help="output folder (the demo configs expect demo_output)")
    parser.add_argument("--aux", type=Path, default=None, help="aux checkpoint of width 64 / depth 4 to use")
    args = parser.parse_args(argv)
    for name, path in write_demo_data(Path(args.out), args.aux).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
