"""Decoding the frames of one clip from a video file, without decoding the whole video.

PyAV (which ships its own FFmpeg) is the decoder everywhere; torchcodec is used instead when it is importable and
works (it needs a system FFmpeg).  Both are behind :func:`open_video`, which returns a reader with ``num_frames``
and ``frames(indices)``.  The PyAV reader seeks to the keyframe before the first wanted frame, decodes forward only
to the last wanted frame, and converts (and resizes, in FFmpeg's scaler) only the wanted frames, so reading a clip
costs a GOP plus the clip's span, not the video's length.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache
from typing import Literal, Optional, Protocol, Union

import numpy as np

from pathway.data import EVERY_RANK, BadSampleError

log = logging.getLogger(__name__)

Backend = Literal["auto", "pyav", "torchcodec"]
PathLike = Union[str, os.PathLike]


class VideoDecodeError(BadSampleError):
    """A video that cannot be opened or decoded (corrupt, truncated, no video stream); names the file."""


class VideoReader(Protocol):
    num_frames: int

    def frames(self, indices: Sequence[int]) -> np.ndarray: ...

    def close(self) -> None: ...


def output_size(width: int, height: int, short_side: Optional[int]) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to ``short_side`` (unchanged when None)."""
    if short_side is None:
        return width, height
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class PyAVReader:
    """A video file opened with PyAV; ``frames(indices)`` returns uint8 RGB frames ``(N, H, W, 3)``."""

    def __init__(self, path: PathLike, short_side: Optional[int] = None) -> None:
        import av

        self.path = str(path)
        try:
            self._container = av.open(self.path)
        except (av.FFmpegError, OSError) as err:
            raise VideoDecodeError(f"{self.path}: cannot open video ({err})") from err
        if not self._container.streams.video:
            self._container.close()
            raise VideoDecodeError(f"{self.path}: has no video stream")
        self._stream = self._container.streams.video[0]
        rate = self._stream.average_rate or self._stream.guessed_rate
        if not rate:
            self._container.close()
            raise VideoDecodeError(f"{self.path}: video stream has no frame rate")
        self._fps = Fraction(rate)
        self._time_base = Fraction(self._stream.time_base)
        self._start_pts = self._stream.start_time or 0
        self._width, self._height = output_size(self._stream.width, self._stream.height, short_side)
        self.num_frames = self._count_frames()

    def _count_frames(self) -> int:
        if self._stream.frames > 0:
            return int(self._stream.frames)
        if self._stream.duration:
            return max(1, int(round(self._stream.duration * self._time_base * self._fps)))
        if self._container.duration:
            return max(1, int(round(Fraction(self._container.duration, 1_000_000) * self._fps)))
        raise VideoDecodeError(f"{self.path}: cannot tell the number of frames (no frame count or duration)")

    def _index(self, pts: Optional[int]) -> int:
        if pts is None:
            raise VideoDecodeError(f"{self.path}: decoded a frame without a timestamp")
        return int(round((pts - self._start_pts) * self._time_base * self._fps))

    def _decode(self, wanted: list[int], seek: bool) -> dict[int, np.ndarray]:
        """Decode forward from (the keyframe before) ``wanted[0]``; each wanted index gets the first frame at or
        after it.  Returns what was found before the end of the stream."""
        import av

        if seek and wanted[0] > 0:
            target = self._start_pts + int(math.floor(wanted[0] / self._fps / self._time_base))
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
        else:
            self._container.seek(self._start_pts, stream=self._stream, backward=True, any_frame=False)
        found: dict[int, np.ndarray] = {}
        pos = 0
        first = True
        try:
            for frame in self._container.decode(self._stream):
                index = self._index(frame.pts)
                if first and seek and index > wanted[0]:
                    return {}  # the seek overshot (bad index): the caller decodes from the start instead
                first = False
                if index < wanted[pos]:
                    continue
                image = frame.to_ndarray(format="rgb24", width=self._width, height=self._height)
                while pos < len(wanted) and wanted[pos] <= index:
                    found[wanted[pos]] = image
                    pos += 1
                if pos == len(wanted):
                    break
        except av.FFmpegError as err:
            if not found:
                raise VideoDecodeError(f"{self.path}: decoding failed ({err})") from err
            log.warning("%s: decoding stopped early (%s); padding with the last decoded frame", self.path, err,
                        extra=EVERY_RANK)
        return found

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        if len(indices) == 0:
            raise ValueError("frames() needs at least one index")
        wanted = sorted(set(int(i) for i in indices))
        found = self._decode(wanted, seek=True) or self._decode(wanted, seek=False)
        if not found:
            raise VideoDecodeError(f"{self.path}: no frame could be decoded at or after index {wanted[0]}")
        # Frame counts from container metadata can overshoot a truncated file: pad with the last decoded frame.
        last = found[max(found)]
        return np.stack([found.get(int(i), last) for i in indices])

    def close(self) -> None:
        self._container.close()


class TorchCodecReader:
    """A video file opened with torchcodec; same interface as :class:`PyAVReader`."""

    def __init__(self, path: PathLike, short_side: Optional[int] = None) -> None:
        from torchcodec.decoders import VideoDecoder

        self.path = str(path)
        try:
            self._decoder = VideoDecoder(self.path, dimension_order="NHWC", seek_mode="approximate")
        except (RuntimeError, ValueError, OSError) as err:
            raise VideoDecodeError(f"{self.path}: cannot open video ({err})") from err
        self.num_frames = len(self._decoder)
        self._short_side = short_side

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        try:
            data = self._decoder.get_frames_at(indices=[min(int(i), self.num_frames - 1) for i in indices]).data
        except (RuntimeError, IndexError) as err:
            raise VideoDecodeError(f"{self.path}: decoding failed ({err})") from err
        width, height = output_size(data.shape[2], data.shape[1], self._short_side)
        if (height, width) != tuple(data.shape[1:3]):
            data = F.interpolate(data.permute(0, 3, 1, 2).float(), size=(height, width), mode="bilinear",
                                 antialias=True, align_corners=False)
            data = data.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        return data.contiguous().numpy()

    def close(self) -> None:
        del self._decoder


@lru_cache(maxsize=1)
def torchcodec_available() -> bool:
    """Whether torchcodec imports and finds its FFmpeg libraries (checked once per process)."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception as err:  # ImportError, or OSError/RuntimeError when FFmpeg's shared libraries are missing
        log.debug("torchcodec not usable (%s); decoding with PyAV", err)
        return False
    return True


def resolve_backend(backend: Backend) -> Literal["pyav", "torchcodec"]:
    """``auto`` -> torchcodec when usable, else PyAV; an explicit torchcodec request that cannot work is an error."""
    if backend == "auto":
        return "torchcodec" if torchcodec_available() else "pyav"
    if backend == "torchcodec" and not torchcodec_available():
        raise RuntimeError("decoder 'torchcodec' requested but torchcodec is not importable (it needs system FFmpeg)")
    if backend not in ("pyav", "torchcodec"):
        raise ValueError(f"unknown video decoder {backend!r}; expected 'auto', 'pyav' or 'torchcodec'")
    return backend


def open_video(path: PathLike, short_side: Optional[int] = None, backend: Backend = "auto") -> VideoReader:
    """Open ``path`` for clip reading; frames come out with their shorter side scaled to ``short_side``."""
    if resolve_backend(backend) == "torchcodec":
        return TorchCodecReader(path, short_side)
    return PyAVReader(path, short_side)
