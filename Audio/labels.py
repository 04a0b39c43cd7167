"""Turning the three supported dataset layouts into lists of ``(audio path, class indices)`` records.

* AudioSet style: a JSON ``{"data": [{"wav": path, "labels": "mid1,mid2"}, ...]}`` plus a
  ``class_labels_indices.csv`` (columns ``index,mid,display_name``); multi-label.
* ESC-50: ``meta/esc50.csv`` (columns ``filename,fold,target,category,...``) and ``audio/*.wav``; one fold is the
  validation split.
* Folder per class: ``root/<split>/<class>/*.wav|flac|ogg``; classes are the sorted class sub-folders
  (``pathway.data.class_folders``).

Label problems (an unknown mid, a target outside the class range, a validation class absent from training) are
errors naming the file and the label, raised before training starts rather than mid-epoch.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from pathway.data import read_json

AUDIO_SUFFIXES: frozenset[str] = frozenset({".wav", ".flac", ".ogg"})

PathLike = Union[str, os.PathLike]


class LabelError(ValueError):
    """A label file or label value that does not fit the dataset's class list; the message names both."""


@dataclass(frozen=True)
class AudioRecord:
    """One audio clip and the indices of its classes."""

    path: Path
    labels: tuple[int, ...]


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label file not found")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in columns]
        if missing:
            raise LabelError(
                f"{path}: missing column(s) {missing}; expected at least {list(required)}, found {columns}"
            )
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def read_audioset_classes(label_csv: PathLike) -> tuple[dict[str, int], list[str]]:
    """``class_labels_indices.csv`` -> ({mid: index}, display names by index); indices must be 0..N-1."""
    path = Path(label_csv)
    rows = _read_csv(path, ("index", "mid", "display_name"))
    if not rows:
        raise LabelError(f"{path}: no classes listed")
    mid_to_index: dict[str, int] = {}
    names: dict[int, str] = {}
    for line, row in enumerate(rows, start=2):
        try:
            index = int(row["index"])
        except ValueError as err:
            raise LabelError(f"{path}: line {line}: index '{row['index']}' is not an integer") from err
        if row["mid"] in mid_to_index or index in names:
            raise LabelError(f"{path}: line {line}: duplicate mid '{row['mid']}' or index {index}")
        mid_to_index[row["mid"]] = index
        names[index] = row["display_name"]
    if sorted(names) != list(range(len(names))):
        raise LabelError(f"{path}: class indices must be 0..{len(names) - 1} without gaps")
    return mid_to_index, [names[i] for i in range(len(names))]


def read_audioset_json(
    json_path: PathLike, mid_to_index: dict[str, int], label_csv: PathLike = ""
) -> list[AudioRecord]:
    """An AudioSet-style JSON -> records; relative ``wav`` paths are taken relative to the JSON's folder."""
    path = Path(json_path)
    content = read_json(path, "dataset JSON", LabelError)
    entries = content.get("data") if isinstance(content, dict) else None
    if not isinstance(entries, list):
        raise LabelError(f'{path}: expected {{"data": [{{"wav": ..., "labels": "mid1,mid2"}}, ...]}}')
    records = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "wav" not in entry or "labels" not in entry:
            raise LabelError(f"{path}: entry {i} needs 'wav' and 'labels' keys, got {entry!r:.200}")
        wav = Path(entry["wav"])
        wav = wav if wav.is_absolute() else path.parent / wav
        mids = [m.strip() for m in str(entry["labels"]).split(",") if m.strip()]
        if not mids:
            raise LabelError(f"{path}: entry {i} ({wav}) has no labels")
        unknown = [m for m in mids if m not in mid_to_index]
        if unknown:
            raise LabelError(
                f"{path}: entry {i} ({wav}): label(s) {unknown} not in the class list {label_csv or '(label_csv)'}"
            )
        records.append(AudioRecord(wav, tuple(sorted({mid_to_index[m] for m in mids}))))
    return records


def read_esc50(root: PathLike, val_fold: int) -> tuple[list[AudioRecord], list[AudioRecord], list[str]]:
    """ESC-50 -> (train records, validation records of ``val_fold``, class names by target)."""
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    rows = _read_csv(meta, ("filename", "fold", "target", "category"))
    categories: dict[int, str] = {}
    parsed = []
    for row in rows:
        try:
            fold, target = int(row["fold"]), int(row["target"])
        except ValueError as err:
            raise LabelError(
                f"{meta}: {row['filename']}: fold '{row['fold']}' / target '{row['target']}' must be integers"
            ) from err
        if target < 0:
            raise LabelError(f"{meta}: {row['filename']}: negative target {target}")
        if categories.setdefault(target, row["category"]) != row["category"]:
            raise LabelError(
                f"{meta}: {row['filename']}: target {target} is '{row['category']}' here but "
                f"'{categories[target]}' elsewhere"
            )
        parsed.append((root / "audio" / row["filename"], fold, target))
    if not parsed:
        raise LabelError(f"{meta}: no clips listed")
    if sorted(categories) != list(range(len(categories))):
        raise LabelError(f"{meta}: targets must be 0..{len(categories) - 1} without gaps, found {sorted(categories)}")
    folds = sorted({fold for _, fold, _ in parsed})
    if val_fold not in folds:
        raise LabelError(f"{meta}: validation fold {val_fold} not among the folds {folds}")
    train = [AudioRecord(p, (t,)) for p, fold, t in parsed if fold != val_fold]
    val = [AudioRecord(p, (t,)) for p, fold, t in parsed if fold == val_fold]
    return train, val, [categories[i] for i in range(len(categories))]


def class_balanced_weights(records: Sequence[AudioRecord], num_classes: int) -> list[float]:
    """Per-clip sampling weights that balance the classes, as AudioMAE's ``gen_weight.py`` writes them.

    A class seen ``n`` times weighs ``1000 / (n + 0.01)``; a clip weighs the sum over its labels, so clips of rare
    classes (and clips carrying several of them) are drawn more often.
    """
    counts = [0] * num_classes
    for record in records:
        for label in record.labels:
            counts[label] += 1
    label_weight = [1000.0 / (n + 0.01) for n in counts]
    return [sum(label_weight[label] for label in record.labels) for record in records]


def read_sample_weights(path: PathLike, num_records: int) -> list[float]:
    """A weight file (one number per training clip, the order of the training list; AudioMAE's ``--weight_csv``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sample weight file not found")
    try:
        weights = [float(line.split(",")[0]) for line in path.read_text().splitlines() if line.strip()]
    except ValueError as err:
        raise LabelError(f"{path}: expected one number per line ({err})") from err
    if len(weights) != num_records:
        raise LabelError(f"{path}: {len(weights)} weights but the training split has {num_records} clips")
    return weights


def read_folder_split(split_dir: PathLike, classes: list[str]) -> list[AudioRecord]:
    """``split_dir/<class>/*.wav|flac|ogg`` -> records; a class folder not in ``classes`` is an error."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: split folder not found")
    index = {name: i for i, name in enumerate(classes)}
    records = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if class_dir.name not in index:
            raise LabelError(f"{class_dir}: class '{class_dir.name}' is not a training class ({classes})")
        files = sorted(f for f in class_dir.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES and f.is_file())
        records.extend(AudioRecord(f, (index[class_dir.name],)) for f in files)
    if not records:
        raise LabelError(f"{split_dir}: no audio files ({sorted(AUDIO_SUFFIXES)}) in any class folder")
    return records
