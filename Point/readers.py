"""Readers for the point-cloud file formats the Point modality accepts.

Every reader returns plain float32 numpy arrays and raises ``PointDataError`` naming the file (and the
entry inside it) when the content is unusable, so a bad file in a 12k-file dataset is found at once.
Clouds are ``(N, C)`` arrays, one point per row; an array that could be read either way round (a transposed
``(3, N)`` file) is refused rather than guessed.
"""
from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any, Union

import numpy as np

from pathway.data import BadSampleError, read_json

PathLike = Union[str, Path]

POINT_FILE_SUFFIXES: tuple[str, ...] = (".npy", ".txt", ".ply")
CLOUD_COLUMNS: tuple[int, ...] = (3, 6)  # x y z [nx ny nz]

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


class PointDataError(BadSampleError, ValueError):
    """A point-cloud file or entry that cannot be used; the message names it."""


def check_cloud(points: np.ndarray, source: str, columns: tuple[int, ...] = CLOUD_COLUMNS) -> np.ndarray:
    """Return ``points`` as float32 (N, C) with C in ``columns``, or raise naming ``source``.

    Refused: empty clouds, other shapes, NaN/inf coordinates, and arrays whose row count is itself an allowed
    column count (a (3, 6) array is 3 points with normals or a transposed 6-point cloud: no way to tell).
    """
    points = np.asarray(points)
    expected = f"an (N, {'|'.join(map(str, columns))}) array of points, one point per row"
    if points.size == 0:
        raise PointDataError(f"{source}: empty point cloud")
    if points.dtype.kind not in "iuf":
        raise PointDataError(f"{source}: expected a point cloud of numbers, got dtype {points.dtype}")
    if points.ndim != 2 or points.shape[1] not in columns:
        hint = " (transposed?)" if points.ndim == 2 and points.shape[0] in columns else ""
        raise PointDataError(f"{source}: expected {expected}, got shape {points.shape}{hint}")
    if points.shape[0] in columns:
        raise PointDataError(
            f"{source}: shape {points.shape} is ambiguous ({points.shape[0]} points or a transposed cloud); "
            f"expected {expected} with more than {max(columns)} points"
        )
    points = points.astype(np.float32, copy=False)
    bad = ~np.isfinite(points[:, :3])
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        count = int(bad.any(1).sum())
        raise PointDataError(f"{source}: {count} point(s) with NaN/inf coordinates (first at row {row})")
    return points


def _read_text(path: Path) -> np.ndarray:
    """Whitespace- or comma-separated numbers, one point per row (ModelNet txt, ShapeNetPart, plain xyz)."""
    text = path.read_text()
    if not text.strip():
        raise PointDataError(f"{path}: empty file")
    rows = [line.replace(",", " ").split() for line in text.splitlines() if line.strip()]
    try:
        return np.array(rows, dtype=np.float32)
    except ValueError as err:
        raise PointDataError(f"{path}: not a table of numbers with the same count per row ({err})") from err


def _read_ply(path: Path) -> np.ndarray:
    """The x, y, z (and nx, ny, nz when present) vertex properties of an ASCII or binary PLY file."""
    with path.open("rb") as fh:
        if fh.readline().strip() != b"ply":
            raise PointDataError(f"{path}: not a PLY file (no 'ply' magic line)")
        fmt, elements, current = None, [], None
        while True:
            raw = fh.readline()
            if not raw:
                raise PointDataError(f"{path}: PLY header has no 'end_header'")
            words = raw.decode("ascii", errors="replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "end_header":
                break
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                current = {"name": words[1], "count": int(words[2]), "props": []}
                elements.append(current)
            elif words[0] == "property":
                if current is None:
                    raise PointDataError(f"{path}: PLY property before any element")
                if words[1] == "list":
                    current["props"].append(("list", None))
                elif words[1] in _PLY_TYPES:
                    current["props"].append((words[2], _PLY_TYPES[words[1]]))
                else:
                    raise PointDataError(f"{path}: unknown PLY property type '{words[1]}'")
        if not elements or elements[0]["name"] != "vertex":
            raise PointDataError(f"{path}: the first PLY element must be 'vertex'")
        vertex = elements[0]
        names = [n for n, _ in vertex["props"]]
        if "list" in names:
            raise PointDataError(f"{path}: list properties on PLY vertices are not supported")
        if not {"x", "y", "z"} <= set(names):
            raise PointDataError(f"{path}: PLY vertices lack x/y/z properties (have {names})")
        count = vertex["count"]
        if fmt == "ascii":
            lines = [fh.readline() for _ in range(count)]
            try:
                table = np.array([line.split() for line in lines], dtype=np.float64)
            except ValueError as err:
                raise PointDataError(f"{path}: malformed ASCII PLY vertex rows ({err})") from err
            if table.shape != (count, len(names)):
                raise PointDataError(f"{path}: expected {count} vertex rows of {len(names)} values, got {table.shape}")
            columns = {n: table[:, i] for i, n in enumerate(names)}
        elif fmt in ("binary_little_endian", "binary_big_endian"):
            order = "<" if fmt == "binary_little_endian" else ">"
            dtype = np.dtype([(n, order + t) for n, t in vertex["props"]])
            data = np.frombuffer(fh.read(dtype.itemsize * count), dtype=dtype)
            if data.shape[0] != count:
                raise PointDataError(f"{path}: truncated binary PLY ({data.shape[0]} of {count} vertices)")
            columns = {n: data[n].astype(np.float64) for n in names}
        else:
            raise PointDataError(f"{path}: unknown PLY format '{fmt}'")
    keys = ["x", "y", "z"] + (["nx", "ny", "nz"] if {"nx", "ny", "nz"} <= set(names) else [])
    if count == 0:
        raise PointDataError(f"{path}: PLY file has no vertices")
    return np.stack([columns[k] for k in keys], axis=1).astype(np.float32)


def read_point_file(path: PathLike, columns: tuple[int, ...] = CLOUD_COLUMNS) -> np.ndarray:
    """One cloud from a ``.npy``, ``.txt`` (ModelNet/xyz rows) or ``.ply`` file as float32 (N, C in ``columns``)."""
    path = Path(path)
    if not path.is_file():
        raise PointDataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise PointDataError(f"{path}: empty file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            points = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise PointDataError(f"{path}: not a plain numpy array ({err})") from err
    elif suffix == ".txt":
        points = _read_text(path)
    elif suffix == ".ply":
        points = _read_ply(path)
    else:
        raise PointDataError(f"{path}: unsupported point file type (expected one of {POINT_FILE_SUFFIXES})")
    return check_cloud(points, str(path), columns)


def _numpy_pickle_globals() -> dict[tuple[str, str], Any]:
    """The callables a pickle of numpy arrays names, under numpy 1's (``numpy.core``) and 2's (``numpy._core``)
    module paths, taken from numpy's own reducers so that they are the ones this numpy unpickles with."""
    array = np.zeros(1, dtype=np.float32)
    reconstruct = array.__reduce__()[0]
    frombuffer = array.__reduce_ex__(5)[0]
    scalar = np.float32(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): codecs.encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles lists, tuples, numbers and numpy arrays only: any other global a pickle names (``os.system``,
    ``builtins.eval``, a class whose ``__reduce__`` runs code) is refused before it is looked up."""

    allowed = _numpy_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load '{module}.{name}': only numpy arrays, numbers and lists may be unpickled"
            ) from None


def _numeric_array(value: Any, source: str, kinds: str = "iuf") -> np.ndarray:
    """``value`` as a numpy array whose dtype kind is one of ``kinds``, or a ``PointDataError`` naming ``source``."""
    try:
        array = np.asarray(value)
    except ValueError as err:
        raise PointDataError(f"{source}: not a rectangular array of numbers ({err})") from err
    if array.dtype.kind not in kinds:
        raise PointDataError(f"{source}: expected numbers, got {type(value).__name__} of dtype {array.dtype}")
    return array


def load_modelnet_dat(path: PathLike) -> tuple[list[np.ndarray], np.ndarray]:
    """Clouds (checked per sample by ``check_cloud``) and labels of a Point-MAE ModelNet40 ``.dat`` file.

    These files are Python pickles of ``[list of (8192, 6|3) float32 arrays, list of (1,) int32 label arrays]``.
    A pickle can name any function to call while loading, so they are read with ``_ArrayUnpickler``: only
    numpy arrays, numbers and lists come out, and a file naming anything else is refused, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise PointDataError(f"{path}: ModelNet40 .dat file not found")
    with path.open("rb") as fh:
        try:
            content = _ArrayUnpickler(fh).load()
        except Exception as err:  # a malformed pickle fails in the unpickler or numpy in many ways; all mean this
            raise PointDataError(f"{path}: not a pickle of point clouds and labels ({err})") from err
    if not isinstance(content, (list, tuple)) or len(content) != 2:
        raise PointDataError(
            f"{path}: expected a pickled [list_of_points, list_of_labels], got {type(content).__name__}"
        )
    clouds, labels = content
    if not isinstance(clouds, (list, tuple)) or not isinstance(labels, (list, tuple, np.ndarray)):
        raise PointDataError(f"{path}: expected a pickled [list_of_points, list_of_labels], got "
                             f"[{type(clouds).__name__}, {type(labels).__name__}]")
    if len(clouds) != len(labels):
        raise PointDataError(f"{path}: {len(clouds)} clouds but {len(labels)} labels")
    label_array = np.zeros(len(labels), dtype=np.int64)
    for i, label in enumerate(labels):
        value = _numeric_array(label, f"{path}: label {i}", kinds="iu")
        if value.size != 1:
            raise PointDataError(f"{path}: label {i} has {value.size} values, expected one class index")
        label_array[i] = value.reshape(())
    return [_numeric_array(c, f"{path}[{i}]").astype(np.float32) for i, c in enumerate(clouds)], label_array


def load_scanobjectnn_h5(path: PathLike) -> tuple[list[np.ndarray], np.ndarray]:
    """Clouds (2048 x 3 each, unchecked) and labels of a ScanObjectNN ``.h5`` file (datasets ``data``, ``label``)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise PointDataError(f"{path}: ScanObjectNN h5 file not found")
    with h5py.File(path, "r") as fh:
        for key in ("data", "label"):
            if key not in fh:
                raise PointDataError(f"{path}: no '{key}' dataset (has {sorted(fh.keys())})")
        data = np.asarray(fh["data"], dtype=np.float32)
        labels = np.asarray(fh["label"]).reshape(-1).astype(np.int64)
    if data.ndim != 3 or data.shape[0] != labels.shape[0]:
        raise PointDataError(f"{path}: 'data' {data.shape} does not match 'label' {labels.shape}")
    return list(data), labels


def read_lines(path: PathLike) -> list[str]:
    """Non-empty stripped lines of a list file (shape names, split lists); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise PointDataError(f"{path}: list file not found")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_json_list(path: PathLike) -> list[str]:
    """A JSON list of strings (ShapeNetPart split files)."""
    entries = read_json(path, "split file", PointDataError, missing=PointDataError)
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise PointDataError(f"{path}: expected a JSON list of 'shape_data/<synset>/<id>' strings")
    return entries
