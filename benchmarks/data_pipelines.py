"""Does the data loader or the model bound training?  Loader samples/s per worker beside training-step samples/s.

Per modality, on generated data in the shape of the paper recipes:
  * loader: the modality's DataModule ``train_dataloader`` with ``num_workers=0`` (one process = one worker's
    throughput: decoding + the recipe's training augmentation + collation);
  * model: forward + backward + AdamW step of the modality's backbone with a pathway (one frozen aux), tiny
    (width 64, depth 4) and ViT-B size, on batches of the loader's own tensors (fp32 on CPU, bf16-mixed on CUDA).
Workers needed to keep a model fed ≈ model samples/s ÷ loader samples/s per worker.

Image: random-texture JPEGs of 500x375 (``Image.synthetic``; ImageNet's typical size), RandAugment m9 + random
erasing, 224².
Audio: 10.24 s synthetic tones (``Audio.synthetic``), kaldi fbank 1024x128, SpecAugment, roll, wave mixup.
Point: synthetic shapes (``Point.synthetic``) of 8192 points, FPS to 1024, scale/shift augmentation.
Video: ``benchmarks/video_pipeline.py`` (the Video benchmark's own loader and step functions), 16x4 clips at 224².

    .venv/bin/python benchmarks/data_pipelines.py
    .venv/bin/python benchmarks/data_pipelines.py --quick            # tiny models only, few samples
"""
from __future__ import annotations

import os

# Set before torch loads libgomp: spinning OpenMP threads on a CPU shared with other work run up to ~80x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import importlib
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench_utils import autocast_for, describe_machine, pick_device, precision_name, print_table, synchronize
from pathway import reparameterize_aux_into_target_model

TINY = dict(embed_dim=64, depth=4, num_heads=4)
BASE = dict(embed_dim=768, depth=12, num_heads=12)


def loader_rate(datamodule, batches: int) -> tuple[float, Tensor, Tensor]:
    """Samples/s of one worker over ``batches`` batches after a warm-up batch; also returns the first batch."""
    datamodule.setup("fit")
    iterator = iter(datamodule.train_dataloader())
    first = next(iterator)
    samples, start = 0, time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        samples += batch[0].shape[0]
    return samples / (time.perf_counter() - start), first[0], first[1]


def step_rate(backbone: nn.Module, x: Tensor, y: Tensor, batch: int, steps: int, device: torch.device) -> float:
    """Training samples/s of ``backbone`` with a pathway from a same-shaped aux (random weights: cost, not accuracy)."""
    aux = {k: torch.randn_like(v) for k, v in backbone.state_dict().items() if ".attn." in k or ".mlp." in k}
    reparameterize_aux_into_target_model(backbone, aux)
    backbone = backbone.to(device).train()
    optimizer = torch.optim.AdamW([p for p in backbone.parameters() if p.requires_grad], lr=1e-5)
    repeat = -(-batch // x.shape[0])
    x = x.repeat(repeat, *([1] * (x.ndim - 1)))[:batch].to(device)
    y = y.repeat(repeat, *([1] * (y.ndim - 1)))[:batch].to(device)
    autocast = autocast_for(device)

    def step() -> None:
        with autocast():
            logits = backbone(x)
            loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def image_case(work: Path, n: int, loader_batch: int) -> tuple[float, Tensor, Tensor, Callable[[dict], nn.Module]]:
    from Image.datamodule import ImageDataModule
    from Image.model import ImageClassifier
    from Image.synthetic import make_image_dataset

    root = make_image_dataset(work / "jpegs", classes=4, per_class=max(2, n // 4), width=500, height=375,
                              textured=True, suffix=".jpg")
    data = ImageDataModule(str(root), img_size=224, batch_size=loader_batch, num_workers=0, pin_memory=False)
    rate, x, y = loader_rate(data, max(1, n // loader_batch - 1))

    def model(size: dict) -> nn.Module:
        kwargs = dict(size, patch_size=16) if size is TINY else None
        return ImageClassifier(model_name="vit_base_patch16_224", img_size=224, num_classes=data.num_classes,
                               model_kwargs=kwargs).backbone

    return rate, x, y, model


def audio_case(work: Path, n: int, loader_batch: int) -> tuple[float, Tensor, Tensor, Callable[[dict], nn.Module]]:
    from Audio.backbone import build_audio_vit
    from Audio.datamodule import AudioDataModule
    from Audio.synthetic import make_tone_dataset

    root = make_tone_dataset(work / "tones", per_class=max(1, n // 8), seconds=10.24)
    data = AudioDataModule(format="folder", root=str(root), batch_size=loader_batch, num_workers=0,
                           pin_memory=False, target_length=1024, freqm=48, timem=192, roll=True, wave_mixup=0.5)
    rate, x, y = loader_rate(data, max(1, n // loader_batch - 1))
    y = y.argmax(-1) if y.is_floating_point() else y

    def model(size: dict) -> nn.Module:
        return build_audio_vit(data.num_classes, target_length=1024, num_mel_bins=128, **size)

    return rate, x, y, model


def point_case(work: Path, n: int, loader_batch: int) -> tuple[float, Tensor, Tensor, Callable[[dict], nn.Module]]:
    from Point.datamodule import PointDataModule
    from Point.model import PointClassifier
    from Point.synthetic import make_shape_dataset

    root = make_shape_dataset(work / "shapes", classes=8, per_class=max(1, n // 8), points=8192)
    data = PointDataModule(str(root), format="folder", num_points=1024, batch_size=loader_batch, num_workers=0,
                           pin_memory=False)
    rate, x, y = loader_rate(data, max(1, n // loader_batch - 1))

    def model(size: dict) -> nn.Module:
        return PointClassifier(num_classes=data.num_classes, **size).backbone

    return rate, x, y, model


CASES = {"image": image_case, "audio": audio_case, "point": point_case}


def video_row(args: argparse.Namespace, device: torch.device) -> list[str]:
    """Video through the Video benchmark's own functions, so both scripts measure one thing one way."""
    video_pipeline = importlib.import_module("video_pipeline")
    from Video.synthetic import make_video_dataset

    options = argparse.Namespace(img_size=224, num_frames=16, sampling_rate=4, clips=max(2, args.samples // 4),
                                 batch_size=1, steps=1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_video_dataset(root, classes=4, per_class=1, frames=150, size=(256, 340), fps=30, splits=("train",))
        loader = video_pipeline.loader_clips_per_second(root, "train", options)
    tiny = video_pipeline.train_step_clips_per_second("tiny", options)
    base = None if args.quick else video_pipeline.train_step_clips_per_second("base", options)
    return row("video (16x224², RandAugment; tiny = width 192 depth 4)", loader, tiny, base, "clips")


def row(name: str, loader: float, tiny: float, base: Optional[float], unit: str) -> list[str]:
    return [name, f"{loader:.1f} {unit}/s", f"{tiny:.1f}", f"{base:.2f}" if base else "-",
            f"{tiny / loader:.2f}", f"{base / loader:.3f}" if base else "-",
            "model" if (base or tiny) < loader else "loader"]


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modalities", nargs="+", default=["image", "audio", "point", "video"])
    parser.add_argument("--samples", type=int, default=32, help="samples the loader is timed over per modality")
    parser.add_argument("--device", default="auto", help="where the model steps run: auto, cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="tiny models only, 16 samples per loader")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples = 16
    device = pick_device(args.device)
    tiny_batch, base_batch = (128, 32) if device.type == "cuda" else (8, 2)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.modalities:
            if name == "video":
                continue
            rate, x, y, model = CASES[name](Path(tmp), args.samples, loader_batch=8)
            tiny = step_rate(model(TINY), x, y, tiny_batch, 3, device)
            base = None if args.quick else step_rate(model(BASE), x, y, base_batch, 1, device)
            rows.append(row(f"{name} {tuple(x.shape[1:])}", rate, tiny, base, "samples"))
            print(f"{name}: loader {rate:.1f}/s per worker, tiny {tiny:.1f}/s, ViT-B {base or 0:.2f}/s", flush=True)
    if "video" in args.modalities:
        try:
            rows.append(video_row(args, device))
        except (ImportError, AttributeError) as err:
            notes.append(f"video skipped: benchmarks/video_pipeline.py is not usable here ({err})")
    print_table(
        f"loader vs model, {precision_name(device)} model steps on {describe_machine(device)}; model batch "
        f"tiny {tiny_batch}, ViT-B {base_batch} (video 1), loader batch 8, {args.samples} samples",
        ["modality (sample shape)", "loader per worker", "tiny train samples/s", "ViT-B train samples/s",
         "workers for tiny", "workers for ViT-B", "bound (1 worker, ViT-B)"],
        rows,
    )
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
