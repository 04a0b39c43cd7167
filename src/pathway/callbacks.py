"""Lightning callbacks: write a merged (plain-backbone) checkpoint, and watch the λ values."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional

import lightning as L
import torch

from pathway.atomic import atomic_write
from pathway.merge import plain_state_dict
from pathway.surgery import lambda_table

log = logging.getLogger(__name__)


def _out_dir(trainer: L.Trainer, dirpath: Optional[str]) -> Path:
    """The folder a callback writes to.  ``trainer.log_dir`` is a collective under DDP (it broadcasts rank 0's
    folder), so this must run on every rank, in a hook every rank calls (``setup``), never in rank-zero-only code."""
    return Path(dirpath or trainer.log_dir or trainer.default_root_dir)


class MergedCheckpoint(L.Callback):
    """On train end, save the backbone with every pathway folded in, as plain-architecture safetensors.

    Like Lightning's ``ModelPruning`` with ``make_pruning_permanent`` for masks, but on a folded copy: the live
    model keeps training/testing unmerged.  The file loads ``strict=True`` into the plain architecture.
    """

    def __init__(self, dirpath: Optional[str] = None, filename: str = "merged.safetensors") -> None:
        self.dirpath = dirpath
        self.filename = filename
        self.last_path: Optional[Path] = None
        self._dir: Optional[Path] = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._dir = _out_dir(trainer, self.dirpath)

    def export(self, pl_module: L.LightningModule, folder: Path) -> Path:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in plain_state_dict(pl_module.backbone).items()}
        path = folder / self.filename
        atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
        self.last_path = path
        log.info("wrote merged backbone to %s", path)
        return path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self._dir is not None:
            self.export(pl_module, self._dir)


class LambdaMonitor(L.Callback):
    """Logs every λ (per block, layer type and aux) each epoch and optionally saves a blocks × layers heatmap."""

    def __init__(self, heatmap: bool = True, dirpath: Optional[str] = None) -> None:
        self.heatmap = heatmap
        self.dirpath = dirpath
        self._dir: Optional[Path] = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._dir = _out_dir(trainer, self.dirpath)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        table = lambda_table(pl_module.backbone)
        if not table:
            return
        values = {
            f"lambda/{name}" + (f"/aux{i}" if len(lams) > 1 else ""): lam
            for name, lams in table.items() for i, lam in enumerate(lams)
        }
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
        if self.heatmap and trainer.is_global_zero and self._dir is not None:
            save_lambda_heatmap(table, self._dir / "lambdas.png",
                                title=f"λ after epoch {trainer.current_epoch}")


def lambda_grid(table: dict[str, list[float]]) -> tuple[list[int], list[str], torch.Tensor]:
    """(block ids, layer types, tensor[aux, block, layer]) from a ``lambda_table``."""
    pattern = re.compile(r"^(.*?)(\d+)\.(.+)$")
    parsed = []
    for name, lams in table.items():
        match = pattern.match(name)
        if match is None:
            raise ValueError(f"cannot read a block index from pathway layer name '{name}'")
        parsed.append((int(match.group(2)), match.group(3), lams))
    blocks = sorted({b for b, _, _ in parsed})
    layers = list(dict.fromkeys(layer for _, layer, _ in parsed))
    grid = torch.full((len(parsed[0][2]), len(blocks), len(layers)), float("nan"))
    for block, layer, lams in parsed:
        grid[:, blocks.index(block), layers.index(layer)] = torch.tensor(lams)
    return blocks, layers, grid


def save_lambda_heatmap(table: dict[str, list[float]], path: Path, title: str = "λ") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks, layers, grid = lambda_grid(table)
    num_aux = grid.shape[0]
    fig, axes = plt.subplots(1, num_aux, figsize=(1.2 * len(layers) * num_aux + 1.5, 0.35 * len(blocks) + 1.5),
                             squeeze=False)
    bound = float(grid.nan_to_num(0).abs().max()) or 1.0
    for i, ax in enumerate(axes[0]):
        image = ax.imshow(grid[i].numpy(), cmap="coolwarm", vmin=-bound, vmax=bound, aspect="auto")
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right")
        ax.set_yticks(range(len(blocks)), [str(b) for b in blocks])
        ax.set_ylabel("block")
        ax.set_title(f"{title} (aux {i})" if num_aux > 1 else title)
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path
