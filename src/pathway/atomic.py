"""Files and folders that are either the old version or the complete new one, never half written.

Every artefact (Lightning checkpoints, merged exports, plots) goes through one function: write a temporary file
in the target folder, fsync it, ``os.replace`` it into place, fsync the folder.  A job killed mid-write (SLURM
preemption, OOM kill) leaves the previous file intact.  A set of files that belong together (an export folder) is
written to a temporary folder and swapped in whole (``atomic_folder``).
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Union


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


@contextmanager
def atomic_folder(path: Union[str, os.PathLike], replaceable: Callable[[Path], Optional[str]]) -> Iterator[Path]:
    """Fill a temporary sibling folder of ``path``, then swap it in whole: ``path`` holds the old folder or the
    complete new one, never a mix (a new ``model.safetensors`` beside an old ``model.pt2``).

    ``replaceable(path)`` is asked before anything is written when ``path`` already exists: it returns why the folder
    must not be replaced (e.g. it holds files the new folder would not), or ``None``.  On any error, the temporary
    folder is removed and the old one is left as it was.  The swap is two renames (old aside, new in); only a kill
    between them, a window of microseconds, leaves the old folder under its ``.old`` name.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a folder")
        refusal = replaceable(path)
        if refusal:
            raise FileExistsError(f"{path}: {refusal}; nothing was written")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.iterdir():
            _fsync(child)
        _fsync(tmp)
        if path.exists():
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync(path.parent)
