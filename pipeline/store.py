"""The last good copies kept between runs, and the one way every writer puts a file on disk.

    icons/<slug>.<ext>          the last good source of each icon (png, jpg, gif, webp, avif)
    icons/<slug>.meta.json      its URL, validators (ETag, Last-Modified) and SHA-256
    .cache/feed/codes(.meta.json)  the same for a codes feed

A copy is written only once it has been decoded and encoded (icons) or parsed (the feed), so a
bad download never replaces a good copy. A copy edited by hand keeps its bytes but loses its
validators (its hash no longer matches), which only costs a full download.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .files import write_atomic
from .model import IMAGE_EXTENSIONS, Document, IconSpec, SourceIcon, Stored, sniff


class IconStore:
    """icons/: the last good source of each icon and its validators."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def load(self, spec: IconSpec) -> Stored | None:
        meta = _read_meta(self.directory / f"{spec.slug}.meta.json")
        for ext in [meta.get("ext", "png"), *IMAGE_EXTENSIONS]:
            path = self.directory / f"{spec.slug}.{ext}"
            if path.is_file():
                return _stored(path.read_bytes(), meta)
        return None

    def save(self, source: SourceIcon) -> None:
        """Record a validated source: bytes first, then the meta. Nothing is written when both are
        already on disk as they are (the hourly 304 case: the meta holds the bytes' SHA-256, and
        `source.data` came from that file, so the file is not read again)."""
        ext = sniff(source.data) or "png"
        meta = _meta(source.spec.url, source.etag, source.last_modified, source.data, ext=ext)
        meta_path = self.directory / f"{source.spec.slug}.meta.json"
        if _read_meta(meta_path) == meta and (self.directory / f"{source.spec.slug}.{ext}").is_file():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for old in self.directory.glob(f"{source.spec.slug}.*"):
            if old.suffix.lstrip(".") in IMAGE_EXTENSIONS and old.suffix != f".{ext}":
                old.unlink()
        write_atomic(self.directory / f"{source.spec.slug}.{ext}", source.data)
        write_atomic(meta_path, _meta_bytes(meta))


class FeedStore:
    """The last good copy of a codes feed (one file and its meta), under .cache/."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.meta_path = path.with_name(path.name + ".meta.json")

    def load(self) -> Stored | None:
        try:
            data = self.path.read_bytes()
        except OSError:
            return None
        meta = _read_meta(self.meta_path)
        return _stored(data, meta) if meta else None

    def save(self, document: Document) -> None:
        """Keep a feed that parsed and validated as the last good copy, with its validators."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = document.text.encode("utf-8")
        write_atomic(self.path, data)
        write_atomic(self.meta_path, _meta_bytes(_meta(document.label, document.etag, document.last_modified, data)))


def _read_meta(path: Path) -> dict[str, str]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # missing or damaged: only costs a full download
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def _stored(data: bytes, meta: dict[str, str]) -> Stored:
    if meta.get("sha256") != hashlib.sha256(data).hexdigest():
        meta = {}  # edited by hand since: keep the bytes, drop the validators
    return Stored(data, meta.get("url", ""), meta.get("etag", ""), meta.get("last_modified", ""))


def _meta(url: str, etag: str, last_modified: str, data: bytes, **extra: str) -> dict[str, str]:
    digest = hashlib.sha256(data).hexdigest()
    return {"url": url, "etag": etag, "last_modified": last_modified, "sha256": digest, **extra}


def _meta_bytes(meta: dict[str, str]) -> bytes:
    return (json.dumps(meta, indent=2) + "\n").encode()
