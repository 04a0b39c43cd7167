"""Waveform -> normalised kaldi log-mel filterbank, the input of AudioMAE/AST-style audio ViTs.

The settings (128 mel bins, 25 ms hanning frames every 10 ms, htk-compatible, no dither, zero-padding to a fixed
number of frames, ``(x - mean) / (2 * std)``) are the ones AudioMAE checkpoints were trained on, so a loaded
checkpoint sees the input distribution it expects.  The factor 2 is that convention (AST/AudioMAE), not a typo:
normalised features have standard deviation ~0.5.
"""
from __future__ import annotations

import torch
import torchaudio
from torch import Tensor, nn

FRAME_SHIFT_MS = 10.0


def waveform_to_fbank(wave: Tensor, sample_rate: int, num_mel_bins: int = 128) -> Tensor:
    """1-D waveform -> ``[frames, num_mel_bins]`` log-mel fbank (the DC offset is removed first)."""
    if wave.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {tuple(wave.shape)}")
    wave = wave - wave.mean()
    return torchaudio.compliance.kaldi.fbank(
        wave.unsqueeze(0),
        htk_compat=True,
        sample_frequency=float(sample_rate),
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=FRAME_SHIFT_MS,
    )


def pad_or_cut(fbank: Tensor, target_length: int) -> Tensor:
    """Zero-pad at the end or cut to exactly ``target_length`` frames."""
    frames = fbank.shape[0]
    if frames < target_length:
        return torch.nn.functional.pad(fbank, (0, 0, 0, target_length - frames))
    return fbank[:target_length]


def normalize(fbank: Tensor, mean: float, std: float) -> Tensor:
    """``(fbank - mean) / (2 * std)``: the AST/AudioMAE normalisation with the dataset's fbank mean and std."""
    return (fbank - mean) / (2.0 * std)


def frames_for(num_samples: int, sample_rate: int) -> int:
    """How many fbank frames ``waveform_to_fbank`` returns for ``num_samples`` samples (kaldi snip_edges)."""
    window = int(sample_rate * 0.025)
    shift = int(sample_rate * FRAME_SHIFT_MS / 1000.0)
    return 0 if num_samples < window else 1 + (num_samples - window) // shift


class SpecAugment(nn.Module):
    """One frequency band and one time span masked to 0 (the dataset mean after normalisation).

    Band widths are drawn uniformly from ``[0, freqm)`` mel bins and ``[0, timem)`` frames (torchaudio's
    ``FrequencyMasking``/``TimeMasking``); 0 disables either mask.
    """

    def __init__(self, freqm: int = 48, timem: int = 192) -> None:
        super().__init__()
        if freqm < 0 or timem < 0:
            raise ValueError(f"SpecAugment mask widths must be >= 0, got freqm={freqm}, timem={timem}")
        self.freqm = freqm
        self.timem = timem
        self.freq_mask = torchaudio.transforms.FrequencyMasking(freqm) if freqm > 0 else None
        self.time_mask = torchaudio.transforms.TimeMasking(timem) if timem > 0 else None

    def forward(self, fbank: Tensor) -> Tensor:
        """``[frames, mel]`` -> the same shape with the masked band/span set to 0."""
        spec = fbank.transpose(0, 1).unsqueeze(0)
        if self.freq_mask is not None:
            spec = self.freq_mask(spec)
        if self.time_mask is not None:
            spec = self.time_mask(spec)
        return spec.squeeze(0).transpose(0, 1)
