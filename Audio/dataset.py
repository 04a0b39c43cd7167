"""The audio clip dataset: records -> ``([1, target_length, mel] fbank, target)``.

Training-time augmentation follows AudioMAE: a random circular time roll and random magnitude of each waveform
(``roll_magnitude``, its ``roll_mag_aug``), waveform mixup inside the dataset (``λ ~ Beta(α, α)``, labels mixed with
the same λ), and SpecAugment on the normalised fbank.

Targets: a float multi-hot vector for multi-label data; for single-label data the class index, or — when this
dataset mixes waveforms — a float soft one-hot vector, so every batch of one loader has one target type.

An unusable file raises ``AudioFileError`` naming it; the DataModule wraps the dataset in
``pathway.data.SkippingDataset``, which turns that into a counted skip or a hard error (``on_bad_file``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from Audio.audio_io import read_audio
from Audio.features import SpecAugment, normalize, pad_or_cut, waveform_to_fbank
from Audio.labels import AudioRecord


def roll_magnitude(wave: Tensor) -> Tensor:
    """``wave`` rolled by a random number of samples and scaled by a random magnitude ``Beta(10, 10) + 0.5``."""
    shift = int(np.random.randint(wave.numel()))
    return wave.roll(shift) * float(np.random.beta(10, 10) + 0.5)


@dataclass(frozen=True)
class FbankSettings:
    """How a waveform becomes the model's input; defaults are AudioSet's (AudioMAE).

    Args:
        sample_rate: the waveform is resampled to this rate before the fbank is taken.
        target_length: fbank frames per clip (zero-padded or cut).
        mean / std: the dataset's fbank statistics the features are normalised with.
    """

    sample_rate: int = 16000
    num_mel_bins: int = 128
    target_length: int = 1024
    mean: float = -4.2677393
    std: float = 4.5689974

    def __post_init__(self) -> None:
        if self.std <= 0:
            raise ValueError(f"fbank std must be > 0, got {self.std}")

    def raw(self, wave: Tensor) -> Tensor:
        """Un-normalised, un-padded fbank (what dataset statistics are computed over)."""
        return waveform_to_fbank(wave, self.sample_rate, self.num_mel_bins)

    def __call__(self, wave: Tensor) -> Tensor:
        """``[target_length, num_mel_bins]`` normalised fbank."""
        return normalize(pad_or_cut(self.raw(wave), self.target_length), self.mean, self.std)


class AudioClipDataset(Dataset):
    """Fbank features ``[1, target_length, num_mel_bins]`` and targets for a list of ``AudioRecord``s."""

    def __init__(
        self,
        records: Sequence[AudioRecord],
        num_classes: int,
        multilabel: bool,
        fbank: FbankSettings = FbankSettings(),
        train: bool = False,
        freqm: int = 0,
        timem: int = 0,
        mixup: float = 0.0,
        mixup_alpha: float = 10.0,
        roll: bool = False,
    ) -> None:
        if not records:
            raise ValueError("AudioClipDataset needs at least one record")
        if not 0.0 <= mixup <= 1.0:
            raise ValueError(f"mixup is a probability in [0, 1], got {mixup}")
        for record in records:
            bad = [label for label in record.labels if not 0 <= label < num_classes]
            if bad or not record.labels:
                raise ValueError(f"{record.path}: label(s) {list(record.labels)} outside 0..{num_classes - 1}")
        self.records = list(records)
        self.num_classes = num_classes
        self.multilabel = multilabel
        self.fbank = fbank
        self.train = train
        self.mixup = mixup if train else 0.0
        self.mixup_alpha = mixup_alpha
        self.roll = roll and train
        self.spec_augment = SpecAugment(freqm, timem) if train and (freqm > 0 or timem > 0) else None
        self.soft_targets = multilabel or self.mixup > 0

    def __len__(self) -> int:
        return len(self.records)

    def _label_vector(self, record: AudioRecord) -> Tensor:
        target = torch.zeros(self.num_classes)
        target[list(record.labels)] = 1.0
        return target

    def _wave(self, index: int) -> Tensor:
        wave = read_audio(self.records[index].path, self.fbank.sample_rate)
        return roll_magnitude(wave) if self.roll else wave

    def raw_fbank(self, index: int) -> Tensor:
        """Un-normalised, un-padded, un-augmented fbank of one record (for computing dataset statistics)."""
        return self.fbank.raw(read_audio(self.records[index].path, self.fbank.sample_rate))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        wave = self._wave(index)
        record = self.records[index]
        if self.soft_targets:
            target = self._label_vector(record)
        else:
            target = torch.tensor(record.labels[0], dtype=torch.long)
        if self.mixup > 0 and np.random.rand() < self.mixup:
            other_index = int(np.random.randint(len(self.records)))
            other = self._wave(other_index)
            other = torch.nn.functional.pad(other, (0, max(0, wave.numel() - other.numel())))[: wave.numel()]
            lam = float(np.random.beta(self.mixup_alpha, self.mixup_alpha))
            wave = lam * wave + (1.0 - lam) * other
            target = lam * target + (1.0 - lam) * self._label_vector(self.records[other_index])
        fbank = self.fbank(wave)
        if self.spec_augment is not None:
            fbank = self.spec_augment(fbank)
        return fbank.unsqueeze(0), target
