"""The method's effect at CPU scale: does a pathway from a model of another modality help a target trained on
the embedded demo data?

For every (aux → target) pair: train a tiny aux model on the aux modality once; then, for each seed, train the
target from scratch twice from the same initialisation and on the same batches: plainly (the baseline) and with
the pathway from the aux (λ = 0 at the start, so both runs begin as the same model).  Prints the target's final
validation top-1 per seed, mean ± std per arm and the paired difference, mean |λ| per layer type, and saves the
seed-averaged λ per block and layer type as a PNG heatmap.

All models are tiny ViTs of one shape (width 64, depth 4, 4 heads, MLP ratio 4), as the pathway needs.

    .venv/bin/python benchmarks/cross_modal_effect.py               # audio→image, point→image, image→audio; 3 seeds
    .venv/bin/python benchmarks/cross_modal_effect.py --pairs image:audio --seeds 0 1 2 3 4
"""
from __future__ import annotations

import os

# Set before torch loads libgomp: spinning OpenMP threads on a CPU shared with other work run up to ~80x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import lightning as L
import torch

from bench_utils import print_table
from pathway.callbacks import save_lambda_heatmap
from pathway.surgery import lambda_table

WIDTH, DEPTH, HEADS = 64, 4, 4


@dataclass
class Modality:
    """How to build one modality's tiny LightningModule and DataModule on its demo data."""
    name: str
    data: Callable[[Path], L.LightningDataModule]
    model: Callable[[int, list[str]], L.LightningModule]
    metric: str = "val/acc1"


def _image_data(work: Path) -> L.LightningDataModule:
    from Image.datamodule import ImageDataModule
    from demo.digits import make_digits_imagefolder

    root = make_digits_imagefolder(work / "data" / "digits", size=32)
    return ImageDataModule(str(root), img_size=32, batch_size=64, num_workers=0, pin_memory=False,
                           auto_augment=None, re_prob=0.0, crop_pct=1.0, scale=(0.6, 1.0), hflip=0.0)


def _image_model(num_classes: int, aux: list[str]) -> L.LightningModule:
    from Image.model import ImageClassifier

    return ImageClassifier(
        model_name="vit_tiny_patch16_224", img_size=32, drop_path_rate=0.0, global_pool="avg",
        model_kwargs=dict(patch_size=4, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS),
        num_classes=num_classes, aux_ckpts=aux, lr=2e-3, layer_decay=0.75, weight_decay=0.05, warmup_epochs=1,
        label_smoothing=0.1,
    )


def _audio_data(work: Path) -> L.LightningDataModule:
    from Audio.datamodule import AudioDataModule

    return AudioDataModule(format="folder", root=str(work / "data" / "tones"), synthetic=True, batch_size=16,
                           num_workers=0, pin_memory=False, target_length=128, num_mel_bins=128,
                           mean=-4.648044, std=3.806254, freqm=0, timem=0, wave_mixup=0.0, roll=False)


def _audio_model(num_classes: int, aux: list[str]) -> L.LightningModule:
    from Audio.model import AudioClassifier

    return AudioClassifier(
        model_name="vit_tiny_patch16_224", embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, target_length=128,
        num_mel_bins=128, pos_embed="sincos", drop_path_rate=0.0, multilabel=False, num_classes=num_classes,
        aux_ckpts=aux, lr=3e-3, layer_decay=0.75, weight_decay=0.05, warmup_epochs=1, label_smoothing=0.1,
    )


def _point_data(work: Path) -> L.LightningDataModule:
    from Point.datamodule import PointDataModule
    from Point.synthetic import make_shape_dataset

    root = work / "data" / "point_shapes"
    if not (root / "test").is_dir():
        make_shape_dataset(root, classes=8, per_class=16, points=512, seed=0)
    return PointDataModule(str(root), format="folder", num_points=256, batch_size=16, num_workers=0,
                           pin_memory=False, vote_num=1)


def _point_model(num_classes: int, aux: list[str]) -> L.LightningModule:
    from Point.model import PointClassifier

    return PointClassifier(
        num_groups=32, group_size=16, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, drop_path_rate=0.0,
        head_dropout=0.1, num_classes=num_classes, aux_ckpts=aux, lr=1e-3, layer_decay=1.0, weight_decay=0.05,
        warmup_epochs=1,
    )


MODALITIES = {
    "image": Modality("image (sklearn digits, 10 classes)", _image_data, _image_model),
    "audio": Modality("audio (synthetic tones, 8 classes)", _audio_data, _audio_model),
    "point": Modality("point (synthetic shapes, 8 classes)", _point_data, _point_model),
}


def fit(modality: str, work: Path, seed: int, epochs: int, aux: list[str]) -> tuple[L.LightningModule, float]:
    """Train one tiny model from scratch (``seed`` fixes init and batch order); returns it and its final metric."""
    spec = MODALITIES[modality]
    data = spec.data(work)
    L.seed_everything(seed, workers=True, verbose=False)
    model = spec.model(data.num_classes, aux)
    trainer = L.Trainer(
        accelerator="auto", devices=1, precision="bf16-mixed" if torch.cuda.is_available() else "32-true",
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(work / "runs"),
    )
    trainer.fit(model, datamodule=data)
    return model, float(trainer.callback_metrics[spec.metric])


def train_aux(modality: str, work: Path, epochs: int) -> tuple[str, float]:
    """The aux model: trained once on its own modality, saved as a backbone state dict."""
    path = work / "aux" / f"{modality}_w{WIDTH}_d{DEPTH}_e{epochs}.pt"
    model, metric = fit(modality, work, seed=0, epochs=epochs, aux=[])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.backbone.state_dict(), path)
    return str(path), metric


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"


def layer_type_means(tables: list[dict[str, list[float]]]) -> dict[str, float]:
    """Mean |λ| per layer type (``attn.qkv`` ...), over blocks, aux and seeds."""
    values: dict[str, list[float]] = defaultdict(list)
    for table in tables:
        for name, lams in table.items():
            layer_type = ".".join(name.split(".")[-2:])
            values[layer_type].extend(abs(v) for v in lams)
    return {k: statistics.mean(v) for k, v in values.items()}


def mean_table(tables: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    return {name: [statistics.mean(t[name][i] for t in tables) for i in range(len(lams))]
            for name, lams in tables[0].items()}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", default=["audio:image", "point:image", "image:audio"],
                        help="aux:target modality pairs from image, audio, point")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20, help="target training epochs (both arms)")
    parser.add_argument("--aux-epochs", type=int, default=20, help="aux training epochs")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "pathway_cross_modal",
                        help="demo data, aux checkpoints and run folders")
    parser.add_argument("--figures", type=Path, default=Path(__file__).parent / "figures",
                        help="where the λ heatmaps go")
    parser.add_argument("--quick", action="store_true", help="one pair, 2 seeds, 1 epoch: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.seeds, args.epochs, args.aux_epochs = args.pairs[:1], args.seeds[:2], 1, 1
    pairs = [tuple(p.split(":")) for p in args.pairs]
    for aux, target in pairs:
        if aux not in MODALITIES or target not in MODALITIES or aux == target:
            parser.error(f"pair '{aux}:{target}': need two different modalities of {sorted(MODALITIES)}")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    started = time.perf_counter()

    aux_ckpts: dict[str, tuple[str, float]] = {}
    for aux in dict.fromkeys(a for a, _ in pairs):
        aux_ckpts[aux] = train_aux(aux, args.workdir, args.aux_epochs)
        print(f"aux {aux}: trained {args.aux_epochs} epochs, val top-1 {100 * aux_ckpts[aux][1]:.2f}%", flush=True)

    baseline: dict[tuple[str, int], float] = {}
    seed_rows, summary_rows = [], []
    for aux, target in pairs:
        pathway_scores, tables = [], []
        for seed in args.seeds:
            if (target, seed) not in baseline:
                baseline[(target, seed)] = fit(target, args.workdir, seed, args.epochs, aux=[])[1]
            model, score = fit(target, args.workdir, seed, args.epochs, aux=[aux_ckpts[aux][0]])
            pathway_scores.append(score)
            tables.append(lambda_table(model.backbone))
            base = baseline[(target, seed)]
            seed_rows.append([f"{aux} → {target}", seed, f"{100 * base:.2f}", f"{100 * score:.2f}",
                              f"{100 * (score - base):+.2f}"])
            print(f"{aux} → {target} seed {seed}: baseline {100 * base:.2f}%, pathway {100 * score:.2f}%", flush=True)
        base_scores = [baseline[(target, s)] for s in args.seeds]
        diffs = [p - b for p, b in zip(pathway_scores, base_scores)]
        lam = layer_type_means(tables)
        figure = save_lambda_heatmap(mean_table(tables), args.figures / f"lambdas_{aux}_to_{target}.png",
                                     title=f"λ, {aux} → {target}, mean of {len(tables)} seeds")
        summary_rows.append([
            f"{aux} → {target}", MODALITIES[target].metric, mean_std(base_scores), mean_std(pathway_scores),
            mean_std(diffs), f"{sum(d > 0 for d in diffs)}/{len(diffs)}",
            ", ".join(f"{k} {v:.4f}" for k, v in lam.items()), os.path.relpath(figure),
        ])

    print_table("per seed (final validation top-1, %)", ["pair", "seed", "baseline", "pathway", "Δ"], seed_rows)
    print_table(
        f"summary: {len(args.seeds)} seeds, {args.epochs} target epochs, {args.aux_epochs} aux epochs, "
        f"width {WIDTH} depth {DEPTH}; {time.perf_counter() - started:.0f} s",
        ["pair", "metric", "baseline % (mean ± std)", "pathway %", "Δ (paired)", "pathway better", "mean |λ|",
         "λ heatmap"],
        summary_rows,
    )


if __name__ == "__main__":
    main()
