"""The encode cache: an unchanged icon is never encoded twice.

Key = SHA-256 over (source bytes, encode settings, ENCODER_VERSION, library versions), as Hugo
keys its resources. An entry is a directory written to a temp name and renamed, so a killed run
leaves either a whole entry or none; every file's SHA-256 is kept in the entry and checked on
read, so a torn or edited entry is encoded again, never published. Each use touches the entry,
and `prune` removes what no run has used within the retention window: the cache stays bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from .files import fsync_dir, write_atomic, write_new
from .model import EncodedIcon, Rendition, SourceIcon, Variant


def cache_key(source: SourceIcon, encoder_version: str) -> str:
    recipe = json.dumps({"settings": asdict(source.spec.settings), "encoder": encoder_version}, sort_keys=True)
    return hashlib.sha256(hashlib.sha256(source.data).digest() + recipe.encode()).hexdigest()


class EncodeCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def get(self, key: str, source: SourceIcon) -> EncodedIcon | None:
        entry = self.directory / key[:2] / key
        try:
            meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
            renditions = tuple(
                Rendition(r["density"], r["width"], r["height"], tuple(_variant(entry, v) for v in r["variants"]))
                for r in meta["renditions"]
            )
            os.utime(entry)  # used: kept by prune for another retention window
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or damaged: encode again
        return EncodedIcon(
            source.spec.name, source.spec.slug, meta["width"], meta["height"], len(source.data), renditions, reused=True
        )

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

    def put(self, key: str, icon: EncodedIcon) -> None:
        entry = self.directory / key[:2] / key
        if entry.exists():
            return
        temp = entry.with_name(f".{key}.{os.getpid()}.tmp")
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
        renditions = []
        for index, rendition in enumerate(icon.renditions):
            variants = []
            for variant in rendition.variants:
                name = f"{index}.{variant.format}"
                write_new(temp / name, variant.data)
                variants.append(
                    {
                        "format": variant.format,
                        "file": name,
                        "detail": variant.detail,
                        "ssim": variant.ssim,
                        "sha256": hashlib.sha256(variant.data).hexdigest(),
                    }
                )
            renditions.append(
                {
                    "density": rendition.density,
                    "width": rendition.width,
                    "height": rendition.height,
                    "variants": variants,
                }
            )
        meta = {"width": icon.width, "height": icon.height, "renditions": renditions}
        write_new(temp / "meta.json", json.dumps(meta, indent=1).encode())
        try:
            os.rename(temp, entry)
        except OSError:
            shutil.rmtree(temp, ignore_errors=True)  # another writer won the race: same bytes
            return
        fsync_dir(entry.parent)


def _variant(entry: Path, meta: dict[str, object]) -> Variant:
    data = (entry / str(meta["file"])).read_bytes()
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise ValueError(f"{entry / str(meta['file'])}: its bytes are not the ones cached")
    return Variant(str(meta["format"]), data, str(meta["detail"]), float(str(meta["ssim"])))
