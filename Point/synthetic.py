"""Small synthetic point-cloud data sets for tests, demos and smoke runs (no downloads).

``make_shape_dataset`` writes a folder-per-class classification set of primitive surfaces (sphere, cube,
cylinder, cone, torus, ...), each cloud randomly scaled, rotated and jittered so the classes are learnable
but not trivial.  ``make_shapenetpart_dataset`` writes the ShapeNetPart layout (category list, split JSONs,
per-shape ``x y z nx ny nz part`` txt files) with parts given by height bands of a primitive.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np

from Point.parts import SHAPENETPART_CATEGORIES

PathLike = Union[str, Path]


def _sphere(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _cube(rng: np.random.Generator, n: int) -> np.ndarray:
    p = rng.uniform(-1, 1, size=(n, 3))
    axis = rng.integers(0, 3, size=n)
    p[np.arange(n), axis] = rng.choice([-1.0, 1.0], size=n)
    return p


def _cylinder(rng: np.random.Generator, n: int) -> np.ndarray:
    t = rng.uniform(0, 2 * math.pi, n)
    return np.stack([np.cos(t), np.sin(t), rng.uniform(-1, 1, n)], 1)


def _cone(rng: np.random.Generator, n: int) -> np.ndarray:
    t = rng.uniform(0, 2 * math.pi, n)
    h = 1 - np.sqrt(rng.uniform(0, 1, n))  # area-uniform along the slant
    return np.stack([h * np.cos(t), h * np.sin(t), 1 - 2 * h], 1)


def _torus(rng: np.random.Generator, n: int) -> np.ndarray:
    u, v = rng.uniform(0, 2 * math.pi, (2, n))
    return np.stack([(1 + 0.35 * np.cos(v)) * np.cos(u), (1 + 0.35 * np.cos(v)) * np.sin(u), 0.35 * np.sin(v)], 1)


def _plane(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.stack([rng.uniform(-1, 1, n), rng.uniform(-1, 1, n), np.zeros(n)], 1)


def _pyramid(rng: np.random.Generator, n: int) -> np.ndarray:
    t = rng.uniform(0, 2 * math.pi, n)
    h = 1 - np.sqrt(rng.uniform(0, 1, n))
    square = np.maximum(np.abs(np.cos(t)), np.abs(np.sin(t)))  # stretches the cone's circles to squares
    return np.stack([h * np.cos(t) / square, h * np.sin(t) / square, 1 - 2 * h], 1)


def _helix(rng: np.random.Generator, n: int) -> np.ndarray:
    t = rng.uniform(0, 6 * math.pi, n)
    return np.stack([np.cos(t), np.sin(t), t / (3 * math.pi) - 1], 1) + rng.normal(0, 0.05, (n, 3))


SHAPES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "sphere": _sphere, "cube": _cube, "cylinder": _cylinder, "cone": _cone,
    "torus": _torus, "plane": _plane, "pyramid": _pyramid, "helix": _helix,
}


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def sample_shape(name: str, points: int, rng: np.random.Generator, rotate: bool = True) -> np.ndarray:
    """One (points, 3) float32 cloud of primitive ``name``, anisotropically scaled, rotated and jittered."""
    if name not in SHAPES:
        raise ValueError(f"unknown synthetic shape '{name}' (known: {sorted(SHAPES)})")
    p = SHAPES[name](rng, points) * rng.uniform(0.7, 1.3, size=3)
    if rotate:
        p = p @ _random_rotation(rng).T
    return (p + rng.normal(0, 0.01, p.shape)).astype(np.float32)


def make_shape_dataset(
    root: PathLike,
    classes: Union[int, Sequence[str]] = 4,
    per_class: int = 8,
    points: int = 256,
    seed: int = 0,
) -> Path:
    """Write ``root/{train,test}/<shape>/<shape>_<i>.npy`` with ``per_class`` clouds per class and split.

    ``classes`` is a count (the first ones of ``SHAPES``) or a list of shape names.  Returns ``root``.
    """
    names = list(SHAPES)[:classes] if isinstance(classes, int) else list(classes)
    if isinstance(classes, int) and not 0 < classes <= len(SHAPES):
        raise ValueError(f"classes must be 1..{len(SHAPES)}, got {classes}")
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split in ("train", "test"):
        for name in names:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                np.save(folder / f"{name}_{i:04d}.npy", sample_shape(name, points, rng))
    return root


def make_shapenetpart_dataset(
    root: PathLike, per_category: int = 2, points: int = 128, seed: int = 0,
    categories: Sequence[str] = tuple(SHAPENETPART_CATEGORIES),
) -> Path:
    """Write a tiny ShapeNetPart-layout set; each category's parts are height bands of one primitive.

    Every listed shape goes to train, val and test lists (tests need all splits non-empty, not disjoint).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    offsets = {}
    first = 0
    for name, (synset, count) in SHAPENETPART_CATEGORIES.items():
        offsets[name] = (synset, first, count)
        first += count
    shape_names = list(SHAPES)
    (root / "train_test_split").mkdir(parents=True, exist_ok=True)
    (root / "synsetoffset2category.txt").write_text(
        "".join(f"{name}\t{SHAPENETPART_CATEGORIES[name][0]}\n" for name in categories)
    )
    entries = []
    for c, name in enumerate(categories):
        synset, first_part, count = offsets[name]
        (root / synset).mkdir(exist_ok=True)
        for i in range(per_category):
            xyz = sample_shape(shape_names[c % len(shape_names)], points, rng, rotate=False)
            normals = xyz / np.maximum(np.linalg.norm(xyz, axis=1, keepdims=True), 1e-6)
            z = xyz[:, 2]
            bands = np.clip(((z - z.min()) / max(float(np.ptp(z)), 1e-6) * count).astype(int), 0, count - 1)
            rows = np.concatenate([xyz, normals, (first_part + bands)[:, None].astype(np.float32)], 1)
            shape_id = f"{name.lower()}{i:04d}"
            np.savetxt(root / synset / f"{shape_id}.txt", rows, fmt="%.6f")
            entries.append(f"shape_data/{synset}/{shape_id}")
    for split in ("train", "val", "test"):
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(entries))
    return root
