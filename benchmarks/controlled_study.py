"""A controlled study of the pathway at CPU scale: which arm moves a data-scarce target, and why (or why not).

The target (sklearn's digits, 8x8) trains on a small subset (15% of the data) from the same initialisation in
every arm, on the same batches, for the same number of steps; each arm differs from the baseline (no aux) only
in the aux it borrows from.  Two regimes: **scratch** (random init) and **pretrained** (the target was first
trained on a larger disjoint digits split, the paper's main setting).  Arms:

* ``pos`` - positive control: aux = the same architecture trained on *more digits* (the disjoint split);
  ``photos`` - aux trained on a second real image set (patches of the photos that ship with scikit-learn and
  matplotlib);
* ``ceiling`` - transfer ceiling (scratch only): the target *initialised from* the ``pos`` aux, plain fine-tuning;
* ``random`` - aux with untrained weights, each layer's mean and std matched to the ``pos`` aux;
* ``audio``, ``point``, ``audio+point`` - cross-modal aux (synthetic sounds, synthetic shapes), alone and together;
* ``*-frozen`` - the aux frozen (buffers) instead of trained (the paper's method trains it);
* ``*-lr10``, ``*-lr100`` - λ with a 10x / 100x larger learning rate than the other parameters;
* reverse pairs: ``image→audio`` and ``image→point`` (the aux is the ``pos`` digits model).

Per arm: the mean and 95% t-interval of the *paired* difference in final test top-1 against the same seed's
baseline; mean |λ|; the relative size of the borrowed term ``|λ|·‖W_aux‖ / ‖W‖``; and, for the λ-lr arms, mean
|λ| per layer type after every epoch (a plot).  Every model is a tiny transformer (width 32, depth 4, 4 heads,
16 tokens) with a modality tokenizer: the shape the pathway needs.  Data is built in memory, nothing is read
from or written to disk except the plot.

    .venv/bin/python benchmarks/controlled_study.py             # 5 seeds, every arm, seeds in parallel processes
    .venv/bin/python benchmarks/controlled_study.py --full      # 10 seeds, longer training, every lr x aux
    .venv/bin/python benchmarks/controlled_study.py --quick     # 2 seeds, 2 epochs: a smoke run
"""
from __future__ import annotations

import os

# Set before torch loads libgomp: spinning OpenMP threads on a CPU shared with other work run up to ~80x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import functools
import math
import multiprocessing
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from bench_utils import print_table
from pathway.atomic import atomic_write
from pathway.optim import warmup_cosine_scheduler
from pathway.surgery import pathway_layers, reparameterize_aux_into_target_model

WIDTH, DEPTH, HEADS, TOKENS = 32, 4, 4, 16
LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
TEST_FRACTION, SUBSET_FRACTION = 0.30, 0.15  # the rest (55%) is the "more data" split


# ----------------------------------------------------------------------------------------------------- data


@dataclass
class Split:
    """One modality's data, split three ways: a held-out test set, the scarce target subset, and the rest."""
    name: str
    x: Tensor
    y: Tensor
    num_classes: int
    test: Tensor = field(init=False)
    subset: Tensor = field(init=False)
    more: Tensor = field(init=False)

    def __post_init__(self) -> None:
        order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(1234))
        n_test, n_subset = int(TEST_FRACTION * len(order)), int(SUBSET_FRACTION * len(order))
        self.test, self.subset, self.more = order[:n_test], order[n_test:n_test + n_subset], order[n_test + n_subset:]


def digits() -> Split:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    return Split("image (sklearn digits)", x, torch.tensor(d.target), 10)


def photo_patches(per_photo: int = 600) -> Split:
    """8x8 grey patches (area-downsampled 32x32 crops) of three bundled photos; the class is the photo."""
    import matplotlib
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(Image.fromarray(img).convert("L"), dtype=np.float32) for img in load_sample_images().images]
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    photos.append(np.asarray(Image.open(hopper).convert("L"), dtype=np.float32))
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for label, photo in enumerate(photos):
        for _ in range(per_photo):
            r, c = rng.integers(0, photo.shape[0] - 32), rng.integers(0, photo.shape[1] - 32)
            xs.append(photo[r:r + 32, c:c + 32].reshape(8, 4, 8, 4).mean((1, 3)))
            ys.append(label)
    x = torch.tensor(np.stack(xs)).unsqueeze(1)
    x = (x - x.mean()) / x.std()
    return Split("image (photo patches)", x, torch.tensor(ys), len(photos))


def sounds(per_class: int = 80, seconds: float = 0.5, rate: int = 16000) -> Split:
    """Synthetic sounds (Audio.synthetic) as 16x16 log-mel patches (64 mel bins pooled to 16, 48 frames to 16)."""
    from Audio.features import waveform_to_fbank
    from Audio.synthetic import SOUNDS

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    xs, ys = [], []
    for label, make in enumerate(SOUNDS.values()):
        for _ in range(per_class):
            clip = make(t, rate, rng) * rng.uniform(0.3, 0.8)
            clip = np.roll(clip, int(rng.integers(0, t.size // 4))) + rng.standard_normal(t.size) * 0.05
            fbank = waveform_to_fbank(torch.tensor(clip, dtype=torch.float32), rate, num_mel_bins=64)
            xs.append(F.adaptive_avg_pool2d(fbank[None, None], (16, 16))[0])
            ys.append(label)
    x = torch.stack(xs)
    x = (x - x.mean()) / x.std()
    return Split("audio (synthetic sounds)", x, torch.tensor(ys), len(SOUNDS))


def shapes(per_class: int = 80, points: int = 128) -> Split:
    """Synthetic shapes (Point.synthetic) as 16 FPS-centred groups of 8 nearest points: (N, 16, 8 + 1, 3)."""
    from Point.backbone import group_points
    from Point.synthetic import SHAPES, sample_shape

    rng = np.random.default_rng(0)
    clouds, ys = [], []
    for label, name in enumerate(SHAPES):
        for _ in range(per_class):
            clouds.append(sample_shape(name, points, rng))
            ys.append(label)
    centers, groups = group_points(torch.tensor(np.stack(clouds)), TOKENS, 8)
    return Split("point (synthetic shapes)", torch.cat([groups, centers.unsqueeze(2)], 2), torch.tensor(ys),
                 len(SHAPES))


# ---------------------------------------------------------------------------------------------------- models


class PointGroups(nn.Module):
    """Tokens of (B, G, K + 1, 3) groups: a shared point MLP max-pooled over the K neighbours, plus the centre."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3, WIDTH), nn.GELU(), nn.Linear(WIDTH, WIDTH))
        self.center = nn.Linear(3, WIDTH)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x[:, :, :-1]).max(2).values + self.center(x[:, :, -1])


class PatchTokens(nn.Module):
    """Non-overlapping square patches of a 1-channel (B, 1, H, W) input, TOKENS of them."""

    def __init__(self, side: int) -> None:
        super().__init__()
        patch = side // int(math.isqrt(TOKENS))
        self.proj = nn.Conv2d(1, WIDTH, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


TOKENIZERS: dict[str, Callable[[], nn.Module]] = {
    "image": lambda: PatchTokens(8), "audio": lambda: PatchTokens(16), "point": PointGroups,
}


class TinyTransformer(nn.Module):
    """Modality tokenizer -> learned position embedding -> timm ViT blocks -> norm -> mean pool -> linear head."""

    def __init__(self, modality: str, num_classes: int) -> None:
        super().__init__()
        self.tokens = TOKENIZERS[modality]()
        self.pos = nn.Parameter(torch.randn(1, TOKENS, WIDTH) * 0.02)
        self.blocks = nn.Sequential(*(Block(WIDTH, HEADS, mlp_ratio=4.0, qkv_bias=True) for _ in range(DEPTH)))
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.blocks(self.tokens(x) + self.pos)).mean(1))


def build(modality: str, num_classes: int, seed: int) -> TinyTransformer:
    torch.manual_seed(seed)
    return TinyTransformer(modality, num_classes)


def matched_random(model: nn.Module, seed: int) -> dict[str, Tensor]:
    """Untrained weights for every block linear layer, each with the mean and std of ``model``'s layer."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in model.state_dict().items():
        if name.startswith("blocks.") and name.endswith(".weight") and w.ndim == 2:
            out[name] = torch.randn(w.shape, generator=g) * w.std() + w.mean()
    return out


# -------------------------------------------------------------------------------------------------- training


@dataclass
class Recipe:
    epochs: int
    lr: float
    batch: int = 64
    weight_decay: float = 0.05


def param_groups(model: nn.Module, lr: float, weight_decay: float, lambda_lr_scale: float) -> list[dict]:
    """λ: no weight decay and ``lambda_lr_scale`` times the lr; matrices (trained aux included) decay; the rest not."""
    lambdas, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if name.endswith("lambdas"):
            lambdas.append(p)
        elif p.ndim >= 2 and name != "pos":
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [dict(params=decay, lr=lr, weight_decay=weight_decay), dict(params=no_decay, lr=lr, weight_decay=0.0)]
    if lambdas:
        groups.append(dict(params=lambdas, lr=lr * lambda_lr_scale, weight_decay=0.0))
    return groups


def lambda_by_type(model: nn.Module) -> dict[str, float]:
    """Mean |λ| per layer type over blocks and aux."""
    values: dict[str, list[float]] = defaultdict(list)
    for name, layer in pathway_layers(model):
        values[".".join(name.split(".")[-2:])].extend(layer.lambdas.detach().abs().tolist())
    return {k: statistics.mean(v) for k, v in values.items()}


def borrowed_fraction(model: nn.Module) -> float:
    """Mean over pathway layers of ``‖Σ λ_i W_aux_i‖ / ‖W‖``: how much of each layer the aux makes up."""
    with torch.no_grad():
        ratios = [float((layer.effective_weight() - layer.weight).norm() / layer.weight.norm())
                  for _, layer in pathway_layers(model)]
    return statistics.mean(ratios) if ratios else 0.0


def train(model: TinyTransformer, data: Split, recipe: Recipe, seed: int, lambda_lr_scale: float = 1.0,
          on_epoch: Optional[Callable[[nn.Module], None]] = None, indices: Optional[Tensor] = None) -> float:
    """AdamW + cosine on ``indices`` (default: the scarce subset) with a seeded batch order; final test top-1."""
    indices = data.subset if indices is None else indices
    opt = torch.optim.AdamW(param_groups(model, recipe.lr, recipe.weight_decay, lambda_lr_scale))
    steps_per_epoch = math.ceil(len(indices) / recipe.batch)
    total = recipe.epochs * steps_per_epoch
    sched = warmup_cosine_scheduler(opt, warmup_steps=total // 10, total_steps=total, min_ratio=0.0)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(recipe.epochs):
        for batch in indices[torch.randperm(len(indices), generator=g)].split(recipe.batch):
            loss = F.cross_entropy(model(data.x[batch]), data.y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if on_epoch is not None:
            on_epoch(model)
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(data.x[b]).argmax(1) == data.y[b]).sum()) for b in data.test.split(512))
    return correct / len(data.test)


# ----------------------------------------------------------------------------------------------------- arms


@dataclass
class Arm:
    name: str
    target: str                       # "image", "audio" or "point"
    regime: str                       # "scratch" or "pretrained"
    aux: tuple[str, ...] = ()         # keys of the aux weights
    frozen: bool = False
    lambda_lr_scale: float = 1.0
    init_from: Optional[str] = None   # transfer ceiling: the target starts from these weights


def arms(full: bool) -> list[Arm]:
    out: list[Arm] = []
    for regime in ("scratch", "pretrained"):
        out.append(Arm("baseline", "image", regime))
        if regime == "scratch":
            out.append(Arm("ceiling (init from pos aux)", "image", regime, init_from="digits"))
        for aux, label in (("digits", "pos"), ("photos", "photos"), ("random", "random"), ("audio", "audio"),
                           ("point", "point")):
            out.append(Arm(label, "image", regime, (aux,)))
            if full or aux in ("digits", "audio"):
                out.append(Arm(f"{label}-frozen", "image", regime, (aux,), frozen=True))
            if full or aux in ("digits", "audio"):
                out += [Arm(f"{label}-lr{m}", "image", regime, (aux,), lambda_lr_scale=m) for m in (10, 100)]
        out.append(Arm("audio+point", "image", regime, ("audio", "point")))
    for target in ("audio", "point"):
        out += [Arm("baseline", target, "scratch"), Arm("image→" + target, target, "scratch", ("digits",))]
        if full:
            out.append(Arm(f"image→{target}-lr100", target, "scratch", ("digits",), lambda_lr_scale=100))
    return out


@dataclass
class Outcome:
    accuracy: float
    borrowed: float = 0.0                                               # ‖Σ λ W_aux‖ / ‖W‖ at the end
    trajectory: list[dict[str, float]] = field(default_factory=list)    # mean |λ| per layer type, per epoch


def run_seed(seed: int, plan: list[Arm], data: dict[str, Split], aux_weights: dict[str, dict[str, Tensor]],
             recipes: dict[str, Recipe]) -> dict[tuple[str, str, str], Outcome]:
    """Every arm of one seed; the seed fixes the target's init and batch order in all of them."""
    torch.set_num_threads(1)
    pretrained = build("image", 10, seed)
    train(pretrained, data["image"], recipes["pretrain"], seed=seed, indices=data["image"].more)
    out = {}
    for arm in plan:
        split = data[arm.target]
        model = build(arm.target, split.num_classes, seed)
        if arm.regime == "pretrained":
            model.load_state_dict(pretrained.state_dict())
        if arm.init_from:
            model.load_state_dict(aux_weights[arm.init_from])
        if arm.aux:
            reparameterize_aux_into_target_model(model, [aux_weights[a] for a in arm.aux], layer_names=LAYERS,
                                                 main_body_name="blocks", aux_trainable=not arm.frozen)
        trajectory: list[dict[str, float]] = []
        acc = train(model, split, recipes[arm.regime], seed, arm.lambda_lr_scale,
                    on_epoch=(lambda m: trajectory.append(lambda_by_type(m))) if arm.aux else None)
        out[(arm.target, arm.regime, arm.name)] = Outcome(acc, borrowed_fraction(model) if arm.aux else 0.0,
                                                          trajectory)
    return out


def t_interval(diffs: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval of paired differences."""
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, float("nan")
    return mean, stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))


def save_plot(curves: dict[str, list[dict[str, float]]], path: Path) -> Path:
    """One panel per layer type: mean |λ| after every epoch, one line per λ-lr arm (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(LAYERS), figsize=(4 * len(LAYERS), 3.6), sharey=True)
    for ax, layer in zip(axes, LAYERS):
        for label, epochs in sorted(curves.items()):
            ax.plot(range(1, len(epochs) + 1), [e[layer] for e in epochs], label=label,
                    linestyle="-" if "scratch" in label else "--")
        ax.set_yscale("log")
        ax.set_title(layer)
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("mean |λ| (over blocks and seeds)")
    axes[-1].legend(fontsize=6)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--full", action="store_true",
                        help="10 seeds, twice the epochs, frozen and λ-lr arms for every aux, reverse λ-lr arms")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 2 epochs: a smoke run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="seeds trained in parallel processes (each single-threaded)")
    parser.add_argument("--figure", type=Path, default=Path(__file__).parent / "figures" / "study_lambda_lr.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny matmuls: threads only add synchronisation on a shared CPU
    scale = 2 if args.full else 1
    seeds = list(range(10)) if args.full else args.seeds[:2] if args.quick else args.seeds
    scratch = Recipe(epochs=2 if args.quick else 25 * scale, lr=2e-3)
    finetune = Recipe(epochs=2 if args.quick else 12 * scale, lr=5e-4)
    aux_recipe = Recipe(epochs=2 if args.quick else 30 * scale, lr=1e-3)
    pretrain = Recipe(epochs=2 if args.quick else 20 * scale, lr=1e-3)
    started = time.perf_counter()

    data = {"image": digits(), "photos": photo_patches(), "audio": sounds(), "point": shapes()}
    print(f"data built in {time.perf_counter() - started:.0f} s: " + ", ".join(
        f"{d.name} {len(d.y)} ({len(d.subset)} target subset, {len(d.more)} more, {len(d.test)} test)"
        for d in data.values()), flush=True)

    # Aux models: each trained once, on the "more" split of its data (photos: all but the test split).
    aux_models: dict[str, TinyTransformer] = {}
    for key, split in (("digits", data["image"]), ("photos", data["photos"]), ("audio", data["audio"]),
                       ("point", data["point"])):
        modality = "image" if key in ("digits", "photos") else key
        aux_models[key] = build(modality, split.num_classes, seed=1000)
        acc = train(aux_models[key], split, aux_recipe, seed=1000, indices=torch.cat([split.more, split.subset])
                    if key == "photos" else split.more)
        print(f"aux {key}: test top-1 {100 * acc:.1f}%", flush=True)
    aux_weights = {k: m.state_dict() for k, m in aux_models.items()}
    aux_weights["random"] = matched_random(aux_models["digits"], seed=2000)

    plan = arms(args.full)
    recipes = {"scratch": scratch, "pretrained": finetune, "pretrain": pretrain}
    run = functools.partial(run_seed, plan=plan, data=data, aux_weights=aux_weights, recipes=recipes)
    results: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    lambdas: dict[tuple[str, str, str], list[dict[str, float]]] = defaultdict(list)
    borrowed: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    curves: dict[tuple[str, str, str], list[list[dict[str, float]]]] = defaultdict(list)
    with multiprocessing.get_context("fork").Pool(min(args.workers, len(seeds))) as pool:
        for seed, outcomes in zip(seeds, pool.imap(run, seeds)):
            for key, outcome in outcomes.items():
                results[key].append(outcome.accuracy)
                if outcome.trajectory:
                    lambdas[key].append(outcome.trajectory[-1])
                    borrowed[key].append(outcome.borrowed)
                    curves[key].append(outcome.trajectory)
            print(f"seed {seed} done, {time.perf_counter() - started:.0f} s: " + ", ".join(
                f"{t}/{r}/{n} {100 * v[-1]:.1f}" for (t, r, n), v in results.items() if n in ("baseline", "pos")),
                flush=True)

    rows = []
    for (target, regime, name), accs in results.items():
        base = results[(target, regime, "baseline")]
        diffs = [100 * (a - b) for a, b in zip(accs, base)]
        mean, half = t_interval(diffs)
        lam = lambdas.get((target, regime, name))
        rows.append([
            target, regime, name, f"{100 * statistics.mean(accs):.1f}",
            "—" if name == "baseline" else f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]",
            "—" if name == "baseline" else f"{sum(d > 0 for d in diffs)}/{sum(d < 0 for d in diffs)}",
            f"{statistics.mean(statistics.mean(t.values()) for t in lam):.4f}" if lam else "—",
            f"{statistics.mean(borrowed[(target, regime, name)]):.4f}" if lam else "—",
        ])
    print_table(
        f"test top-1 after training on the {int(100 * SUBSET_FRACTION)}% subset; {len(seeds)} seeds; scratch "
        f"{scratch.epochs} epochs, pretrained {finetune.epochs}; {time.perf_counter() - started:.0f} s",
        ["target", "regime", "arm", "top-1 %", "Δ vs baseline, points (95% CI)", "better/worse", "mean |λ|",
         "‖λW_aux‖/‖W‖"], rows)
    mean_curves = {
        f"{regime} {name}": [{layer: statistics.mean(run[e][layer] for run in runs) for layer in LAYERS}
                             for e in range(len(runs[0]))]
        for (target, regime, name), runs in curves.items()
        if target == "image" and (name in ("pos", "audio") or "-lr" in name)
    }
    print(f"λ trajectories: {save_plot(mean_curves, args.figure)}")


if __name__ == "__main__":
    main()
