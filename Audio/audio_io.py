"""Reading audio files into mono float waveforms at the model's sample rate.

``torchaudio.load`` needs torchcodec and a system FFmpeg, which this stack lacks, so files are read with
``soundfile`` (libsndfile: wav, flac, ogg, ...).  Every way a file can be unusable (unreadable, empty, too short
for one analysis window, non-finite samples) becomes one ``AudioFileError`` naming the file, so the dataset can
either stop with a clear message or count the file as skipped.

A clip uses only its first ``target_length`` fbank frames, so ``AudioFile.read`` reads only the samples those need:
an hour-long file costs what a ten-second one does.  Resampling a part of a file reads enough neighbouring samples
for the resampling filter to see what it sees when the whole file is resampled.
"""
from __future__ import annotations

import math
import os
from types import TracebackType
from typing import Optional, Union

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor

from pathway.data import BadSampleError

# kaldi fbank frames are 25 ms long: a waveform shorter than one frame has no features at all.
FRAME_LENGTH_MS = 25.0
# ``AF.resample``'s defaults, which set how far its sinc filter reaches: 6 zero crossings at rolloff 0.99.
_LOWPASS_FILTER_WIDTH = 6
_ROLLOFF = 0.99
_SOUNDFILE_ERRORS = (sf.LibsndfileError, RuntimeError, OSError, TypeError, ValueError)


class AudioFileError(BadSampleError, ValueError):
    """An audio file that cannot be turned into features; the message names the file and the reason."""


def min_samples(sample_rate: int) -> int:
    """The shortest waveform (in samples) that yields at least one fbank frame."""
    return int(sample_rate * FRAME_LENGTH_MS / 1000.0)


class AudioFile:
    """An open audio file, read as mono float32 at ``sample_rate``, whole or in parts (a context manager).

    ``length`` is the file's length in samples at ``sample_rate`` (what resampling the whole file gives).
    """

    def __init__(self, path: Union[str, os.PathLike], sample_rate: int) -> None:
        self.path = path
        self.sample_rate = sample_rate
        try:
            self._file = sf.SoundFile(str(path))
        except _SOUNDFILE_ERRORS as err:
            raise AudioFileError(f"{path}: cannot read audio ({err})") from err
        self.file_rate = int(self._file.samplerate)
        self.frames = int(self._file.frames)
        divisor = math.gcd(self.file_rate, sample_rate)
        self._block_in, self._block_out = self.file_rate // divisor, sample_rate // divisor
        self.length = math.ceil(self.frames * self._block_out / self._block_in)
        if self.frames == 0:
            self.close()
            raise AudioFileError(f"{path}: contains no audio samples")
        if self.length < min_samples(sample_rate):
            self.close()
            raise AudioFileError(
                f"{path}: {self.length} samples at {sample_rate} Hz is shorter than one {FRAME_LENGTH_MS:g} ms "
                f"analysis window ({min_samples(sample_rate)} samples)"
            )

    def __enter__(self) -> AudioFile:
        return self

    def __exit__(self, kind: Optional[type], value: Optional[BaseException], trace: Optional[TracebackType]) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def read(self, start: int = 0, count: Optional[int] = None) -> Tensor:
        """Samples ``start .. start + count`` at ``sample_rate``, continuing from the file's beginning past its end
        (the roll augmentation's circular shift); all ``length`` samples, from ``start``, when ``count`` is ``None``
        or not less than ``length``."""
        if not 0 <= start < self.length:
            raise ValueError(f"start {start} outside the {self.length} samples of {self.path}")
        if count is None or count >= self.length:
            wave = self._resampled(0, self.frames)
            return wave.roll(-start) if start else wave
        end = start + count
        if end <= self.length:
            return self._part(start, end)
        return torch.cat([self._part(start, self.length), self._part(0, end - self.length)])

    def _part(self, start: int, end: int) -> Tensor:
        """Output samples ``start .. end``: whole resampling blocks around them, with context either side."""
        if self.file_rate == self.sample_rate:
            return self._resampled(start, end)
        reach = math.ceil(_LOWPASS_FILTER_WIDTH * self._block_in / (_ROLLOFF * min(self._block_in, self._block_out)))
        context = math.ceil(reach / self._block_in)  # whole blocks, covering the filter's reach in input frames
        first = max(0, start // self._block_out - context)
        last = -(-end // self._block_out) + context
        wave = self._resampled(first * self._block_in, min(self.frames, last * self._block_in))
        offset = start - first * self._block_out
        return wave[offset:offset + end - start]

    def _resampled(self, first: int, last: int) -> Tensor:
        """File frames ``first .. last`` averaged over channels and resampled to ``sample_rate``."""
        try:
            self._file.seek(first)
            data = self._file.read(last - first, dtype="float32", always_2d=True)
        except _SOUNDFILE_ERRORS as err:
            raise AudioFileError(f"{self.path}: cannot read audio ({err})") from err
        if data.shape[0] != last - first:
            raise AudioFileError(f"{self.path}: its header lists {self.frames} frames, but frames {first}..{last} "
                                 f"gave only {data.shape[0]} (truncated file?)")
        if not np.isfinite(data).all():
            raise AudioFileError(f"{self.path}: contains NaN or infinite samples")
        wave = torch.from_numpy(data).mean(dim=1)
        if self.file_rate != self.sample_rate:
            wave = AF.resample(wave, orig_freq=self.file_rate, new_freq=self.sample_rate)
        return wave

