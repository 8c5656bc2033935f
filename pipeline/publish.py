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
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import brotli

from .errors import PublishError
from .model import PublishResult, PublishSettings

RELEASE = re.compile(r"^r(\d{6,})$")
COMPRESSIBLE = (".html", ".css", ".js", ".json", ".xml", ".txt", ".svg")  # get a .gz and a .br where it pays
PAGE_TYPES = (".html", ".json", ".xml", ".txt")  # what a reader or a crawler sees as content
NOT_CONTENT = {"manifest.json"}
Checkpoint = Callable[[str], None]  # named points in a run; the test-only crash points hook in here


@dataclass(frozen=True)
class Record:
    """releases/rNNNNNN.json."""

    name: str
    seq: int
    created: float  # wall-clock seconds; used only for the retention window, never for ordering
    built: dict[str, str]  # path -> sha256 of the files this build produced
    assets: list[str]  # the hashed assets this build made; later releases carry them while it is kept


# ---- publishing --------------------------------------------------------------------------------


def publish(dist: Path, files: dict[str, bytes], settings: PublishSettings, now: float,
            checkpoint: Checkpoint = lambda name: None, required: tuple[str, ...] = ("index.html",)) -> PublishResult:
    """Make `files` (release-relative path -> bytes) the live site, unless it already is.
    `required`: paths the release must hold (the gate refuses it otherwise)."""
    try:
        return _publish(dist, files, settings, now, checkpoint, required)
    except OSError as error:  # disk full, out of inodes, read-only, permissions
        where = f" ({error.filename})" if error.filename else ""
        raise PublishError(f"cannot write the new release under {dist}: {error.strerror or error}{where}; "
                           "the live site is unchanged; free space or fix permissions, then run again") from None


def _publish(dist: Path, files: dict[str, bytes], settings: PublishSettings, now: float,
             checkpoint: Checkpoint, required: tuple[str, ...]) -> PublishResult:
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
    built = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
    if live_record and live_record.built == built and (releases / live).is_dir():
        return PublishResult(False, live, (), 0, 0)

    seq = max((int(m.group(1)) for p in releases.iterdir() if (m := RELEASE.match(p.name.removesuffix(".json")))), default=0) + 1
    name = f"r{seq:06d}"
    retained = _retained_assets(records, settings, now) | set(live_record.assets if live_record else ())
    staging = dist / f".staging-{os.getpid()}"
    live_dir = releases / live if live else None
    record = Record(name, seq, now, built, sorted(p for p in built if p.startswith("assets/")))
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
    _fsync_dir(releases)
    checkpoint("after_stage_rename")
    checkpoint("before_switch")
    switch(dist, f"releases/{name}")
    checkpoint("after_switch")
    changed = changed_pages(live_dir, live_record.built if live_record else {}, files)
    try:
        removed = collect_garbage(dist, [*records, record], settings, now)
    except OSError:
        removed = ()  # the switch is done; whatever is left over, the next run collects
    return PublishResult(True, name, changed, written, byte_count, removed)


def _retained_assets(records: list[Record], settings: PublishSettings, now: float) -> set[str]:
    return {a for r in kept_records(records, settings, now) for a in r.assets}


def _write_release(staging: Path, files: dict[str, bytes], built: dict[str, str], live_dir: Path | None,
                   live_record: Record | None, retained: set[str], checkpoint: Checkpoint) -> tuple[int, int]:
    """Write new files; hard-link unchanged and retained ones from the live release, which holds
    every retained asset (by induction: each release carried the assets of the releases kept
    when it was made, a superset of those kept now). Returns files and bytes written."""
    staging.mkdir(mode=0o755)
    os.chmod(staging, 0o755)
    same = live_record.built if live_record else {}
    written = byte_count = 0
    for path, data in sorted(files.items()):
        target = staging / path
        _mkdirs(staging, target.parent)
        if live_dir and same.get(path) == built[path] and _link_if_exists(live_dir / path, target):
            _link_siblings(live_dir / path, target)
            continue
        _write_file(target, data)
        written, byte_count = written + 1, byte_count + len(data)
        if written == 1:
            checkpoint("mid_write")
        if path.endswith(COMPRESSIBLE):
            for suffix, packed in _precompressed(data):
                _write_file(target.with_name(target.name + suffix), packed)
                written, byte_count = written + 1, byte_count + len(packed)
    for path in sorted(retained - set(files)):
        target = staging / path
        if live_dir is not None and (live_dir / path).is_file():
            _mkdirs(staging, target.parent)
            _link_if_exists(live_dir / path, target)
            _link_siblings(live_dir / path, target)
    return written, byte_count


def _link_siblings(source: Path, target: Path) -> None:
    """Hard-link the precompressed copies that sit beside `source` (those it has) beside `target`."""
    for suffix in COMPRESSED:
        _link_if_exists(source.with_name(source.name + suffix), target.with_name(target.name + suffix))


def _precompressed(data: bytes) -> list[tuple[str, bytes]]:
    """(suffix, bytes) of each precompressed copy worth serving in place of `data`."""
    return [(suffix, packed) for suffix, compress in COMPRESSED.items() if (packed := compress(data)) is not None]


def _gzip(data: bytes) -> bytes | None:
    """Precompressed for nginx gzip_static; mtime 0 so equal input gives equal bytes."""
    return _if_smaller(gzip.compress(data, compresslevel=9, mtime=0), data)


def _brotli(data: bytes) -> bytes | None:
    """Precompressed for browsers that accept br (deploy/nginx.conf serves it); quality 11, the
    slowest and smallest, paid once per build. No timestamp in it: equal input, equal bytes."""
    return _if_smaller(brotli.compress(data, quality=11), data)


def _if_smaller(packed: bytes, data: bytes) -> bytes | None:
    """Worth a file only when it saves at least 5%: below that, the plain file is served."""
    return packed if len(packed) < len(data) * 0.95 else None


COMPRESSED: dict[str, Callable[[bytes], bytes | None]] = {".gz": _gzip, ".br": _brotli}  # sibling suffix -> compressor


def _mkdirs(root: Path, directory: Path) -> None:
    missing = []
    while directory != root and not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(mode=0o755)
        os.chmod(path, 0o755)  # the umask may have taken bits away


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.fchmod(fd, 0o644)  # whatever the umask: nginx must be able to read it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


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
    _fsync_dir(dist)


def live_release(dist: Path) -> str | None:
    try:
        return PurePosixPath(os.readlink(dist / "current")).name
    except (FileNotFoundError, OSError):
        return None


def changed_pages(live_dir: Path | None, before: dict[str, str], files: dict[str, bytes]) -> tuple[str, ...]:
    """Pages whose visible content is new, gone or different. A page that differs only in
    asset hashes (an icon re-encoded, the CSS changed) or its build id is not a content change:
    search engines need not hear about it."""
    paths = {p for p in {*before, *files} if p.endswith(PAGE_TYPES) and p not in NOT_CONTENT and not p.startswith("assets/")}
    changed = []
    for path in sorted(paths):
        if path not in files or path not in before:
            changed.append(path)
        elif before[path] != hashlib.sha256(files[path]).hexdigest():
            old = (live_dir / path).read_bytes() if live_dir and (live_dir / path).is_file() else b""
            if visible(old) != visible(files[path]):
                changed.append(path)
    return tuple(changed)


_HASHED_NAME = re.compile(rb"(/assets/[^\"'\s<>()]*?)\.[0-9a-f]{10}(\.[A-Za-z0-9]+)")
_VOLATILE = re.compile(rb'(<meta name="build" content=|integrity=)"[^"]*"')


def visible(page: bytes) -> bytes:
    """The page with asset hashes, SRI and the build id blanked out."""
    return _VOLATILE.sub(rb'\1""', _HASHED_NAME.sub(rb"\1\2", page))


# ---- records, retention, garbage -----------------------------------------------------------------


def load_records(releases: Path) -> list[Record]:
    records = []
    for path in releases.glob("r*.json"):
        if not RELEASE.match(path.stem) or not (releases / path.stem).is_dir():
            continue
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            records.append(Record(raw["name"], int(raw["seq"]), float(raw["created"]), dict(raw["built"]), list(raw["assets"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a record we cannot read: its release is never carried forward
    return sorted(records, key=lambda r: r.seq)


def kept_records(records: list[Record], settings: PublishSettings, now: float) -> list[Record]:
    """The last K by sequence number (never by clock), plus any created within the window.
    A clock that jumped back makes records look newer, which only keeps more."""
    by_seq = sorted(records, key=lambda r: r.seq)
    recent = by_seq[-max(2, settings.keep_releases):]
    window = now - settings.retention_hours * 3600
    return [r for r in by_seq if r in recent or r.created >= window]


def collect_garbage(dist: Path, records: list[Record], settings: PublishSettings, now: float) -> tuple[str, ...]:
    live = live_release(dist)
    keep = {r.name for r in kept_records(records, settings, now)} | ({live} if live else set())
    releases = dist / "releases"
    removed = []
    for entry in sorted(releases.iterdir()):
        name = entry.name.removesuffix(".json")
        if RELEASE.match(name) and name not in keep:
            if entry.is_dir():
                shutil.rmtree(entry)
                removed.append(name)
            else:
                entry.unlink()
    return tuple(removed)


def remove_never_live(releases: Path, live: str | None) -> None:
    """Releases numbered after the live one were renamed into place by a run that died (or was
    stopped) before its switch: never served, so nothing can need them, and they must not count
    among the last K that retention keeps. Safe: the caller holds the lock."""
    live_seq = int(RELEASE.match(live).group(1)) if live and RELEASE.match(live) else None
    if live_seq is None:
        return
    for entry in releases.iterdir():
        match = RELEASE.match(entry.name.removesuffix(".json"))
        if match and int(match.group(1)) > live_seq:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def remove_staging(dist: Path) -> None:
    """Staging left by a run that was killed. Safe: the caller holds the lock."""
    for entry in dist.glob(".staging-*"):
        shutil.rmtree(entry, ignore_errors=True)
    for entry in dist.glob(".current.*.tmp"):
        entry.unlink(missing_ok=True)


# ---- the pre-switch gate ----------------------------------------------------------------------


class _References(HTMLParser):
    ATTRIBUTES = {"src", "href", "srcset", "poster", "data"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in self.ATTRIBUTES and value:
                if key == "srcset":
                    self.urls += [part.strip().split(" ")[0] for part in value.split(",") if part.strip()]
                else:
                    self.urls.append(value.strip())


def local_references(html: str) -> list[str]:
    """Release-relative paths of every same-site URL a page names (absolute or root-relative)."""
    parser = _References()
    parser.feed(html)
    paths = []
    for url in parser.urls:
        parts = urlsplit(url)
        if parts.scheme or parts.netloc or not parts.path.startswith("/"):
            continue  # external, mailto:, fragment-only or relative: not ours to check here
        path = unquote(parts.path).lstrip("/")
        paths.append(path + "index.html" if path.endswith("/") or not path else path)
    return paths


def check_release(root: Path, required: tuple[str, ...] = ("index.html",)) -> None:
    """Refuse a release with a dangling local URL, a non-regular file or a required file missing."""
    problems = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            problems.append(f"{relative}: not a regular file or directory")
        elif path.suffix == ".html":
            for ref in local_references(path.read_text(encoding="utf-8", errors="replace")):
                target = (root / ref).resolve()
                if root.resolve() not in target.parents or not target.is_file():
                    problems.append(f"{relative} names /{ref}, which is not in the release")
    problems += [f"{path} is missing" for path in required if not (root / path).is_file()]
    if problems:
        raise PublishError("the new release failed its check; the live site is unchanged", tuple(problems))


# ---- durability ------------------------------------------------------------------------------


def _fsync_tree(root: Path) -> None:
    """Files were fsynced as written; now every directory, deepest first."""
    directories = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    for directory in [*directories, root]:
        _fsync_dir(directory)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: object) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    _write_file(temp, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
    os.replace(temp, path)
