"""The encode stage's worker processes: untrusted image bytes are decoded here, not in the build.

A worker runs with an address-space cap, leaves SIGTERM/SIGINT to its parent (which stops the
pool at its next checkpoint), and dies with its parent (PR_SET_PDEATHSIG), so a build killed
with -9 leaves no worker waiting on its queue and holding the build's output pipes open.
This module imports only `encode` (and what it needs), so a spawned worker starts in ~0.07 s
instead of the ~0.27 s that importing the whole build would cost.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import resource
import signal
from concurrent.futures import ProcessPoolExecutor

from .encode import encode_icon
from .errors import ImageError
from .model import EncodedIcon, SourceIcon

CRASH_ENV = "BUILDER_CRASH_AT"  # test-only; "decode:<slug>" makes the worker encoding that icon abort
PR_SET_PDEATHSIG = 1  # linux/prctl.h
ADDRESS_SPACE = 2 * 1024**3  # bytes; a 64 px icon needs ~100 MB with the interpreter


def pool(count: int) -> ProcessPoolExecutor:
    # spawn, not fork: the fetch threads may hold locks that a forked child would inherit.
    return ProcessPoolExecutor(max(1, count), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start, initargs=(os.getpid(),))


def encode(source: SourceIcon) -> EncodedIcon | ImageError:
    """encode_icon, with its expected failure returned as a value."""
    if os.environ.get(CRASH_ENV) == f"decode:{source.spec.slug}":
        os.abort()  # test-only: a decoder crash in the worker (faults.md #30)
    try:
        return encode_icon(source)
    except ImageError as error:
        return error


def _start(parent: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
