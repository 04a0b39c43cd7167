"""Clip transforms: frames ``(T, H, W, 3)`` uint8 in, a normalised clip tensor ``(C, T, H, W)`` out.

Every random choice is made once per clip and applied to all of its frames (the same crop box, the same flip, the
same RandAugment ops and magnitudes, the same erased box), so augmentation never introduces motion that is not in
the video.  Mixup/cutmix happen later, on the batch, in the shared classifier.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np
import torch
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor

PILTransform = Callable[[Image.Image], Image.Image]


def to_clip_tensor(frames: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(T, H, W, 3)`` uint8 -> normalised float ``(3, T, H, W)``; laid out channels-first while still uint8, so
    the float arithmetic runs on contiguous memory."""
    clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).contiguous().float()
    return clip.sub_(torch.tensor(mean).view(3, 1, 1, 1) * 255.0).div_(torch.tensor(std).view(3, 1, 1, 1) * 255.0)


def apply_same_random_ops(transform: PILTransform, images: Sequence[Image.Image]) -> list[Image.Image]:
    """Apply a random PIL transform to every image with the same random draws.

    timm's RandAugment draws its ops from NumPy's and magnitudes/interpolations from Python's global generators;
    restoring both states before each frame makes every frame get exactly the first frame's draws.  The generators
    end where one call would have left them, so successive clips still differ.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    out = []
    for image in images:
        random.setstate(py_state)
        np.random.set_state(np_state)
        out.append(transform(image))
    return out


def random_resized_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: random.Random
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of an Inception-style random crop; falls back to the central crop."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def erase_box(clip: Tensor, probability: float, rng: random.Random,
              area: tuple[float, float] = (0.02, 1 / 3), min_aspect: float = 0.3) -> Tensor:
    """Random erasing ('pixel' mode: per-pixel normal noise) of one box, the same box and noise in every frame."""
    if rng.random() >= probability:
        return clip
    _, _, height, width = clip.shape
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    for _ in range(10):
        target = rng.uniform(*area) * height * width
        aspect = math.exp(rng.uniform(*log_aspect))
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if 0 < h < height and 0 < w < width:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            clip[:, :, top:top + h, left:left + w] = torch.randn(clip.shape[0], 1, h, w, dtype=clip.dtype)
            return clip
    return clip


class TrainClipTransform:
    """Random resized crop + horizontal flip + RandAugment + normalisation + random erasing, per clip."""

    def __init__(
        self,
        img_size: int = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        auto_augment: Optional[str] = "rand-m7-n4-mstd0.5-inc1",
        reprob: float = 0.25,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        self.img_size = img_size
        self.scale, self.ratio, self.hflip, self.reprob = tuple(scale), tuple(ratio), hflip, reprob
        self.mean, self.std = tuple(mean), tuple(std)
        self.rand_augment: Optional[PILTransform] = None
        if auto_augment:
            hparams = dict(
                translate_const=int(img_size * 0.45),
                img_mean=tuple(round(255 * m) for m in self.mean),
                interpolation=Image.BICUBIC,
            )
            self.rand_augment = rand_augment_transform(auto_augment, hparams)

    def __call__(self, frames: np.ndarray, rng: Optional[random.Random] = None) -> Tensor:
        rng = rng or random.Random(random.getrandbits(64))
        _, height, width, _ = frames.shape
        top, left, h, w = random_resized_box(height, width, self.scale, self.ratio, rng)
        flip = rng.random() < self.hflip
        images = []
        for frame in frames:
            image = Image.fromarray(frame).resize(
                (self.img_size, self.img_size), Image.BILINEAR, box=(left, top, left + w, top + h)
            )
            images.append(image.transpose(Image.FLIP_LEFT_RIGHT) if flip else image)
        if self.rand_augment is not None:
            images = apply_same_random_ops(self.rand_augment, images)
        clip = to_clip_tensor(np.stack([np.asarray(image) for image in images]), self.mean, self.std)
        return erase_box(clip, self.reprob, rng)


def spatial_crop_offsets(length: int, size: int, num_crops: int) -> list[int]:
    """Start offsets of ``num_crops`` crops of ``size`` spread evenly over ``length`` (one: the centre)."""
    if size > length:
        raise ValueError(f"crop size {size} is larger than the frame side {length}")
    if num_crops == 1:
        return [(length - size) // 2]
    return [round(k * (length - size) / (num_crops - 1)) for k in range(num_crops)]


class EvalClipTransform:
    """Crop ``img_size`` squares from frames whose shorter side is already ``img_size`` (decoder-resized).

    ``crop_index`` picks one of ``num_crops`` crops spread along the longer side (the 3-crop test); one crop is the
    centre crop of validation.
    """

    def __init__(
        self,
        img_size: int = 224,
        num_crops: int = 1,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        self.img_size, self.num_crops = img_size, num_crops
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, frames: np.ndarray, crop_index: int = 0) -> Tensor:
        _, height, width, _ = frames.shape
        if not 0 <= crop_index < self.num_crops:
            raise ValueError(f"crop_index {crop_index} out of range for {self.num_crops} crops")
        size = self.img_size
        if height >= width:
            top, left = spatial_crop_offsets(height, size, self.num_crops)[crop_index], (width - size) // 2
        else:
            top, left = (height - size) // 2, spatial_crop_offsets(width, size, self.num_crops)[crop_index]
        if top < 0 or left < 0:
            raise ValueError(f"frames of {height}x{width} are smaller than the {size}x{size} crop")
        return to_clip_tensor(frames[:, top:top + size, left:left + size], self.mean, self.std)
