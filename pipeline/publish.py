"""Stage 6: release -> live, atomically. The only writer of dist/.

    dist/
      current -> releases/r000007      the served root (nginx `root .../dist/current`)
      releases/r000007/                one complete site; never edited once live
      releases/r000007.json            what it holds: built files + hashes, assets it names, time
      .staging-<pid>/                  the next release while it is being written

A release is written to staging (files 0644, dirs 0755, each fsynced), checked (every local URL
in every page resolves inside it, only regular files), renamed into releases/, and made live by
replacing `current` with a new symlink through one rename(2). Each release also carries the hashed
assets of the releases still retained (hard links, no copies), so a page served from an older
release keeps finding its assets for the retention window. A release whose built files equal the
live ones is not published at all.

A file to publish is bytes or a CachedFile (an encoded icon in the encode cache, by reference):
a cached file is read, and its SHA-256 checked, only when the new release lacks it, so an hourly
run that changes one icon reads and writes that icon's files and hard-links the rest.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Protocol

import brotli

from .errors import PublishError, describe_os_error
from .files import fsync_dir, write_atomic, write_new
from .gate import check_release
from .model import CachedFile, Payload, PublishResult, PublishSettings
from .retention import RELEASE, Record, collect_garbage, load_records, remove_never_live, retained_assets

COMPRESSIBLE = (".html", ".css", ".js", ".json", ".xml", ".txt", ".svg")  # get a .gz and a .br where it pays
Checkpoint = Callable[[str], None]  # named points in a run; the test-only crash points hook in here


class Target(Protocol):
    """Where a release goes. Given the complete file map of a build, make it live, all at once
    to a reader, or say why not (PublishError) with the live site unchanged."""

    def publish(
        self,
        files: dict[str, bytes],
        settings: PublishSettings,
        now: float,
        checkpoint: Checkpoint,
        required: tuple[str, ...],
    ) -> PublishResult: ...


# ---- publishing --------------------------------------------------------------------------------


def publish(
    dist: Path,
    files: Mapping[str, Payload],
    settings: PublishSettings,
    now: float,
    checkpoint: Checkpoint = lambda name: None,
    required: tuple[str, ...] = ("index.html",),
) -> PublishResult:
    """Make `files` (release-relative path -> bytes) the live site in `dist`, unless it already is."""
    return LocalDirectory(dist).publish(files, settings, now, checkpoint, required)


class LocalDirectory:
    """The first Target: a directory that nginx (or any static server) serves through the
    `current` symlink, switched by one rename(2)."""

    def __init__(self, dist: Path) -> None:
        self.dist = dist

    def publish(
        self,
        files: Mapping[str, Payload],
        settings: PublishSettings,
        now: float,
        checkpoint: Checkpoint,
        required: tuple[str, ...],
    ) -> PublishResult:
        """`required`: paths the release must hold (the gate refuses it otherwise). Takes cached
        files as well as bytes (so it is a Target, and more)."""
        try:
            return _publish(self.dist, files, settings, now, checkpoint, required)
        except OSError as error:  # disk full, out of inodes, read-only, permissions, name too long
            raise PublishError(
                f"cannot write the new release under {self.dist}; the live site is unchanged: "
                f"{describe_os_error(error)}"
            ) from None


def _publish(
    dist: Path,
    files: Mapping[str, Payload],
    settings: PublishSettings,
    now: float,
    checkpoint: Checkpoint,
    required: tuple[str, ...],
) -> PublishResult:
    releases = dist / "releases"
    for directory in (dist, releases):  # served by an unprivileged nginx whatever our umask
        directory.mkdir(parents=True, exist_ok=True)
        if directory.stat().st_mode & 0o777 != 0o755:
            os.chmod(directory, 0o755)
    remove_staging(dist)
    live = live_release(dist)
    remove_never_live(releases, live)
    records = load_records(releases)
    live_record = next((r for r in records if r.name == live), None)
    built = {path: _sha256(data) for path, data in files.items()}
    if live and live_record and live_record.built == built and (releases / live).is_dir():
        return PublishResult(False, live, {}, 0, 0)

    seq = (
        max(
            (int(m.group(1)) for p in releases.iterdir() if (m := RELEASE.match(p.name.removesuffix(".json")))),
            default=0,
        )
        + 1
    )
    name = f"r{seq:06d}"
    retained = retained_assets(records, settings, now) | set(live_record.assets if live_record else ())
    staging = dist / f".staging-{os.getpid()}"
    live_dir = releases / live if live else None
    record = Record(name, seq, now, built, sorted(p for p in built if p.startswith("assets/")))
    before = _pages_before(live_dir, live_record.built if live_record else {}, built)
    try:
        written, byte_count = _write_release(staging, files, built, live_dir, live_record, retained, checkpoint)
        check_release(staging, required)
        _fsync_tree(staging)
        checkpoint("before_stage_rename")
        _write_json(releases / f"{name}.json", record.__dict__)
        os.rename(staging, releases / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # never leave half a release behind
        (releases / f"{name}.json").unlink(missing_ok=True)
        raise
    fsync_dir(releases)
    checkpoint("after_stage_rename")
    checkpoint("before_switch")
    switch(dist, f"releases/{name}")
    checkpoint("after_switch")
    try:
        collect_garbage(releases, name, [*records, record], settings, now)
    except OSError:
        pass  # the switch is done; whatever is left over, the next run collects
    return PublishResult(True, name, before, written, byte_count)


def _pages_before(live_dir: Path | None, before: dict[str, str], built: dict[str, str]) -> dict[str, bytes | None]:
    """The live bytes of every file outside assets/ that this release adds, changes or drops
    (None: it is new), read before the switch, so the visible change can be judged after it."""
    paths = {p for p in {*before, *built} if not p.startswith("assets/") and before.get(p) != built.get(p)}
    return {
        p: (live_dir / p).read_bytes() if live_dir and p in before and (live_dir / p).is_file() else None
        for p in sorted(paths)
    }


def _write_release(
    staging: Path,
    files: Mapping[str, Payload],
    built: dict[str, str],
    live_dir: Path | None,
    live_record: Record | None,
    retained: set[str],
    checkpoint: Checkpoint,
) -> tuple[int, int]:
    """Write new files; hard-link unchanged and retained ones from the live release, which holds
    every retained asset (by induction: each release carried the assets of the releases kept
    when it was made, a superset of those kept now). Returns files and bytes written."""
    staging.mkdir(mode=0o755)
    os.chmod(staging, 0o755)
    same = live_record.built if live_record else {}
    made = {staging}
    written = byte_count = 0
    for path, payload in sorted(files.items()):
        target = staging / path
        _mkdirs(made, target.parent)
        if live_dir and same.get(path) == built[path] and _link_if_exists(live_dir / path, target):
            _link_siblings(live_dir / path, target)
            continue
        data = load(payload)
        write_new(target, data)
        written, byte_count = written + 1, byte_count + len(data)
        if written == 1:
            checkpoint("mid_write")
        if path.endswith(COMPRESSIBLE):
            for suffix, packed in _precompressed(data):
                write_new(target.with_name(target.name + suffix), packed)
                written, byte_count = written + 1, byte_count + len(packed)
    for path in sorted(retained - files.keys()):
        target = staging / path
        if live_dir is not None and (live_dir / path).is_file():
            _mkdirs(made, target.parent)
            _link_if_exists(live_dir / path, target)
            _link_siblings(live_dir / path, target)
    return written, byte_count


def load(payload: Payload) -> bytes:
    """The bytes of a file to publish. A cached file must still have the SHA-256 its cache entry
    recorded: a cache file edited since this run checked it is never published."""
    if not isinstance(payload, CachedFile):
        return payload
    data = Path(payload.path).read_bytes()
    if hashlib.sha256(data).hexdigest() != payload.sha256:
        raise PublishError(
            f"{payload.path}: the encode cache's file changed during the run; the live site is unchanged. "
            f"Remove {Path(payload.path).parent} and build again"
        )
    return data


def _sha256(payload: Payload) -> str:
    return payload.sha256 if isinstance(payload, CachedFile) else hashlib.sha256(payload).hexdigest()


def _link_siblings(source: Path, target: Path) -> None:
    """Hard-link the precompressed copies that sit beside `source` (those it has) beside `target`.
    Only a compressible file has any: an image costs no failed link(2) per suffix."""
    if source.name.endswith(COMPRESSIBLE):
        for suffix in COMPRESSED:
            _link_if_exists(source.with_name(source.name + suffix), target.with_name(target.name + suffix))


def _precompressed(data: bytes) -> list[tuple[str, bytes]]:
    """(suffix, bytes) of each precompressed copy worth serving in place of `data`."""
    return [(suffix, packed) for suffix, compress in COMPRESSED.items() if (packed := compress(data)) is not None]


def _gzip(data: bytes) -> bytes | None:
    """Precompressed for nginx gzip_static; mtime 0 so equal input gives equal bytes."""
    return _if_smaller(gzip.compress(data, compresslevel=9, mtime=0), data)


def _brotli(data: bytes) -> bytes | None:
    """Precompressed for browsers that accept br (deploy/nginx.conf serves it). No timestamp in
    it: equal input, equal bytes. The quality falls with the size so that no file costs a run more
    than ~0.15 s: a run that changes one icon writes index.html and manifest.json again. On a
    500-icon site (index.html 792 KB) quality 11 took 1.02 s for 41.9 KB, 10 took 0.35 s for
    44.2 KB, 9 took 0.04 s for 49.7 KB (gzip -9: 89.1 KB); codes.json (90 KB) at 11: 0.12 s."""
    quality = next(q for limit, q in BROTLI_QUALITY if len(data) <= limit)
    return _if_smaller(brotli.compress(data, quality=quality), data)


BROTLI_QUALITY = ((96 * 1024, 11), (256 * 1024, 10), (float("inf"), 9))  # (up to this many bytes, quality)


def _if_smaller(packed: bytes, data: bytes) -> bytes | None:
    """Worth a file only when it saves at least 5%: below that, the plain file is served."""
    return packed if len(packed) < len(data) * 0.95 else None


COMPRESSED: dict[str, Callable[[bytes], bytes | None]] = {".gz": _gzip, ".br": _brotli}  # sibling suffix -> compressor


def _mkdirs(made: set[Path], directory: Path) -> None:
    """Make `directory` and its missing parents, 0755 whatever the umask; `made` holds the
    directories already there (the staging root first), so each is looked at once."""
    missing = []
    while directory not in made and not directory.exists():
        missing.append(directory)
        directory = directory.parent
    made.add(directory)
    for path in reversed(missing):
        path.mkdir(mode=0o755)
        os.chmod(path, 0o755)  # the umask may have taken bits away
    made.update(missing)


def _link_if_exists(source: Path, target: Path) -> bool:
    try:
        os.link(source, target)
        return True
    except FileNotFoundError:
        return False


def switch(dist: Path, target: str) -> None:
    """Point dist/current at `target` with one rename(2) of a fresh symlink over the old one."""
    temp = dist / f".current.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    os.symlink(target, temp)
    os.replace(temp, dist / "current")
    fsync_dir(dist)


def live_release(dist: Path) -> str | None:
    try:
        return PurePosixPath(os.readlink(dist / "current")).name
    except (FileNotFoundError, OSError):
        return None


def remove_staging(dist: Path) -> None:
    """Staging left by a run that was killed. Safe: the caller holds the lock."""
    for entry in dist.glob(".staging-*"):
        shutil.rmtree(entry, ignore_errors=True)
    for entry in dist.glob(".current.*.tmp"):
        entry.unlink(missing_ok=True)


# ---- durability ------------------------------------------------------------------------------


def _fsync_tree(root: Path) -> None:
    """Files were fsynced as written; now every directory, deepest first (os.walk bottom-up: the
    directory entries' types, no stat per file)."""
    for directory, _dirs, _files in os.walk(root, topdown=False):
        fsync_dir(Path(directory))


def _write_json(path: Path, data: object) -> None:
    write_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
