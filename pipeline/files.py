"""The one way every writer puts a file on disk that must last (icons/, the feed copy, the
IndexNow outbox, release records): all or nothing, across a crash or a power loss. The encode
cache writes its entries without fsync (cache.py says why: a lost entry is encoded again)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` so that `path` holds the old bytes or the new ones, never a part, across a
    crash or power loss: a temp file in the same directory, written and fsynced, given `mode`
    (mkstemp's 0600 would make nginx answer 403), renamed over `path`, then the directory fsynced."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    write_new(temp, data, mode)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create `path` (it must not exist) with `data`, `mode` whatever the umask, and fsync it.
    The caller makes it visible: by a rename (write_atomic), or by renaming its directory."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
