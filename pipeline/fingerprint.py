"""Stage 3: final asset bytes -> Manifest. Pure: hashed names, sizes, SRI.

A hashed name comes from the served bytes (CSS is minified before it gets here), so a URL names
one content forever and can be cached `immutable`.
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
from collections.abc import Iterable

from .model import MIME, Asset, Candidate, EncodedIcon, IconRef, IconSource, Manifest, ManifestEntry

HASH_LENGTH = 10  # hex digits of SHA-256: 40 bits, no collision among a site's few thousand assets


def fingerprint(assets: Iterable[Asset]) -> Manifest:
    entries: dict[str, ManifestEntry] = {}
    files: dict[str, bytes] = {}
    for asset in assets:
        digest = hashlib.sha256(asset.data).hexdigest()[:HASH_LENGTH]
        directory, name = posixpath.split(asset.logical)
        stem, ext = posixpath.splitext(name)
        path = posixpath.join("assets", directory, f"{stem}.{digest}{ext}")
        entries[asset.logical] = ManifestEntry(
            asset.logical, "/" + path, len(asset.data), sri(asset.data), asset.mime, asset.width, asset.height
        )
        files[path] = asset.data
    return Manifest(entries, files)


def sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def icon_assets(icon: EncodedIcon) -> list[Asset]:
    return [
        Asset(icon_logical(icon.slug, r.density, i, v.format), v.data, v.mime, r.width, r.height)
        for i, r in enumerate(icon.renditions)
        for v in r.variants
    ]


def icon_logical(slug: str, density: float, index: int, fmt: str) -> str:
    """ "icons/denny.webp" for the first density, "icons/denny@2x.webp" for the others."""
    return f"icons/{slug}.{fmt}" if index == 0 else f"icons/{slug}@{density:g}x.{fmt}"


def icon_refs(icons: Iterable[EncodedIcon], alts: dict[str, str], manifest: Manifest) -> dict[str, IconRef]:
    """ICON_MAP: reward name -> hashed URLs per format and density, best format first, the PNG
    as the <img>."""
    refs = {}
    for icon in icons:
        formats = [v.format for v in icon.renditions[0].variants]
        by_format = [
            IconSource(
                MIME[fmt],
                tuple(
                    Candidate(
                        manifest.entries[icon_logical(icon.slug, r.density, i, fmt)].url, r.density, r.width, r.height
                    )
                    for i, r in enumerate(icon.renditions)
                ),
            )
            for fmt in formats
        ]
        *sources, png = by_format
        refs[icon.name] = IconRef(
            icon.name, alts.get(icon.name, icon.name), icon.width, icon.height, tuple(sources), png
        )
    return refs


def manifest_json(manifest: Manifest) -> dict[str, dict[str, object]]:
    return {
        logical: {
            k: v
            for k, v in {
                "url": e.url,
                "size": e.size,
                "type": e.mime,
                "width": e.width,
                "height": e.height,
                "integrity": e.integrity,
            }.items()
            if v is not None
        }
        for logical, e in sorted(manifest.entries.items())
    }
