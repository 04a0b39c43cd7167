"""Checkpoint files that are either the old one or the complete new one, never half written.

Lightning's ``TorchCheckpointIO`` serialises into memory and lets fsspec move a temporary file from the system
temp folder into place: the move crosses file systems on clusters (so it is a copy, not a rename), nothing is
fsync'ed, and a ViT-B checkpoint is held twice in host memory.  A job killed while ``last.ckpt`` is being written
(SLURM preemption, an OOM kill, a node failure) can then leave a truncated ``last.ckpt`` and nothing to resume from.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pathway.atomic import atomic_write


def atomic_torch_save(obj: Any, path: _PATH) -> None:
    """``torch.save`` through ``pathway.atomic.atomic_write`` (temporary file in the target folder + rename)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic (temp file in the same folder + fsync + rename).

    Remote URLs (``s3://`` ...) keep Lightning's own path, whose object stores replace whole objects anyway.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(
                f"`Trainer.save_checkpoint(..., storage_options=...)` is not supported by {type(self).__name__}: "
                "the checkpoint is written with torch.save as a whole"
            )
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)
