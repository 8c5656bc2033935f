"""The encode fan-out, part of the build room: untrusted image bytes are decoded in worker
processes, with the encode cache in front and the last good copy behind.

A worker runs with an address-space cap, leaves SIGTERM/SIGINT to its parent (which stops the
pool at its next checkpoint), and dies with its parent (PR_SET_PDEATHSIG), so a build killed
with -9 leaves no worker waiting on its queue and holding the build's output pipes open. A
decoder crash or a memory blow-up costs that icon (its last good copy is used), not the run.
Workers are spawned and import only this module and `encode` (not the whole build), so each
starts in a fraction of the time.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import resource
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

from . import crashpoints
from .cache import EncodeCache, cache_key
from .encode import ENCODER_VERSION, LIBRARY_VERSIONS, encode_icon
from .errors import ImageError, Interrupted
from .model import EncodedIcon, Origin, Progress, SourceIcon, Stored

CACHE_VERSION = f"{ENCODER_VERSION}; {LIBRARY_VERSIONS}"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
ADDRESS_SPACE = 2 * 1024**3  # bytes; a 64 px icon needs ~100 MB with the interpreter
Checkpoint = Callable[[str], None]
LastGood = Callable[[SourceIcon], Stored | None]
log = logging.getLogger(__name__)


def encode_all(
    sources: list[SourceIcon],
    last_good: LastGood,
    cache: EncodeCache,
    reencode: frozenset[str],
    jobs: int,
    checkpoint: Checkpoint,
    progress: Progress = lambda stage, done, total, item: None,
) -> tuple[list[SourceIcon], list[EncodedIcon]]:
    """Encode what the cache lacks, each result cached as it arrives; every icon returned holds
    its cached files, not their bytes (the memory of a build does not grow with its encoded
    bytes). A fresh download that fails to decode falls back to its last good copy (marked
    STALE); an icon with no decodable copy at all is an ImageError listing every such icon."""
    sources = list(sources)
    encoded: dict[int, EncodedIcon] = {}
    for i, source in enumerate(sources):
        hit = None if source.spec.name in reencode else cache.get(cache_key(source, CACHE_VERSION), source)
        if hit is not None:
            log.debug("%s: reused from the encode cache", source.spec.name)
            encoded[i] = hit
    missing = [i for i in range(len(sources)) if i not in encoded]
    failed: dict[int, ImageError] = {}
    if missing:
        progress("encode", 0, len(missing), "")  # the clock of the estimate starts now
    try:
        for done, (j, outcome) in enumerate(_encode_each([sources[i] for i in missing], jobs, checkpoint), 1):
            i = missing[j]
            progress("encode", done, len(missing), sources[i].spec.name)
            if isinstance(outcome, ImageError):
                failed[i] = outcome
                continue
            log.info("%s", describe(outcome))
            # kept at once (a stopped run loses nothing), and held as its cached files, not bytes
            encoded[i] = cache.put(cache_key(sources[i], CACHE_VERSION), outcome)
    except Interrupted:
        kept = sum(1 for i in missing if i in encoded)
        raise Interrupted(
            f"stopped by a signal; {kept} of {len(missing)} icon(s) to encode were encoded and kept for the "
            "next run; nothing was switched: the live site is unchanged"
        ) from None
    problems = []
    for i, error in sorted(failed.items()):
        fallback = _fallback(sources[i], last_good(sources[i]), str(error))
        cached = cache.get(cache_key(fallback, CACHE_VERSION), fallback) if fallback else None
        outcome = cached or (_encode_alone(fallback) if fallback else error)
        if fallback is None or isinstance(outcome, ImageError):
            problems.append(str(outcome))
            continue
        sources[i] = fallback
        log.info("%s: the new source failed to decode; its last good copy was encoded instead", fallback.spec.name)
        encoded[i] = outcome if cached else cache.put(cache_key(fallback, CACHE_VERSION), outcome)
    if problems:
        raise ImageError(
            f"{len(problems)} icon(s) cannot be used; replace the source or its file in icons/", tuple(problems)
        )
    return sources, [encoded[i] for i in range(len(sources))]


def describe(icon: EncodedIcon) -> str:
    """One line of the choices made: "Denny: 1x 40px avif q91 2,377 B, webp lossless 2,668 B, ..."."""
    sizes = "; ".join(
        f"{r.density:g}x {r.width}px " + ", ".join(f"{v.format} {v.detail} {v.size:,} B" for v in r.variants)
        for r in icon.renditions
    )
    return f"{icon.name}: {sizes} (source {icon.source_bytes:,} B)"


def _fallback(source: SourceIcon, stored: Stored | None, reason: str) -> SourceIcon | None:
    if source.origin is not Origin.DOWNLOADED or stored is None or stored.data == source.data:
        return None
    return replace(
        source,
        data=stored.data,
        origin=Origin.STALE,
        reason=reason,
        etag=stored.etag,
        last_modified=stored.last_modified,
    )


def _encode_each(
    sources: list[SourceIcon], jobs: int, checkpoint: Checkpoint
) -> Iterator[tuple[int, EncodedIcon | ImageError]]:
    """(index, result) for each source as its worker finishes. If a worker dies, the icons it
    may have taken down with it are retried one by one, each in a pool of its own."""
    pending = set(range(len(sources)))
    if sources:
        pool = _pool(min(jobs, len(sources)))
        try:
            futures = {pool.submit(encode_in_worker, source): i for i, source in enumerate(sources)}
            for future in as_completed(futures):
                checkpoint("mid_encode")
                try:
                    outcome: EncodedIcon | ImageError = future.result()
                except ImageError as error:
                    outcome = error
                except BrokenProcessPool:
                    break
                index = futures.pop(future)  # the future holds the result: let both go once used
                pending.discard(index)
                yield index, outcome
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    for i in sorted(pending):
        checkpoint("mid_encode")
        yield i, _encode_alone(sources[i])


def _encode_alone(source: SourceIcon) -> EncodedIcon | ImageError:
    pool = _pool(1)
    try:
        return pool.submit(encode_in_worker, source).result()
    except ImageError as error:
        return error
    except BrokenProcessPool:
        return ImageError(
            f"icon {source.spec.name!r} ({source.spec.url}): the image decoder crashed on it; replace the source"
        )
    finally:
        pool.shutdown(wait=True)


def _pool(count: int) -> ProcessPoolExecutor:
    # spawn, not fork: the fetch threads may hold locks that a forked child would inherit.
    return ProcessPoolExecutor(
        max(1, count),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(os.getpid(),),
    )


def encode_in_worker(source: SourceIcon) -> EncodedIcon:
    """encode_icon, in a worker; an ImageError travels back to the parent through the future."""
    crashpoints.abort_decoding(source.spec.slug)
    return encode_icon(source)


def _start_worker(parent: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
