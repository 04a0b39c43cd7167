"""Point data: every input format parses from tiny generated files, normalisation/augmentation/voting,
and bad input (NaN, empty, too few points, bad labels) fails naming the file or is handled as documented."""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pathway.data import BadSampleError
from Point.datamodule import PointDataModule, ShapeNetPartDataModule
from Point.datasets import PointClassificationDataset, ShapeNetPartDataset, normalize_unit_sphere, scale_and_shift
from Point.parts import SHAPENETPART_CATEGORIES
from Point.readers import PointDataError, read_json_list, read_point_file
from Point.synthetic import make_shape_dataset, make_shapenetpart_dataset

RNG = np.random.default_rng(0)


def _clouds(count: int, n: int, channels: int = 3) -> list[np.ndarray]:
    return [RNG.normal(size=(n, channels)).astype(np.float32) * 3 + 5 for _ in range(count)]


def _module(root: Path, fmt: str, **kwargs) -> PointDataModule:
    kwargs = {"num_points": 32, "batch_size": 4, "num_workers": 0, "pin_memory": False, **kwargs}
    return PointDataModule(root=str(root), format=fmt, **kwargs)


def _check_split(dm: PointDataModule, expected_len: int) -> None:
    dm.setup("fit")
    assert len(dm.train_set) == expected_len
    points, label = dm.val_set[0]
    assert points.shape == (32, 3) and points.dtype == torch.float32 and label.dtype == torch.long
    radius = points.norm(dim=1).max()
    assert radius <= 1.0 + 1e-5


def test_modelnet40_dat(tmp_path: Path) -> None:
    for split in ("train", "test"):
        with open(tmp_path / f"modelnet40_{split}_8192pts_fps.dat", "wb") as fh:
            pickle.dump([_clouds(5, 64, 6), [[i % 40] for i in range(5)]], fh)
    dm = _module(tmp_path, "modelnet40_dat")
    assert dm.num_classes == 40
    _check_split(dm, 5)
    assert [int(dm.val_set[i][1]) for i in range(5)] == [0, 1, 2, 3, 4]
    # the precomputed FPS pool is the FPS of the normalised cloud, and evaluation takes its prefix
    sampler = dm.val_set.sampler
    assert len(sampler._orders) == 5 and sampler._orders[0].shape == (39,)
    assert sampler._orders[0][0] == 0


def test_modelnet40_txt_layout(tmp_path: Path) -> None:
    names = ["airplane", "night_stand"]
    (tmp_path / "modelnet40_shape_names.txt").write_text("\n".join(names) + "\n")
    listed = {"train": ["airplane_0001", "night_stand_0001"], "test": ["night_stand_0002"]}
    for split, shapes in listed.items():
        (tmp_path / f"modelnet40_{split}.txt").write_text("\n".join(shapes) + "\n")
        for shape in shapes:
            cls = shape.rsplit("_", 1)[0]
            (tmp_path / cls).mkdir(exist_ok=True)
            np.savetxt(tmp_path / cls / f"{shape}.txt", _clouds(1, 40, 6)[0], delimiter=",", fmt="%.6f")
    dm = _module(tmp_path, "modelnet40_txt")
    assert dm.num_classes == 2
    _check_split(dm, 2)
    assert int(dm.val_set[0][1]) == 1
    with pytest.raises(ValueError, match="num_classes=40"):
        _module(tmp_path, "modelnet40_txt", num_classes=40)


@pytest.mark.parametrize("variant, folder, name", [
    ("hardest", "main_split", "{}_objectdataset_augmentedrot_scale75.h5"),
    ("objbg", "main_split", "{}_objectdataset.h5"),
    ("objonly", "main_split_nobg", "{}_objectdataset.h5"),
])
def test_scanobjectnn_variants(tmp_path: Path, variant: str, folder: str, name: str) -> None:
    (tmp_path / folder).mkdir()
    for split, count in (("training", 6), ("test", 3)):
        with h5py.File(tmp_path / folder / name.format(split), "w") as fh:
            fh["data"] = np.stack(_clouds(count, 32))
            fh["label"] = np.arange(count) % 15
    dm = _module(tmp_path, "scanobjectnn", variant=variant)
    assert dm.num_classes == 15
    _check_split(dm, 6)
    other = {"hardest": "objonly", "objbg": "objonly", "objonly": "hardest"}[variant]
    with pytest.raises(FileNotFoundError, match="ScanObjectNN"):
        _module(tmp_path, "scanobjectnn", variant=other).setup("fit")


def _write_ply(path: Path, xyz: np.ndarray, binary: bool) -> None:
    header = (f"ply\nformat {'binary_little_endian' if binary else 'ascii'} 1.0\ncomment test\n"
              f"element vertex {len(xyz)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n")
    if binary:
        rec = np.zeros(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1")])
        rec["x"], rec["y"], rec["z"] = xyz.T
        path.write_bytes(header.encode() + rec.tobytes())
    else:
        rows = "".join(f"{x} {y} {z} 7\n" for x, y, z in xyz)
        path.write_text(header + rows)


def test_point_files_npy_txt_ply(tmp_path: Path) -> None:
    xyz = _clouds(1, 20)[0]
    np.save(tmp_path / "a.npy", xyz)
    np.savetxt(tmp_path / "b.txt", xyz)
    _write_ply(tmp_path / "c.ply", xyz, binary=False)
    _write_ply(tmp_path / "d.ply", xyz, binary=True)
    for name in ("a.npy", "b.txt", "c.ply", "d.ply"):
        np.testing.assert_allclose(read_point_file(tmp_path / name), xyz, rtol=1e-5, atol=1e-5)


def test_folder_format_with_mixed_files(tmp_path: Path) -> None:
    make_shape_dataset(tmp_path, classes=["sphere", "cube"], per_class=2, points=48, seed=1)
    np.savetxt(tmp_path / "train" / "cube" / "extra.txt", _clouds(1, 48)[0])
    _write_ply(tmp_path / "train" / "sphere" / "extra.ply", _clouds(1, 48)[0], binary=False)
    dm = _module(tmp_path, "folder")
    assert dm.num_classes == 2
    _check_split(dm, 6)


def test_shapenetpart_layout(tmp_path: Path) -> None:
    make_shapenetpart_dataset(tmp_path, per_category=1, points=40, categories=["Airplane", "Mug"])
    dm = ShapeNetPartDataModule(root=str(tmp_path), num_points=32, batch_size=2, num_workers=0, pin_memory=False)
    assert dm.num_classes == 50
    dm.setup("fit")
    assert len(dm.train_set) == 4  # train + val lists
    points, category, parts, rows = dm.val_set[1]
    assert points.shape == (32, 3) and parts.shape == (32,) and rows.shape == (32,) and rows.unique().numel() == 32
    assert int(category) == list(SHAPENETPART_CATEGORIES).index("Mug")
    assert set(parts.tolist()) <= {36, 37} and len(set(parts.tolist())) == 2
    (tmp_path / "synsetoffset2category.txt").write_text("Spaceship\t01234567\n")
    with pytest.raises(PointDataError, match="synsetoffset2category.txt"):
        ShapeNetPartDataModule(root=str(tmp_path))


def test_normalisation_and_augmentation_ranges() -> None:
    xyz = np.array([[2.0, 0, 0], [4.0, 0, 0], [3.0, 0.5, 0]], dtype=np.float32)
    out = normalize_unit_sphere(xyz)
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-6)
    assert np.isclose(np.linalg.norm(out, axis=1).max(), 1.0)
    ones = torch.ones(100, 3)
    moved = scale_and_shift(ones, torch.Generator().manual_seed(0))
    assert not torch.equal(moved, ones)
    assert ((moved >= 2 / 3 - 0.2 - 1e-6) & (moved <= 1.5 + 0.2 + 1e-6)).all()


def test_vote_views_carry_the_cloud_index_and_differ() -> None:
    clouds = _clouds(2, 64)
    ds = PointClassificationDataset(clouds, [0, 1], ["a", "b"], num_points=16, train=False, vote_num=3)
    assert len(ds) == 6
    items = [ds[i] for i in range(6)]
    assert [int(it[2]) for it in items] == [0, 0, 0, 1, 1, 1]
    assert [int(it[1]) for it in items] == [0, 0, 0, 1, 1, 1]
    assert not torch.equal(items[0][0], items[1][0])
    assert torch.equal(ds[1][0], items[1][0])  # views are reproducible
    plain = PointClassificationDataset(clouds, [0, 1], ["a", "b"], num_points=16, train=False)
    assert torch.equal(plain[1][0], items[3][0]) and len(plain[1]) == 2


def test_nan_and_empty_files_raise_naming_the_file(tmp_path: Path) -> None:
    make_shape_dataset(tmp_path, classes=["sphere", "cube"], per_class=1, points=40)
    bad = tmp_path / "test" / "cube" / "broken.npy"
    cloud = _clouds(1, 40)[0]
    cloud[5, 1] = np.nan
    np.save(bad, cloud)
    empty = tmp_path / "test" / "sphere" / "empty.txt"
    empty.write_text("")
    dm = _module(tmp_path, "folder", batch_size=8, on_bad_file="error")
    dm.setup("validate")
    with pytest.raises(BadSampleError, match=r"broken\.npy.*NaN/inf"):
        list(dm.val_dataloader())
    with pytest.raises(PointDataError, match=r"empty\.txt: empty file"):
        read_point_file(empty)
    skipping = _module(tmp_path, "folder", batch_size=8, on_bad_file="skip")
    skipping.setup("validate")
    batches = list(skipping.val_dataloader())
    assert sum(b[0].shape[0] for b in batches) == 2 and skipping.val_set.skipped == 2


def test_nan_in_pickled_clouds_names_the_entry(tmp_path: Path) -> None:
    clouds = _clouds(2, 64)
    clouds[1][0, 0] = np.inf
    for split in ("train", "test"):
        with open(tmp_path / f"modelnet40_{split}_8192pts_fps.dat", "wb") as fh:
            pickle.dump([clouds, [0, 1]], fh)
    dm = _module(tmp_path, "modelnet40_dat", on_bad_file="error")
    dm.setup("validate")
    with pytest.raises(BadSampleError, match=r"modelnet40_test_8192pts_fps\.dat\[1\]"):
        dm.val_set[1]


def test_small_clouds_are_padded_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    small = _clouds(1, 10)[0]
    ds = PointClassificationDataset([small], [0], ["tiny.npy"], num_points=32, train=False)
    with caplog.at_level(logging.WARNING, logger="Point.datasets"):
        points, _ = ds[0]
        ds[0]
    assert points.shape == (32, 3)
    normalised = torch.from_numpy(normalize_unit_sphere(small))
    assert torch.equal(points[:10], normalised)
    assert (points[:, None] == normalised[None]).all(-1).any(1).all()
    assert [r.getMessage() for r in caplog.records if "tiny.npy" in r.getMessage()] and len(caplog.records) == 1


def test_labels_out_of_range_are_rejected(tmp_path: Path) -> None:
    for split in ("train", "test"):
        with open(tmp_path / f"modelnet40_{split}_8192pts_fps.dat", "wb") as fh:
            pickle.dump([_clouds(1, 64), [40]], fh)
    with pytest.raises(PointDataError, match=r"label outside 0..39"):
        _module(tmp_path, "modelnet40_dat").setup("fit")


def test_shapenetpart_split_entry_with_unknown_synset(tmp_path: Path) -> None:
    make_shapenetpart_dataset(tmp_path, per_category=1, points=40, categories=["Bag"])
    path = tmp_path / "train_test_split" / "shuffled_test_file_list.json"
    path.write_text(json.dumps(["shape_data/99999999/abc"]))
    dm = ShapeNetPartDataModule(root=str(tmp_path), num_points=32, num_workers=0)
    with pytest.raises(PointDataError, match="99999999"):
        dm.setup("validate")


def test_split_file_missing_or_broken_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(PointDataError, match=r"nowhere\.json: split file not found"):
        read_json_list(tmp_path / "nowhere.json")
    broken = tmp_path / "broken.json"
    broken.write_text("[")
    with pytest.raises(PointDataError, match=r"broken\.json: not valid JSON"):
        read_json_list(broken)


@pytest.mark.parametrize("shape, message", [
    ((3, 512), r"expected an \(N, 3\|6\) array .*got shape \(3, 512\) \(transposed\?"),
    ((6, 40), r"expected an \(N, 3\|6\) array .*got shape \(6, 40\) \(transposed\?"),
    ((6, 6), r"shape \(6, 6\) is ambiguous"),
    ((40, 5), r"expected an \(N, 3\|6\) array .*got shape \(40, 5\)"),
])
@pytest.mark.parametrize("suffix", [".npy", ".txt"])
def test_transposed_or_ambiguous_clouds_are_refused_naming_the_file(tmp_path: Path, shape: tuple[int, int],
                                                                     message: str, suffix: str) -> None:
    path = tmp_path / f"cloud{suffix}"
    values = RNG.normal(size=shape).astype(np.float32)
    np.save(path, values) if suffix == ".npy" else np.savetxt(path, values)
    with pytest.raises(PointDataError, match=rf"cloud\{suffix}: {message}"):
        read_point_file(path)


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_a_transposed_cloud_is_skipped_or_stops_the_run_naming_it(tmp_path: Path, policy: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    make_shape_dataset(tmp_path, classes=["sphere", "cube"], per_class=2, points=48)
    np.save(tmp_path / "test" / "cube" / "transposed.npy", _clouds(1, 48)[0].T)
    dm = _module(tmp_path, "folder", batch_size=8, on_bad_file=policy)
    dm.setup("validate")
    if policy == "error":
        with pytest.raises(BadSampleError, match=r"transposed\.npy.*\(3, 48\)"):
            list(dm.val_dataloader())
        return
    with caplog.at_level(logging.WARNING, logger="pathway.data"):
        batches = list(dm.val_dataloader())
    assert sum(b[0].shape[0] for b in batches) == 4 and dm.val_set.skipped == 1
    assert any("transposed.npy" in r.getMessage() and "(3, 48)" in r.getMessage() for r in caplog.records)


def test_shapenetpart_rows_need_a_part_column(tmp_path: Path) -> None:
    path = tmp_path / "shape.txt"
    np.savetxt(path, _clouds(1, 40, 6)[0])
    with pytest.raises(PointDataError, match=r"shape\.txt: expected an \(N, 4\|7\) array"):
        ShapeNetPartDataset([path], [0], num_points=32, train=False)[0]
