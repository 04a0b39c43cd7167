"""Files that are either the old version or the complete new one, never half written.

Every artefact (Lightning checkpoints, merged exports, plots) goes through one function: write a temporary file
in the target folder, fsync it, ``os.replace`` it into place, fsync the folder.  A job killed mid-write (SLURM
preemption, OOM kill) leaves the previous file intact.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Union


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries (the rename itself), to disk where the file system allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. file systems that do not allow opening folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Union[str, os.PathLike], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary sibling of ``path``, then move it into place atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # writers that use private temp files (safetensors) would leave 0600
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync(path.parent)
    return path
