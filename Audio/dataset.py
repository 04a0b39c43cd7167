"""The audio clip dataset: records -> ``([1, target_length, mel] fbank, target)``.

Training-time augmentation follows AudioMAE: a random circular time roll and random magnitude of each waveform
(``draw_roll``, its ``roll_mag_aug``), waveform mixup inside the dataset (``λ ~ Beta(α, α)``, labels mixed with
the same λ), and SpecAugment on the normalised fbank.

A clip is its first ``target_length`` fbank frames, so only the samples those need (``FbankSettings.samples``) are
read; with the roll, the ones a roll of the whole file would bring to the front (``Audio.audio_io.AudioFile.read``).
Files no longer than that (AudioSet's 10 s, ESC-50's 5 s clips at the default 1024 frames) are read whole, exactly
as before; for longer ones the DC offset removed before the fbank is the read part's mean, not the whole file's.

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

from Audio.audio_io import AudioFile, min_samples
from Audio.features import FRAME_SHIFT_MS, SpecAugment, normalize, pad_or_cut, waveform_to_fbank
from Audio.labels import AudioRecord


def draw_roll(length: int) -> tuple[int, float]:
    """A random circular shift of a ``length``-sample waveform and a random magnitude ``Beta(10, 10) + 0.5``, as
    ``(the sample the rolled waveform starts at, magnitude)``: rolling by ``shift`` starts at ``length - shift``."""
    shift = int(np.random.randint(length))
    return (length - shift) % length, float(np.random.beta(10, 10) + 0.5)


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

    @property
    def samples(self) -> int:
        """The waveform samples the first ``target_length`` fbank frames are computed from."""
        return min_samples(self.sample_rate) + (self.target_length - 1) * int(self.sample_rate * FRAME_SHIFT_MS / 1000)

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

    def _wave(self, index: int, roll: bool) -> Tensor:
        """The samples of one record the clip's fbank frames need, rolled and scaled with ``roll``."""
        with AudioFile(self.records[index].path, self.fbank.sample_rate) as audio:
            if not roll:
                return audio.read(0, self.fbank.samples)
            start, magnitude = draw_roll(audio.length)
            return audio.read(start, self.fbank.samples) * magnitude

    def raw_fbank(self, index: int) -> Tensor:
        """Un-normalised, un-padded, un-augmented fbank of the frames one clip uses (for dataset statistics)."""
        return self.fbank.raw(self._wave(index, roll=False))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        wave = self._wave(index, self.roll)
        record = self.records[index]
        if self.soft_targets:
            target = self._label_vector(record)
        else:
            target = torch.tensor(record.labels[0], dtype=torch.long)
        if self.mixup > 0 and np.random.rand() < self.mixup:
            other_index = int(np.random.randint(len(self.records)))
            other = self._wave(other_index, self.roll)
            other = torch.nn.functional.pad(other, (0, max(0, wave.numel() - other.numel())))[: wave.numel()]
            lam = float(np.random.beta(self.mixup_alpha, self.mixup_alpha))
            wave = lam * wave + (1.0 - lam) * other
            target = lam * target + (1.0 - lam) * self._label_vector(self.records[other_index])
        fbank = self.fbank(wave)
        if self.spec_augment is not None:
            fbank = self.spec_augment(fbank)
        return fbank.unsqueeze(0), target
