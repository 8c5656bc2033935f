"""One build at a time per site: every entry point holds this lock for its whole run."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

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
            raise LockedError(f"another build is running (pid {_holder(handle)}); try again when it ends") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)  # no stale pid for the next loser to name


def _holder(handle: TextIO) -> str:
    """The holder writes its pid just after it takes the lock: give it a moment to appear."""
    for _ in range(50):
        handle.seek(0)
        pid = handle.read().strip()
        if pid:
            return pid
        time.sleep(0.01)
    return "unknown"
