"""The encode cache: an unchanged icon is never encoded twice.

Key = SHA-256 over (source bytes, encode settings, ENCODER_VERSION, library versions), as Hugo
keys its resources. An entry is a directory written to a temp name and renamed, so a killed run
leaves either a whole entry or none. Each use touches the entry, and `prune` removes what no run
has used within the retention window: the cache stays bounded.

A hit is a set of CachedFile references, not bytes: a build holds ~6 per icon and the publisher
reads a file only to copy it into a new release (checking its SHA-256). The entry records each
file's SHA-256, SRI, size and mtime; a file whose size or mtime differs from the record (torn,
edited, copied) is read and hashed, and a file whose bytes differ makes the entry a miss: it is
encoded again, never published. So an hourly run reads one small meta.json per icon, not its files.

An entry is not fsynced (an fsync per file was ~4 ms, ~30 ms an icon: in a cold build the parent
fell behind two workers). Nothing needs it to last: a lost entry is encoded again, and an entry
whose files lost their bytes in a power cut is not used: ext4 and XFS do not show a file's new
size before its data are on disk (a file whose size is not the recorded one is hashed: a miss), and
the publisher checks every cached file's SHA-256 before it copies it into a release (durably).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .files import write_atomic
from .model import CachedFile, CachedVariant, EncodedIcon, EncodeSettings, Rendition, SourceIcon, Variant, sri


def cache_key(source: SourceIcon, encoder_version: str) -> str:
    return hashlib.sha256(
        hashlib.sha256(source.data).digest() + _recipe(source.spec.settings, encoder_version)
    ).hexdigest()


@functools.cache
def _recipe(settings: EncodeSettings, encoder_version: str) -> bytes:
    """The settings part of a key: the same for most icons, so made once per run."""
    return json.dumps({"settings": asdict(settings), "encoder": encoder_version}, sort_keys=True).encode()


class EncodeCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def get(self, key: str, source: SourceIcon) -> EncodedIcon | None:
        return self._load(key, source.spec.name, source.spec.slug, len(source.data), reused=True)

    def _load(self, key: str, name: str, slug: str, source_bytes: int, reused: bool) -> EncodedIcon | None:
        entry = f"{self.directory}/{key[:2]}/{key}"  # str paths: ~7 per icon, thousands of icons a run
        try:
            with open(f"{entry}/meta.json", encoding="utf-8") as file:
                meta = json.load(file)
            renditions = tuple(
                Rendition(r["density"], r["width"], r["height"], tuple(_variant(entry, v) for v in r["variants"]))
                for r in meta["renditions"]
            )
            if any([v.pop("checked", False) for r in meta["renditions"] for v in r["variants"]]):
                write_atomic(Path(entry, "meta.json"), json.dumps(meta, indent=1).encode())  # quick next time
            os.utime(entry)  # used: kept by prune for another retention window
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or damaged: encode again
        return EncodedIcon(name, slug, meta["width"], meta["height"], source_bytes, renditions, reused=reused)

    def made_once(self, kind: str, source: bytes, make: Callable[[bytes], bytes]) -> bytes:
        """make(source), remembered by the hash of `kind` (which names the maker and its version)
        and `source`: the favicon, the minified pages."""
        digest = hashlib.sha256(kind.encode() + b"\0" + source).hexdigest()
        path = self.directory / "derived" / digest  # flat: each new entry costs exactly one inode
        try:
            stored = path.read_bytes()
            check, _, data = stored.partition(b"\n")
            if check.decode("ascii", "replace") == hashlib.sha256(data).hexdigest():
                os.utime(path)
                return data
        except FileNotFoundError:
            pass
        data = make(source)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, hashlib.sha256(data).hexdigest().encode() + b"\n" + data)
        return data

    def prune(self, unused_since: float) -> int:
        """Remove the entries no run has used since `unused_since` (wall-clock seconds); returns
        how many. Safe while the caller holds the build lock."""
        removed = 0
        for path in [*self.directory.glob("??/*"), *self.directory.glob("derived/*")]:
            try:
                if path.lstat().st_mtime < unused_since:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def put(self, key: str, icon: EncodedIcon) -> EncodedIcon:
        """Keep `icon` under `key`; returns it as cached (its files, not its bytes), so a build
        holds no icon's bytes longer than it takes to write them. A damaged entry is replaced."""
        entry = self.directory / key[:2] / key
        cached = self._load(key, icon.name, icon.slug, icon.source_bytes, reused=False) if entry.exists() else None
        if cached is not None:
            return cached
        shutil.rmtree(entry, ignore_errors=True)
        renditions = self._write(entry, key, icon)
        if renditions is None:  # another writer's entry, made from the same bytes: use theirs
            return self._load(key, icon.name, icon.slug, icon.source_bytes, reused=False) or icon
        return replace(icon, renditions=renditions, reused=False)

    def _write(self, entry: Path, key: str, icon: EncodedIcon) -> tuple[Rendition, ...] | None:
        """Write the entry under a temp name and rename it; returns its renditions as cached files,
        made from the bytes in hand (not read back), or None if another writer's entry won the race."""
        temp = entry.with_name(f".{key}.{os.getpid()}.tmp")
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
        records, renditions = [], []
        for index, rendition in enumerate(icon.renditions):
            variants, cached = [], []
            for variant in rendition.variants:
                if not isinstance(variant, Variant):
                    raise TypeError(f"{icon.name}: only freshly encoded icons are cached")
                name = f"{index}.{variant.format}"
                record = {
                    "format": variant.format,
                    "file": name,
                    "detail": variant.detail,
                    "ssim": variant.ssim,
                    **_record(variant.data, _write_file(temp / name, variant.data)),
                }
                variants.append(record)
                cached.append(_cached(f"{entry}/{name}", record))
            records.append(
                {
                    "density": rendition.density,
                    "width": rendition.width,
                    "height": rendition.height,
                    "variants": variants,
                }
            )
            renditions.append(Rendition(rendition.density, rendition.width, rendition.height, tuple(cached)))
        meta = {"width": icon.width, "height": icon.height, "renditions": records}
        _write_file(temp / "meta.json", json.dumps(meta, indent=1).encode())
        try:
            os.rename(temp, entry)  # atomic: a killed run leaves the whole entry or none
        except OSError:
            shutil.rmtree(temp, ignore_errors=True)
            return None
        return tuple(renditions)


def _write_file(path: Path, data: bytes) -> int:
    """Create `path` (it must not exist) with `data`, not fsynced (see the module docstring);
    returns its mtime in ns, for the record."""
    with open(path, "xb") as file:
        file.write(data)
        file.flush()
        return os.fstat(file.fileno()).st_mtime_ns


def _record(data: bytes, mtime_ns: int) -> dict[str, object]:
    """What meta.json records of a file: enough to publish it without reading it, and to notice
    (size, mtime: the quick check of make and rsync) that it changed since."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "integrity": sri(data), "size": len(data), "mtime_ns": mtime_ns}


def _variant(entry: str, meta: dict[str, Any]) -> CachedVariant:
    """The variant a meta.json entry names, as a CachedFile. A file whose size or mtime is not the
    recorded one is read and must still have the recorded SHA-256 (else ValueError: a miss);
    `meta` is then updated in place with what the file is now, and marked "checked"."""
    path = f"{entry}/{meta['file']}"
    stat = os.stat(path)
    if (meta.get("size"), meta.get("mtime_ns")) != (stat.st_size, stat.st_mtime_ns) or "integrity" not in meta:
        with open(path, "rb") as stream:
            data = stream.read()
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise ValueError(f"{path}: its bytes are not the ones cached")
        meta.update(_record(data, stat.st_mtime_ns), checked=True)
    return _cached(path, meta)


def _cached(path: str, meta: dict[str, Any]) -> CachedVariant:
    file = CachedFile(path, int(meta["size"]), str(meta["sha256"]), str(meta["integrity"]))
    return CachedVariant(str(meta["format"]), file, str(meta["detail"]), float(meta["ssim"]))
