"""One build at a time per site: every entry point holds this lock for its whole run."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import LockedError


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Non-blocking flock on `path`. The kernel drops it when the holder dies, even by kill -9,
    so there is never a stale lock to clean up; the pid inside is only for the message."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="ascii") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise LockedError(f"another build is running (pid {holder}); try again when it ends") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
