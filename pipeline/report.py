"""`pipeline report`: one self-contained HTML page comparing every icon's source with the files
the encode cache holds for it (issue 11). Not published; nothing is encoded or fetched.

For each icon in icon_map.yaml, per density: the source and each variant side by side, at the
display size and magnified 3x (pixelated), with its format, the quality chosen, bytes and SSIM;
then totals per format and a bar chart of the bytes saved against the sources. Every image is a
data: URI, so the file stands alone. The cache is read, never written or touched (a report does
not keep an entry from being pruned); an entry whose bytes do not match its hashes counts as
missing, as it does for the build.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from html import escape
from pathlib import Path

from .files import write_atomic
from .model import MIME, IconSpec, Origin, SiteConfig, SourceIcon, sniff
from .store import IconStore

MAGNIFY = 3
FORMATS = ("avif", "webp", "png")  # the order the totals are shown in; any other format follows
NOT_ENCODED = "not encoded yet: run pipeline build"
NO_SOURCE = "no source in icons/: run pipeline build (without --offline) to fetch it"
SOURCE_MIME = {**MIME, "jpg": "image/jpeg", "gif": "image/gif"}


@dataclass(frozen=True)
class Shown:
    """One cached file."""

    format: str
    detail: str
    ssim: float
    data: bytes


@dataclass(frozen=True)
class Row:
    """One density of one icon."""

    density: float
    width: int  # the file's pixels
    height: int
    variants: tuple[Shown, ...]


@dataclass(frozen=True)
class IconReport:
    spec: IconSpec
    source: bytes | None  # None: no copy in icons/
    box: tuple[int, int]  # CSS px the page draws it in (0, 0 when not encoded)
    rows: tuple[Row, ...]  # empty: not encoded (or no source)

    @property
    def problem(self) -> str:
        return NO_SOURCE if self.source is None else "" if self.rows else NOT_ENCODED


@dataclass(frozen=True)
class Written:
    path: Path
    icons: int
    missing: int  # icons listed as not encoded yet (or with no source)


def collect(site: SiteConfig) -> list[IconReport]:
    """Each icon's source (icons/) and its cache entry, in icon_map.yaml order."""
    from .cache import cache_key  # the key as the build computes it
    from .encode_pool import CACHE_VERSION  # loads the encoder's libraries: their versions are in the key

    store = IconStore(site.icons_dir)
    found = []
    for spec in site.icons:
        stored = store.load(spec)
        if stored is None:
            found.append(IconReport(spec, None, (0, 0), ()))
            continue
        key = cache_key(SourceIcon(spec, stored.data, Origin.LOCAL), CACHE_VERSION)
        entry = _read_entry(site.cache_dir / "encode" / key[:2] / key)
        box, rows = entry if entry else ((0, 0), ())
        found.append(IconReport(spec, stored.data, box, rows))
    return found


def _read_entry(entry: Path) -> tuple[tuple[int, int], tuple[Row, ...]] | None:
    try:
        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        rows = []
        for r in meta["renditions"]:
            shown = []
            for v in r["variants"]:
                data = (entry / str(v["file"])).read_bytes()
                if hashlib.sha256(data).hexdigest() != v["sha256"]:
                    return None  # damaged: the build would encode it again
                shown.append(Shown(str(v["format"]), str(v["detail"]), float(v["ssim"]), data))
            rows.append(Row(float(r["density"]), int(r["width"]), int(r["height"]), tuple(shown)))
        return (int(meta["width"]), int(meta["height"])), tuple(rows)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_report(site: SiteConfig, out: Path) -> Written:
    icons = collect(site)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, render(site.title, icons).encode("utf-8"))
    return Written(out, len(icons), sum(1 for icon in icons if icon.problem))


# ---- the page ----------------------------------------------------------------------------------

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; background: #fff; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin: 1.5rem 0 .4rem; }
table { border-collapse: collapse; margin-bottom: .5rem; }
th, td { border: 1px solid #ddd; padding: .35rem .5rem; vertical-align: top; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.cell { display: flex; gap: .5rem; align-items: flex-end; }
.cell img { background: repeating-conic-gradient(#eee 0 25%, #fff 0 50%) 0 0 / 12px 12px; }
.cell img.zoom { image-rendering: pixelated; }
.facts { font-size: 12px; color: #444; margin-top: .2rem; }
.problem { color: #a00; font-weight: 600; }
svg text { font: 12px system-ui, sans-serif; }
"""


def render(title: str, icons: list[IconReport]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Encode report: {escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Encode report: {escape(title)}</h1>",
        f"<p>{len(icons)} icons; {sum(1 for i in icons if i.problem)} not shown. Display size and "
        f"{MAGNIFY}x magnified (pixelated); SSIM is the worst over black and over white.</p>",
        _totals(icons),
    ]
    parts += [_icon(icon) for icon in icons]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _icon(icon: IconReport) -> str:
    name = escape(icon.spec.name)
    head = f'<section class="icon" data-icon="{name}"><h2>{name}</h2>'
    if icon.problem or icon.source is None:
        return f'{head}<p class="problem">{escape(icon.problem)}</p></section>'
    source_fmt = sniff(icon.source) or "unknown"
    formats = [v.format for v in icon.rows[0].variants] if icon.rows else []
    lines = [head, "<table><tr><th>density</th><th>source</th>"]
    lines += [f"<th>{escape(f)}</th>" for f in formats]
    lines.append("</tr>")
    for row in icon.rows:
        label = f"{row.density:g}x"
        lines.append(f'<tr data-density="{escape(label)}"><th>{escape(label)}<br>{row.width}×{row.height} px</th>')
        facts = f"{escape(source_fmt)} source<br>{len(icon.source):,} bytes"
        lines.append(
            f'<td class="source">{_images(icon.source, source_fmt, icon.box, icon.spec.alt)}'
            f'<div class="facts">{facts}</div></td>'
        )
        for v in row.variants:
            attrs = (
                f'data-icon="{name}" data-density="{escape(label)}" data-format="{escape(v.format)}" '
                f'data-detail="{escape(v.detail)}" data-bytes="{len(v.data)}"'
            )
            saved = _percent(len(v.data), len(icon.source))
            facts = f"{escape(v.format)} {escape(v.detail)}<br>{len(v.data):,} bytes ({saved})<br>SSIM {v.ssim:.4f}"
            lines.append(
                f'<td class="variant" {attrs}>{_images(v.data, v.format, icon.box, icon.spec.alt)}'
                f'<div class="facts">{facts}</div></td>'
            )
        lines.append("</tr>")
    lines.append("</table></section>")
    return "\n".join(lines)


def _images(data: bytes, fmt: str, box: tuple[int, int], alt: str) -> str:
    uri = f"data:{SOURCE_MIME.get(fmt, 'application/octet-stream')};base64,{base64.b64encode(data).decode('ascii')}"
    w, h = box
    return (
        f'<div class="cell"><img src="{uri}" width="{w}" height="{h}" alt="{escape(alt)}">'
        f'<img class="zoom" src="{uri}" width="{w * MAGNIFY}" height="{h * MAGNIFY}" alt=""></div>'
    )


@dataclass
class _Total:
    files: int = 0
    bytes: int = 0
    icons: int = 0
    first: int = 0  # the first density's files: what a 1x screen downloads
    sources: int = 0  # the sources of the icons served in this format


def _totals(icons: list[IconReport]) -> str:
    totals: dict[str, _Total] = {}
    for icon in icons:
        if icon.problem or icon.source is None:
            continue
        for i, row in enumerate(icon.rows):
            for v in row.variants:
                total = totals.setdefault(v.format, _Total())
                total.files += 1
                total.bytes += len(v.data)
                if i == 0:
                    total.icons += 1
                    total.first += len(v.data)
                    total.sources += len(icon.source)
    order = [f for f in FORMATS if f in totals] + sorted(set(totals) - set(FORMATS))
    lines = [
        "<h2>Totals per format</h2>",
        '<table class="totals"><tr><th>format</th><th class="num">icons</th><th class="num">files</th>'
        '<th class="num">bytes, all densities</th><th class="num">sources</th><th class="num">1x files</th>'
        '<th class="num">saved at 1x</th></tr>',
    ]
    for fmt in order:
        t = totals[fmt]
        lines.append(
            f'<tr class="total" data-format="{escape(fmt)}" data-bytes="{t.bytes}"><th>{escape(fmt)}</th>'
            f'<td class="num">{t.icons}</td><td class="num">{t.files}</td><td class="num">{t.bytes:,}</td>'
            f'<td class="num">{t.sources:,}</td><td class="num">{t.first:,}</td>'
            f'<td class="num">{t.sources - t.first:,} ({_percent(t.first, t.sources)})</td></tr>'
        )
    grand = sum(t.bytes for t in totals.values())
    files = sum(t.files for t in totals.values())
    lines.append(
        f'<tr class="grand" data-bytes="{grand}"><th>all</th><td></td><td class="num">{files}</td>'
        f'<td class="num">{grand:,}</td><td></td><td></td><td></td></tr></table>'
    )
    lines.append(_chart([(fmt, totals[fmt].sources, totals[fmt].first) for fmt in order]))
    return "\n".join(lines)


def _chart(bars: list[tuple[str, int, int]]) -> str:
    """Per format: the sources (grey) and the 1x files (blue) on one scale, and what was saved."""
    if not bars:
        return "<p>Nothing encoded yet: no chart.</p>"
    scale = 420 / max(max(s, f) for _, s, f in bars) if any(s or f for _, s, f in bars) else 0.0
    height = 34 * len(bars) + 10
    out = [
        "<p>Grey: the sources; blue: the files a 1x screen downloads, per format.</p>",
        f'<svg class="chart" width="760" height="{height}" role="img" '
        f'aria-label="bytes at 1x against the sources, per format">',
    ]
    for i, (fmt, source, first) in enumerate(bars):
        y = 5 + 34 * i
        out += [
            f'<text x="0" y="{y + 19}">{escape(fmt)}</text>',
            f'<rect x="50" y="{y}" width="{source * scale:.1f}" height="13" fill="#bbb"/>',
            f'<rect x="50" y="{y + 14}" width="{first * scale:.1f}" height="13" fill="#3b6fd4"/>',
            f'<text x="{58 + max(source, first) * scale:.1f}" y="{y + 19}">{first:,} of {source:,} bytes: '
            f"saved {source - first:,} ({_percent(first, source)})</text>",
        ]
    out.append("</svg>")
    return "\n".join(out)


def _percent(after: int, before: int) -> str:
    return f"{(after - before) / before:+.0%}" if before else "n/a"
