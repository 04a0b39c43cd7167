"""Checkpoint files that are either the old one or the complete new one, never half written, and that are read
without running code.

Lightning's ``TorchCheckpointIO`` serialises into memory and lets fsspec move a temporary file from the system
temp folder into place: the move crosses file systems on clusters (so it is a copy, not a rename), nothing is
fsync'ed, and a ViT-B checkpoint is held twice in host memory.  A job killed while ``last.ckpt`` is being written
(SLURM preemption, an OOM kill, a node failure) can then leave a truncated ``last.ckpt`` and nothing to resume from.
On reading, it fetches ``http(s)://`` paths and unpickles them with ``weights_only=False``, and a corrupt file ends
in a bare ``EOFError``/``KeyError`` that names no file.
"""
from __future__ import annotations

import errno
from typing import Any, Optional

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pathway.atomic import atomic_write
from pathway.checkpoint import torch_load

# What a full disk (or an exhausted quota) looks like to a writer.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _os_error(err: BaseException) -> Optional[OSError]:
    """The ``OSError`` behind ``err``: torch's zip writer re-raises a failed write as ``RuntimeError: unexpected
    pos``, with the file object's ``OSError`` as its context."""
    while err is not None:
        if isinstance(err, OSError) and err.errno is not None:
            return err
        err = err.__cause__ or err.__context__
    return None


def atomic_torch_save(obj: Any, path: _PATH) -> None:
    """``torch.save`` through ``pathway.atomic.atomic_write`` (temporary file in the target folder + rename).

    The data goes through a Python file object, so a failed write keeps its ``errno``: a full disk is reported as
    ``ENOSPC`` with the checkpoint's path (the previous file stays as it was), not as torch's ``unexpected pos``.
    """
    def save(tmp: Any) -> None:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    try:
        atomic_write(path, save)
    except (OSError, RuntimeError) as err:
        cause = _os_error(err)
        if cause is None or cause.errno not in _NO_SPACE:
            raise
        raise OSError(cause.errno, f"{errno.errorcode[cause.errno]}: no space left on the device (or quota) while "
                                   f"writing checkpoint {path}; the previous file, if any, is unchanged") from err


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic (temp file in the same folder + fsync + rename), and whose
    loads are weights-only and name the file.

    Remote URLs (``s3://`` ...) keep Lightning's own save path, whose object stores replace whole objects anyway;
    loading from a URL is refused (nothing is downloaded).  ``trust_pickle`` (the model's setting, or
    ``weights_only=False`` passed to the Trainer) allows checkpoints that need full pickle.
    """

    def __init__(self, trust_pickle: bool = False) -> None:
        self.trust_pickle = trust_pickle

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

    def load_checkpoint(self, path: _PATH, map_location: Optional[Any] = None,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        """The checkpoint on the CPU (Lightning moves it where it belongs); ``map_location`` is not used."""
        return torch_load(path, trust_pickle=self.trust_pickle or weights_only is False, what="Lightning checkpoint")
