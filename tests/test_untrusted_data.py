"""Untrusted data files never run code: a crafted ModelNet40 ``.dat`` pickle is refused, naming the file and the
global it names, before anything it names is called; Point-MAE's real ``.dat`` layout (written by numpy 1 or 2, any
pickle protocol) still loads."""
from __future__ import annotations

import builtins
import io
import os
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from Point.datamodule import PointDataModule
from Point.readers import PointDataError, load_modelnet_dat

RNG = np.random.default_rng(0)


def _point_mae_content(count: int = 3) -> list[list[np.ndarray]]:
    """What Point-MAE's ``ModelNet`` dataset pickles: float32 (points, 6) clouds and int32 (1,) label arrays."""
    clouds = [RNG.normal(size=(64, 6)).astype(np.float32) for _ in range(count)]
    labels = [np.array([i % 40]).astype(np.int32) for i in range(count)]
    return [clouds, labels]


def _numpy1_pickle(content: Any, protocol: int, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """``content`` pickled the way numpy 1 writes arrays: ``numpy.core.multiarray._reconstruct``."""
    reconstruct = np.zeros(1).__reduce__()[0]

    def _reconstruct(*args: Any) -> Any:
        return reconstruct(*args)

    _reconstruct.__module__, _reconstruct.__qualname__ = "numpy.core.multiarray", "_reconstruct"
    fake = types.ModuleType("numpy.core.multiarray")
    fake._reconstruct = _reconstruct
    monkeypatch.setitem(sys.modules, "numpy.core.multiarray", fake)

    class Numpy1Pickler(pickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is np.ndarray:
                _, args, state = obj.__reduce__()
                return _reconstruct, args, state
            return NotImplemented

    buffer = io.BytesIO()
    Numpy1Pickler(buffer, protocol=protocol).dump(content)
    return buffer.getvalue()


def _assert_equal_content(path: Path, content: list[list[np.ndarray]]) -> None:
    clouds, labels = load_modelnet_dat(path)
    assert len(clouds) == len(content[0])
    for got, want in zip(clouds, content[0]):
        assert got.dtype == np.float32 and np.array_equal(got, want)
    assert labels.dtype == np.int64 and labels.tolist() == [int(y[0]) for y in content[1]]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_point_mae_dat_files_load_with_numpy_2_names(tmp_path: Path, protocol: int) -> None:
    content = _point_mae_content()
    path = tmp_path / "modelnet40_train_8192pts_fps.dat"
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    assert b"numpy._core" in path.read_bytes()
    _assert_equal_content(path, content)


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_point_mae_dat_files_load_with_numpy_1_names(tmp_path: Path, protocol: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    content = _point_mae_content()
    path = tmp_path / "modelnet40_train_8192pts_fps.dat"
    path.write_bytes(_numpy1_pickle(content, protocol, monkeypatch))
    assert b"numpy.core" in path.read_bytes() and b"numpy._core" not in path.read_bytes()
    monkeypatch.undo()
    _assert_equal_content(path, content)


def test_labels_may_be_numpy_scalars_or_python_ints(tmp_path: Path) -> None:
    clouds = _point_mae_content(2)[0]
    for labels in ([np.int64(7), np.int32(3)], [7, 3]):
        path = tmp_path / "scalars.dat"
        path.write_bytes(pickle.dumps([clouds, labels], protocol=4))
        assert load_modelnet_dat(path)[1].tolist() == [7, 3]


class _RunsShell:
    """Unpickling this runs ``touch <marker>`` through ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return os.system, (f"touch {self.marker}",)


class _RunsPython:
    """Unpickling this runs Python through ``builtins.exec``, writing ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.mark.parametrize("payload, named", [(_RunsShell, "posix.system"), (_RunsPython, "builtins.exec")])
def test_crafted_dat_file_runs_no_code_and_names_the_file(tmp_path: Path, payload: type, named: str) -> None:
    marker = tmp_path / "code_ran"
    clouds, labels = _point_mae_content()
    for split in ("train", "test"):  # the payload hides among real clouds, as a crafted download would
        with open(tmp_path / f"modelnet40_{split}_8192pts_fps.dat", "wb") as fh:
            pickle.dump([clouds + [payload(marker)], labels + [np.array([0], np.int32)]], fh)
    path = tmp_path / "modelnet40_train_8192pts_fps.dat"
    with pytest.raises(PointDataError, match=rf"{path}: .*refused to load '{named}'"):
        load_modelnet_dat(path)
    data = PointDataModule(root=str(tmp_path), num_points=32, batch_size=2, num_workers=0, pin_memory=False)
    with pytest.raises(PointDataError, match=r"modelnet40_train_8192pts_fps\.dat: .*refused"):
        data.setup("fit")
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    ({"points": []}, r"expected a pickled \[list_of_points, list_of_labels\], got dict"),
    ([[np.zeros((64, 3), np.float32)], [np.array(["chair"])]], r"label 0: expected numbers"),
    ([[np.zeros((64, 3), np.float32)], [np.array([1, 2])]], r"label 0 has 2 values"),
    ([[np.array(["a", "b"])], [np.array([1])]], r"\[0\]: expected numbers"),
    ([[np.zeros((64, 3), np.float32)] * 2, [np.array([1])]], r"2 clouds but 1 labels"),
])
def test_dat_files_of_another_layout_name_the_file(tmp_path: Path, content: Any, message: str) -> None:
    path = tmp_path / "other.dat"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(PointDataError, match=rf"other\.dat.*{message}"):
        load_modelnet_dat(path)


def test_truncated_dat_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.dat"
    path.write_bytes(pickle.dumps(_point_mae_content())[:300])
    with pytest.raises(PointDataError, match=r"cut\.dat: not a pickle of point clouds"):
        load_modelnet_dat(path)
