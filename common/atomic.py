"""Atomic file writes: a reader sees the old file or the new one, never half of either.

The data go to a temporary sibling, which is flushed and fsynced, then
renamed over the target; the folder is fsynced too, so the rename itself
survives a crash. One helper for every file FedCommons writes that another
process may read at any moment (accountant histories, receipts, snapshots,
sealed-update evidence, model cards).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["write_atomic", "write_atomic_with"]


def write_atomic(path: Path, data: bytes | str, *, mode: int | None = None) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` atomically and durably; return ``path``.

    Parameters
    ----------
    path : Path
        The file to create or replace; its folder is created if missing.
    data : bytes or str
        The whole new content.
    mode : int, optional
        Permission bits for the new file (default: the process's umask applies).
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return write_atomic_with(path, lambda handle: handle.write(raw), mode=mode)


def write_atomic_with(
    path: Path, write: Callable[[BinaryIO], object], *, mode: int | None = None
) -> Path:
    """Like :func:`write_atomic`, with ``write`` filling the open (binary) temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
