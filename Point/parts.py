"""The ShapeNetPart label space: 16 object categories, 50 parts numbered consecutively per category.

The categories are in the alphabetical order of ``synsetoffset2category.txt`` and own consecutive global part
ids (Airplane 0-3, Bag 4-5, ..., Table 47-49), which is how the benchmark files label their points.
"""
from __future__ import annotations

import torch
from torch import Tensor

# name -> (ShapeNet synset id, number of parts)
SHAPENETPART_CATEGORIES: dict[str, tuple[str, int]] = {
    "Airplane": ("02691156", 4), "Bag": ("02773838", 2), "Cap": ("02954340", 2), "Car": ("02958343", 4),
    "Chair": ("03001627", 4), "Earphone": ("03261776", 3), "Guitar": ("03467517", 3), "Knife": ("03624134", 2),
    "Lamp": ("03636649", 4), "Laptop": ("03642806", 2), "Motorbike": ("03790512", 6), "Mug": ("03797390", 2),
    "Pistol": ("03948459", 3), "Rocket": ("04099429", 3), "Skateboard": ("04225987", 3), "Table": ("04379243", 3),
}
NUM_CATEGORIES: int = len(SHAPENETPART_CATEGORIES)
NUM_PARTS: int = sum(count for _, count in SHAPENETPART_CATEGORIES.values())


def category_part_mask(part_counts: list[int]) -> Tensor:
    """Bool (categories, parts): which global part ids belong to each category (consecutive blocks)."""
    mask = torch.zeros(len(part_counts), sum(part_counts), dtype=torch.bool)
    first = 0
    for c, count in enumerate(part_counts):
        mask[c, first:first + count] = True
        first += count
    return mask
