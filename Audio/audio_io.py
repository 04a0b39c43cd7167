"""Reading audio files into mono float waveforms at the model's sample rate.

``torchaudio.load`` needs torchcodec and a system FFmpeg, which this stack lacks, so files are read with
``soundfile`` (libsndfile: wav, flac, ogg, ...).  Every way a file can be unusable (unreadable, empty, too short
for one analysis window, non-finite samples) becomes one ``AudioFileError`` naming the file, so the dataset can
either stop with a clear message or count the file as skipped.
"""
from __future__ import annotations

import os
from typing import Union

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor

from pathway.data import BadSampleError

# kaldi fbank frames are 25 ms long: a waveform shorter than one frame has no features at all.
FRAME_LENGTH_MS = 25.0


class AudioFileError(BadSampleError, ValueError):
    """An audio file that cannot be turned into features; the message names the file and the reason."""


def min_samples(sample_rate: int) -> int:
    """The shortest waveform (in samples) that yields at least one fbank frame."""
    return int(sample_rate * FRAME_LENGTH_MS / 1000.0)


def read_audio(path: Union[str, os.PathLike], sample_rate: int) -> Tensor:
    """Read ``path`` as a 1-D float32 waveform at ``sample_rate`` (channels averaged, resampled if needed)."""
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError, ValueError) as err:
        raise AudioFileError(f"{path}: cannot read audio ({err})") from err
    if data.shape[0] == 0:
        raise AudioFileError(f"{path}: contains no audio samples")
    if not np.isfinite(data).all():
        raise AudioFileError(f"{path}: contains NaN or infinite samples")
    wave = torch.from_numpy(data).mean(dim=1)
    if file_rate != sample_rate:
        wave = AF.resample(wave, orig_freq=int(file_rate), new_freq=int(sample_rate))
    if wave.numel() < min_samples(sample_rate):
        raise AudioFileError(
            f"{path}: {wave.numel()} samples at {sample_rate} Hz is shorter than one {FRAME_LENGTH_MS:g} ms "
            f"analysis window ({min_samples(sample_rate)} samples)"
        )
    return wave
