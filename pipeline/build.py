"""The only module that knows the stage order. One call = one run, under the lock.

    config -> fetch -> encode (cached) -> minify CSS (+ read static/) -> fingerprint -> render
           -> minify HTML -> publish (gate, switch) -> RunReport

Ordering that matters is written here: CSS is minified before it is hashed (the hash covers the
served bytes); HTML is minified after rendering; a fresh source is stored in icons/ only once it
has been decoded and encoded; the switch is last.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from . import config, encode, fetch, fingerprint, indexnow, minify, publish, render
from .cache import EncodeCache
from .encode_pool import encode_all
from .errors import ConfigError, PipelineError, describe_os_error
from .lock import exclusive
from .model import (
    MIME,
    Asset,
    Content,
    Document,
    Minified,
    Origin,
    Page,
    Payload,
    PingResult,
    Progress,
    RunReport,
    SiteConfig,
    SiteView,
    SourceIcon,
    payload_size,
)
from .store import FeedStore, IconStore

FEED_COPY = "feed/codes"  # under .cache/: the last good copy of a codes feed, and its validators


@dataclass(frozen=True)
class BuildRequest:
    site: SiteConfig
    today: dt.date
    now: float  # wall-clock seconds, for the release record's retention window
    offline: bool = False
    reencode: frozenset[str] = frozenset()  # icon names to encode even if cached
    jobs: int = 0  # encode processes; 0 = the site's setting, or one per core
    checkpoint: publish.Checkpoint = field(default=lambda name: None, compare=False)
    progress: Progress = field(default=lambda stage, done, total, item: None, compare=False)


def run(request: BuildRequest) -> RunReport:
    """One whole run under the site's lock, with a hardened HTTP client unless offline."""
    with exclusive(request.site.cache_dir / "pipeline.lock"):
        if request.offline:
            return _run(request, None)
        with fetch.make_client(request.site.fetch) as client:
            return _run(request, client)


def _run(request: BuildRequest, client: httpx.Client | None) -> RunReport:
    site, timings = request.site, Timings()
    with timings("fetch"):
        document = content_document(site, client)
    with timings("config"):
        content = config.load_content(document.label, document.text, {spec.name for spec in site.icons})
        if site.content_is_feed and document.origin in (Origin.DOWNLOADED, Origin.NOT_MODIFIED):
            FeedStore(site.cache_dir / FEED_COPY).save(document)  # it parsed: the new last good copy
    request.checkpoint("after_config")
    with timings("fetch"):
        store = IconStore(site.icons_dir)
        sources = fetch.fetch_sources(
            site.icons, {s.name: store.load(s) for s in site.icons}, client, site.fetch, progress=request.progress
        )
    request.checkpoint("after_fetch")
    with timings("encode"):
        cache = EncodeCache(site.cache_dir / "encode")
        sources, encoded = encode_all(
            sources,
            lambda source: store.load(source.spec),
            cache,
            request.reencode,
            _jobs(request),
            request.checkpoint,
            request.progress,
        )
        for source in sources:
            if source.origin is not Origin.STALE and source.origin is not Origin.LOCAL:
                store.save(source)  # decoded and encoded fine: now it is the last good copy
    request.checkpoint("after_encode")
    with timings("minify"):
        css_before, css_assets = _static_assets(site)
        static = _static_files(site)
    with timings("fingerprint"):
        site_icons = _site_icons(sources, cache)
        assets = [a for icon in encoded for a in fingerprint.icon_assets(icon)] + css_assets + site_icons
        assets += _static_file_assets(static, {a.logical for a in assets})
        manifest = fingerprint.fingerprint(assets)
        refs = fingerprint.icon_refs(encoded, {s.name: s.alt for s in site.icons}, manifest)
        manifest_bytes = fingerprint.manifest_bytes(manifest)
    with timings("render"):
        view = SiteView(
            site.title,
            site.base_url,
            content,
            refs,
            manifest.entries,
            build_id(manifest_bytes, content, request.today),
            request.today,
        )
        minified = _pages(site, view, manifest_bytes, cache)
    request.checkpoint("after_render")
    with timings("publish"):
        files: dict[str, Payload] = {
            **manifest.files,
            **{p.path: p.data for p in minified.pages},
            "manifest.json": manifest_bytes,
        }
        if sources:  # for the clients that ask for /favicon.ico whatever the page links
            files["favicon.ico"] = cache.made_once(
                f"favicon.ico {encode.ENCODER_VERSION}", sources[0].data, encode.favicon_ico
            )
        required: tuple[str, ...] = ("index.html",)
        if site.indexnow.key:  # served in every release, so the endpoint can verify us at any time
            files[f"{site.indexnow.key}.txt"] = site.indexnow.key.encode()
            required += (f"{site.indexnow.key}.txt",)
        files.update(_unclobbered(static, files))
        result = publish.LocalDirectory(site.dist_dir).publish(
            files, site.publish, request.now, request.checkpoint, required
        )
    if site.publish.target:  # then the bucket gets exactly what the gate passed; its result is what readers see
        from .bucket import S3Bucket  # imported only when a target is set: a local run never pays for it

        with timings("upload"):
            bucket: publish.Target = S3Bucket(site.publish)
            loaded = {path: publish.load(data) for path, data in files.items()}  # a bucket takes bytes
            result = bucket.publish(loaded, site.publish, request.now, request.checkpoint, required)
    texts = {path: data for path, data in files.items() if isinstance(data, bytes)}  # all but cached icon files
    changed: tuple[str, ...] = ()
    pinged = None
    try:  # after the switch the run has published: what fails now is a warning, never "nothing was published"
        cache.prune(unused_since=request.now - site.publish.retention_hours * 3600)
        changed = indexnow.changed_pages(result.replaced, texts)
        if site.indexnow.key and client is not None:
            with timings("indexnow"):
                pinged = indexnow.ping(
                    site.cache_dir / "indexnow.json",
                    _changed_urls(site, changed, texts),
                    site.base_url,
                    site.indexnow,
                    client,
                    request.now,
                )
    except (PipelineError, OSError, ValueError) as error:
        pinged = PingResult(problem=f"{result.release} is live, but telling search engines failed: {error}")
    return RunReport(
        tuple(sources),
        tuple(encoded),
        minified.bytes_before,
        minified.bytes_after,
        css_before,
        sum(payload_size(a.data) for a in css_assets),
        result,
        changed,
        dict(timings.seconds),
        pinged,
        document,
    )


def _pages(site: SiteConfig, view: SiteView, manifest_bytes: bytes, cache: EncodeCache) -> Minified:
    """The pages, rendered and minified, remembered in the encode cache under everything they are
    made from (one entry per set of inputs): an hourly run that changed nothing neither imports
    Jinja2 nor renders nor minifies (~0.5 s at 5,000 icons)."""

    def make(_: bytes) -> bytes:
        pages = render.render_pages(site.templates_dir, view, site.cache_dir / "templates", site.render.eager)
        return _pack(minify.minify_pages(pages))

    return _unpack(cache.made_once(PAGES_VERSION, _page_inputs(site, view, manifest_bytes), make))


PAGES_VERSION = "pages 1"  # bump when _pages makes pages from the same inputs differently
PAGE_CODE = ("render.py", "minify.py", "model.py")  # ours: the pages change with their code
PAGE_LIBRARIES = ("jinja2", "markupsafe", "htmlmin")  # theirs: known by their installed file (an upgrade counts)


def _page_inputs(site: SiteConfig, view: SiteView, manifest_bytes: bytes) -> bytes:
    """A digest of what the pages are made of: every file in templates/, the view (its assets
    through manifest.json), and the code that renders and minifies them."""
    digest = hashlib.sha256()
    for name in PAGE_CODE:
        digest.update((Path(__file__).parent / name).read_bytes())
    for library in PAGE_LIBRARIES:
        spec = importlib.util.find_spec(library)
        origin = Path(spec.origin) if spec and spec.origin else None
        found = origin.stat() if origin else None
        digest.update(f"{library} {origin} {found and found.st_size} {found and found.st_mtime_ns}\0".encode())
    for path in sorted(p for p in site.templates_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(site.templates_dir).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    icons = [
        [
            r.name,
            r.alt,
            r.width,
            r.height,
            [[s.mime, [[c.url, c.density, c.width, c.height] for c in s.candidates]] for s in (*r.sources, r.png)],
        ]
        for r in view.icons.values()
    ]
    head = [view.title, view.base_url, view.build_id, view.today.isoformat(), site.render.eager, repr(view.content)]
    digest.update(json.dumps([head, icons]).encode() + b"\0" + manifest_bytes)
    return digest.digest()


def _pack(minified: Minified) -> bytes:
    """Minified pages as one blob: a JSON line (byte counts, each page's path and size), the bytes."""
    index = [minified.bytes_before, minified.bytes_after, [[p.path, len(p.data)] for p in minified.pages]]
    return json.dumps(index).encode() + b"\n" + b"".join(p.data for p in minified.pages)


def _unpack(blob: bytes) -> Minified:
    head, _, body = blob.partition(b"\n")
    before, after, index = json.loads(head)
    pages, at = [], 0
    for path, size in index:
        pages.append(Page(path, body[at : at + size]))
        at += size
    return Minified(tuple(pages), before, after)


def _changed_urls(site: SiteConfig, changed: tuple[str, ...], files: dict[str, bytes]) -> dict[str, str]:
    """Public URL -> hash of the visible content, for the pages a reader would see changed."""
    urls = {}
    for path in changed:
        if path.endswith(".html") and path != "404.html" and path in files:
            url = site.base_url + "/" + ("" if path == "index.html" else path)
            urls[url] = hashlib.sha256(indexnow.visible(files[path])).hexdigest()
    return urls


def content_document(site: SiteConfig, client: httpx.Client | None) -> Document:
    if site.content_is_feed:
        return fetch.fetch_feed(site.content, FeedStore(site.cache_dir / FEED_COPY).load(), client, site.fetch)
    path = site.root / site.content
    try:
        return Document(site.content, path.read_text(encoding="utf-8"), Origin.LOCAL)
    except FileNotFoundError:
        raise ConfigError(f"{site.content}: not found in {path.parent}; set [site] content in site.toml") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{site.content}: is not UTF-8 text ({error.reason} at byte {error.start})") from None


def _static_assets(site: SiteConfig) -> tuple[int, list[Asset]]:
    """templates/*.css, minified, and templates/*.js, as written (no JS minifier is a dependency;
    the .gz/.br beside them do the work): fingerprinted like every asset, so the pages load their
    code as immutable files with SRI and need no inline script. The bytes before, and the assets
    (the run report's CSS figures count the scripts too)."""
    before, assets = 0, []
    for path in sorted(site.templates_dir.glob("*.css")):
        text = path.read_text(encoding="utf-8")
        before += len(text.encode())
        assets.append(Asset(path.name, minify.minify_css(text).encode(), "text/css"))
    for path in sorted(site.templates_dir.glob("*.js")):
        data = path.read_bytes()
        before += len(data)
        assets.append(Asset(path.name, data, "text/javascript"))
    return before, assets


STATIC_TYPES = {
    "gif": "image/gif",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "svg": "image/svg+xml",
    "ico": "image/x-icon",
    "woff2": "font/woff2",
    "woff": "font/woff",
    "pdf": "application/pdf",
    "webmanifest": "application/manifest+json",
}  # beside model.MIME; a fixed table (not `mimetypes`, which reads the host's files): same manifest everywhere


def _static_files(site: SiteConfig) -> dict[str, bytes]:
    """SITE/static/, as written: path relative to static/ -> bytes (`static/img/logo.png` is
    published as `/img/logo.png`). Dotfiles count (`.well-known/security.txt`). A symlink or a
    special file (FIFO, socket, device) is refused: a release holds only regular files of its own."""
    root = site.static_dir
    if not root.exists():
        return {}
    if not root.is_dir():
        raise ConfigError("static: is not a folder; make it one (its files are published as they are) or remove it")

    def unreadable(error: OSError) -> None:
        raise error

    files: dict[str, bytes] = {}
    problems: list[str] = []
    try:
        for directory, dirnames, filenames in os.walk(root, onerror=unreadable):  # never follows a symlink
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                path = Path(directory) / name
                relative = path.relative_to(root).as_posix()
                mode = path.lstat().st_mode
                if stat.S_ISLNK(mode):
                    problems.append(f"static/{relative}: is a symlink; copy the file itself into static/")
                elif not relative.isprintable():
                    problems.append(f"static/{relative!r}: the name holds a control character; rename it")
                elif stat.S_ISREG(mode):
                    files[relative] = path.read_bytes()
                elif not stat.S_ISDIR(mode):
                    problems.append(f"static/{relative}: is not a regular file (a FIFO, socket or device); remove it")
    except OSError as error:
        raise ConfigError(f"static: cannot read it: {describe_os_error(error)}") from None
    if problems:
        raise ConfigError("static/ holds files that cannot be published; nothing was published", tuple(problems))
    return files


def _static_file_assets(static: dict[str, bytes], taken: set[str]) -> list[Asset]:
    """Each static file is also an asset under its path relative to static/, so
    `asset_url("img/logo.png")` gives a fingerprinted, immutable copy. A name another asset has
    (templates/style.css, the site icon, an icon's file) is refused rather than shadowed."""
    clashes = sorted(taken & static.keys())
    if clashes:
        raise ConfigError(
            "static/ files have the asset name of a generated asset; rename them",
            tuple(f"static/{name}: asset_url({name!r}) already names a generated asset" for name in clashes),
        )
    return [Asset(name, data, _static_type(name)) for name, data in sorted(static.items())]


def _static_type(name: str) -> str:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name.rsplit("/", 1)[-1] else ""
    return MIME.get(ext) or STATIC_TYPES.get(ext, "application/octet-stream")


def _unclobbered(static: dict[str, bytes], files: dict[str, Payload]) -> dict[str, bytes]:
    """The static files, unless one would replace a file the build writes (a page, codes.json,
    sitemap.xml, robots.txt, manifest.json, favicon.ico, the IndexNow key), a precompressed twin
    the publisher writes beside one (`X.gz`, `X.br`), or anything under assets/."""
    published = files.keys() | static.keys()
    problems = []
    for name in sorted(static):
        if name in files:
            problems.append(f"static/{name}: the build writes /{name} itself; rename or remove the static file")
        elif name.split("/", 1)[0] == "assets":
            problems.append(f"static/{name}: /assets/ holds the fingerprinted files; move it out of static/assets/")
        elif (twin := next((name.removesuffix(s) for s in publish.COMPRESSED if name.endswith(s)), "")) in published:
            problems.append(f"static/{name}: the build writes the compressed copy of /{twin} itself; remove it")
    if problems:
        raise ConfigError("static/ would overwrite files the build writes; nothing was published", tuple(problems))
    return static


def _site_icons(sources: list[SourceIcon], cache: EncodeCache) -> list[Asset]:
    """The first icon in icon_map.yaml doubles as the site's icon: a 32 px PNG every page links
    and a 180 px apple-touch-icon, fingerprinted like every asset. Its source decoded fine in a
    worker already, so decoding it here again is safe."""
    if not sources:
        return []
    made = {
        name: cache.made_once(f"{name} {encode.ENCODER_VERSION}", sources[0].data, make)
        for name, make in (("favicon.png", encode.favicon_png), ("apple-touch-icon.png", encode.touch_icon))
    }
    return [Asset(name, data, "image/png", *_png_size(data)) for name, data in made.items()]


def _png_size(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # the IHDR chunk


def build_id(manifest_bytes: bytes, content: Content, today: dt.date) -> str:
    """A hash of the inputs, not a time: the same inputs render byte-identical pages.
    `today` enters only through which codes are active, which the pages show anyway."""
    active = [c.code for c in content.codes if c.active_on(today)]
    digest = hashlib.sha256(manifest_bytes + repr(content).encode() + repr(active).encode())
    return digest.hexdigest()[:12]


def _jobs(request: BuildRequest) -> int:
    return request.jobs or request.site.jobs or os.cpu_count() or 1


# ---- timing ----------------------------------------------------------------------------------


class Timings:
    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = self.clock()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + self.clock() - start
