"""Crash injection for the fault tests, and the only place that reads BUILDER_CRASH_AT.

Unset in production, where every function here does nothing. The tests set it to
    <checkpoint>     kill -9 the build at that named checkpoint (see publish.Checkpoint's names)
    decode:<slug>    abort the encode worker that takes that icon (a decoder crash)
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "BUILDER_CRASH_AT"


def kill_at(checkpoint: str) -> None:
    if os.environ.get(CRASH_ENV) == checkpoint:
        os.kill(os.getpid(), signal.SIGKILL)


def abort_decoding(slug: str) -> None:
    if os.environ.get(CRASH_ENV) == f"decode:{slug}":
        os.abort()
