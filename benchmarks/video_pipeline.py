"""Is video loading the bottleneck?  Decoding + augmentation clips/s per worker beside training-step clips/s.

Writes a set of synthetic mp4s (H.264, keyframe every 12 frames), then on this machine measures
  * one DataLoader worker's throughput (a plain loop over the dataset in this process) for the training transform
    (random window, random resized crop, flip, RandAugment, erasing) and the eval transform (centre crop);
  * the training step (forward, backward, AdamW) of the video ViT with a pathway, tiny and/or ViT-B size.
Divide the model's clips/s by one worker's to get the number of workers that keeps the model fed.

    python benchmarks/video_pipeline.py                      # tiny model, 224² decode/augment
    python benchmarks/video_pipeline.py --model base --batch-size 2 --steps 2
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from pathway.surgery import reparameterize_aux_into_target_model
from Video.dataset import VideoClipDataset, read_list_file
from Video.model import VideoClassifier
from Video.synthetic import make_video_dataset
from Video.transforms import TrainClipTransform

MODELS = {
    "tiny": dict(embed_dim=192, depth=4, num_heads=3),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}


def loader_clips_per_second(root: Path, mode: str, args: argparse.Namespace) -> float:
    records = read_list_file(root / "train.csv", root)
    transform = TrainClipTransform(args.img_size) if mode == "train" else None
    dataset = VideoClipDataset(records, mode, args.num_frames, args.sampling_rate, args.img_size, transform,
                               round(args.img_size * 256 / 224), decoder="pyav")
    dataset[0]  # warm-up (imports, codec initialisation)
    count = args.clips
    start = time.perf_counter()
    for i in range(count):
        clip = dataset[i % len(dataset)][0]
    elapsed = time.perf_counter() - start
    assert clip.shape == (3, args.num_frames, args.img_size, args.img_size)
    return count / elapsed


def train_step_clips_per_second(size: str, args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    model = VideoClassifier(img_size=args.img_size, num_frames=args.num_frames, num_classes=400,
                            **MODELS[size]).backbone
    aux = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    reparameterize_aux_into_target_model(model, aux)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    clips = torch.randn(args.batch_size, 3, args.num_frames, args.img_size, args.img_size)
    labels = torch.randint(0, 400, (args.batch_size,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(clips), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    return args.steps * args.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8, help="synthetic videos to write")
    parser.add_argument("--frames", type=int, default=150, help="frames per video (5 s at 30 fps)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=340)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--sampling-rate", type=int, default=4)
    parser.add_argument("--clips", type=int, default=16, help="clips timed per loader mode")
    parser.add_argument("--model", choices=["tiny", "base", "both"], default="tiny")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        make_video_dataset(root, classes=4, per_class=max(1, args.videos // 4), frames=args.frames,
                           size=(args.height - args.height % 2, args.width - args.width % 2), fps=30,
                           splits=("train",))
        print(f"wrote {args.videos} videos of {args.frames} frames at {args.height}x{args.width} "
              f"in {time.perf_counter() - start:.1f}s")
        rows = [(f"loader, train transform ({args.num_frames}x{args.sampling_rate}, RandAugment)",
                 loader_clips_per_second(root, "train", args)),
                (f"loader, eval transform (centre {args.img_size}² crop)", loader_clips_per_second(root, "val", args))]
    for size in (["tiny", "base"] if args.model == "both" else [args.model]):
        dims = MODELS[size]
        rows.append((f"train step, {size} ViT (d={dims['embed_dim']}, depth {dims['depth']}), pathway, "
                     f"batch {args.batch_size}", train_step_clips_per_second(size, args)))
    width = max(len(name) for name, _ in rows)
    print(f"\n{'':{width}}  clips/s")
    for name, value in rows:
        print(f"{name:{width}}  {value:8.2f}")
    print("\nloader rows are per worker (one process); workers needed ≈ model clips/s ÷ loader clips/s")


if __name__ == "__main__":
    main()
