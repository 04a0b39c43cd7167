"""Dataset fbank mean/std, the ``data.mean`` / ``data.std`` normalisation constants.

``python -m Audio.stats --format esc50 --root /data/ESC-50`` prints them ready to paste into a config's
``data:`` section.  Statistics are taken over the real (un-padded) frames of the training split, without
augmentation, in float64.
"""
from __future__ import annotations

import logging
from typing import Literal, Optional

import numpy as np
import torch

from Audio.audio_io import AudioFileError
from Audio.datamodule import AudioDataModule
from Audio.dataset import AudioClipDataset
from pathway.data import log_progress

log = logging.getLogger(__name__)


def fbank_stats(dataset: AudioClipDataset, max_files: Optional[int] = None, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of every fbank value of ``dataset`` (a random subset of ``max_files`` clips if given)."""
    indices = np.arange(len(dataset))
    if max_files is not None and max_files < len(indices):
        indices = np.sort(np.random.default_rng(seed).choice(indices, size=max_files, replace=False))
    total = total_sq = torch.zeros((), dtype=torch.float64)
    count = skipped = 0
    for index in log_progress(indices, len(indices), "fbank_stats: clips read"):
        try:
            fbank = dataset.raw_fbank(int(index)).double()
        except AudioFileError as err:
            skipped += 1
            log.warning("fbank_stats: skipping %s", err)
            continue
        total = total + fbank.sum()
        total_sq = total_sq + fbank.square().sum()
        count += fbank.numel()
    if count == 0:
        raise AudioFileError(f"fbank_stats: none of the {len(indices)} clips could be read")
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    if skipped:
        log.warning("fbank_stats: %d of %d clips skipped", skipped, len(indices))
    return float(mean), float(std)


def dataset_fbank_stats(
    format: Literal["audioset", "esc50", "folder"],
    root: Optional[str] = None,
    train_json: Optional[str] = None,
    label_csv: Optional[str] = None,
    val_fold: int = 1,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    max_files: Optional[int] = None,
) -> dict[str, float]:
    """Fbank mean/std of a dataset's training split, as the DataModule would read it.

    Args:
        format: dataset layout, as ``data.format``.
        root: ESC-50 or folder-per-class root.
        train_json: AudioSet-style training JSON.
        label_csv: AudioSet ``class_labels_indices.csv``.
        val_fold: ESC-50 fold excluded from the statistics.
        sample_rate: resampling rate, as ``data.sample_rate``.
        num_mel_bins: mel bins, as ``data.num_mel_bins``.
        max_files: use a random subset of this many clips (AudioSet has millions).
    """
    datamodule = AudioDataModule(
        format=format, root=root, train_json=train_json, label_csv=label_csv, val_fold=val_fold,
        sample_rate=sample_rate, num_mel_bins=num_mel_bins,
    )
    mean, std = fbank_stats(datamodule.build_dataset("train", augment=False), max_files=max_files)
    return {"mean": mean, "std": std}


def main() -> None:
    from jsonargparse import CLI

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = CLI(dataset_fbank_stats, as_positional=False)
    print(f"mean: {result['mean']:.7g}\nstd: {result['std']:.7g}")


if __name__ == "__main__":
    main()
