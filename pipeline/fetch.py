"""Stage 1: IconSpec (+ its last good copy) -> SourceIcon. HTTP only: the copies kept between
runs are read and written by store.py, at the build's edge.

Each source is asked for with a conditional GET (the stored ETag / Last-Modified). Everything a
hostile or broken server can do is bounded: per-phase timeouts plus one deadline for the whole
stage, a byte cap while streaming, `Accept-Encoding: identity` (no decompression bombs), only
http/https, every redirect hop checked by us (scheme, downgrade, private addresses), and the body
sniffed to be an image. A source that fails yields the last good copy, marked STALE with the reason;
only an icon that never had a good copy is an error.

The connections themselves are connections.py's: each hop goes only to an address checked for its
name (no private ones unless allow_private), on kept-alive connections the stage owns, every one cut
by a watchdog at the deadline (per-read timeouts alone let a server that drips its headers a byte at
a time hold a request for hours).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from .connections import Connections, Resolver
from .connections import make_client as make_client  # the build's and the tests' way to a client the stage takes
from .errors import FetchFailed, SourceError
from .model import Document, FetchSettings, IconSpec, Origin, Progress, SourceIcon, Stored, sniff

USER_AGENT = "pipeline-static-site/0.1 (+icon fetch; conditional GET)"
PROGRESS_EVERY = 0.05  # seconds: how late the progress of a fetch may be reported
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    """What one GET came back with, after the redirects were followed."""

    url: str
    status: int  # 200 or 304; anything else is a FetchFailed
    headers: httpx.Headers
    body: bytes


# ---- the stage ------------------------------------------------------------------------------------


def fetch_sources(
    specs: Iterable[IconSpec],
    stored: Mapping[str, Stored | None],
    client: httpx.Client | None,
    settings: FetchSettings,
    *,
    resolve: Resolver | None = None,
    clock: Callable[[], float] = time.monotonic,
    progress: Progress = lambda stage, done, total, item: None,
) -> list[SourceIcon]:
    """Every icon's source bytes, fetched concurrently; `stored`: icon name -> its last good copy;
    client None means offline (the stored copies only). A source that fails falls back to its
    copy (STALE); SourceError lists every icon left with neither."""
    specs = list(specs)
    deadline = clock() + settings.deadline
    fetcher = _Fetcher(client, settings, resolve, clock, deadline) if client else None

    def fetch_one(spec: IconSpec) -> SourceIcon:
        copy = stored.get(spec.name)
        if fetcher is None:
            if copy is None:
                raise FetchFailed(f"icon {spec.name!r}: no copy in icons/ and --offline forbids fetching {spec.url}")
            return SourceIcon(spec, copy.data, Origin.LOCAL, etag=copy.etag, last_modified=copy.last_modified)
        try:
            fetched = fetcher.fetch(spec, copy)
            log.debug("%s: %s (%s)", spec.name, fetched.origin.value, spec.url)
            return fetched
        except FetchFailed as failure:
            log.info("%s: %s", spec.name, failure)
            if copy is None:
                raise FetchFailed(
                    f"icon {spec.name!r}: {failure}; there is no earlier copy in icons/ to fall back on"
                ) from None
            return SourceIcon(spec, copy.data, Origin.STALE, str(failure), copy.etag, copy.last_modified)

    connections = fetcher.connections if fetcher else contextlib.nullcontext()
    with connections, ThreadPoolExecutor(max_workers=max(1, settings.concurrency)) as pool:
        futures = {pool.submit(fetch_one, spec): spec.name for spec in specs}
        if fetcher is not None:  # offline, icons/ is read in a blink: no progress to show
            progress("fetch", 0, len(futures), "")
            _report(futures, progress)
    sources, problems = [], []
    for future in futures:
        try:
            sources.append(future.result())
        except FetchFailed as failure:
            problems.append(str(failure))
    if problems:
        raise SourceError(
            f"{len(problems)} icon(s) have no usable source; fix the URL or put a copy in icons/", tuple(problems)
        )
    return sources


def _report(futures: dict[Future[SourceIcon], str], progress: Progress) -> None:
    """Report each fetch as it ends, by looking every PROGRESS_EVERY seconds: woken by each one (as_completed),
    this thread took the GIL from the fetching ones 500 times in an all-304 run, ~15% of its CPU."""
    pending, done = set(futures), 0
    while pending:
        finished, pending = wait(pending, timeout=PROGRESS_EVERY)
        for future in finished:
            done += 1
            progress("fetch", done, len(futures), futures[future])


def fetch_feed(
    url: str,
    stored: Stored | None,
    client: httpx.Client | None,
    settings: FetchSettings,
    *,
    resolve: Resolver | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Document:
    """The codes feed, conditionally; its last good copy (`stored`) when the feed fails."""
    if client is None:
        if stored is None:
            raise SourceError(f"content feed {url}: no saved copy, and --offline forbids fetching it")
        return Document(
            url, stored.data.decode("utf-8"), Origin.LOCAL, etag=stored.etag, last_modified=stored.last_modified
        )
    fetcher = _Fetcher(client, settings, resolve, clock, clock() + settings.deadline)
    validators = stored if stored and stored.url == url else None
    try:
        with fetcher.connections:
            reply = fetcher.get(url, validators, FEED)
    except FetchFailed as failure:
        if stored is None:
            raise SourceError(f"content feed: {failure}; there is no earlier copy to fall back on") from None
        return Document(url, stored.data.decode("utf-8"), Origin.STALE, str(failure), stored.etag, stored.last_modified)
    etag, modified = reply.headers.get("etag", ""), reply.headers.get("last-modified", "")
    if reply.status == 304 and validators:
        return Document(
            url,
            validators.data.decode("utf-8"),
            Origin.NOT_MODIFIED,
            "",
            etag or validators.etag,
            modified or validators.last_modified,
        )
    if reply.status == 304:
        raise SourceError(f"content feed: HTTP 304 from {url} to a request without validators")
    origin = Origin.NOT_MODIFIED if stored and stored.data == reply.body else Origin.DOWNLOADED
    return Document(url, reply.body.decode("utf-8"), origin, "", etag, modified)


class _Fetcher:
    """The requests of one stage run (what is asked, how the answer is checked); `connections` carries them."""

    def __init__(
        self,
        client: httpx.Client,
        settings: FetchSettings,
        resolve: Resolver | None,
        clock: Callable[[], float],
        deadline: float,
    ) -> None:
        self.settings, self.clock, self.deadline = settings, clock, deadline
        self.connections = Connections(client, settings, resolve, clock, deadline)

    def fetch(self, spec: IconSpec, stored: Stored | None) -> SourceIcon:
        validators = stored if stored and stored.url == spec.url else None
        reply = self.get(spec.url, validators, IMAGE)
        if reply.status == 304:
            if validators is None:
                raise FetchFailed(f"HTTP 304 from {reply.url} to a request without validators")
            return SourceIcon(
                spec,
                validators.data,
                Origin.NOT_MODIFIED,
                etag=reply.headers.get("etag", validators.etag),
                last_modified=reply.headers.get("last-modified", validators.last_modified),
            )
        etag, modified = reply.headers.get("etag", ""), reply.headers.get("last-modified", "")
        origin = Origin.NOT_MODIFIED if stored and stored.data == reply.body else Origin.DOWNLOADED
        return SourceIcon(spec, reply.body, origin, etag=etag, last_modified=modified)

    def get(self, url: str, validators: Stored | None, kind: _Kind) -> Reply:
        headers = {"Accept": kind.accept, "Accept-Encoding": "identity", "User-Agent": USER_AGENT}
        if validators and validators.etag:
            headers["If-None-Match"] = validators.etag
        if validators and validators.last_modified:
            headers["If-Modified-Since"] = validators.last_modified
        for _hop in range(self.settings.max_redirects + 1):
            with self.connections.get(url, headers) as response:
                if response.has_redirect_location:
                    url = self._next_hop(url, response.headers["location"])
                    continue
                if response.status_code == 304:
                    return Reply(url, 304, response.headers, b"")
                if response.status_code != 200:
                    raise FetchFailed(f"HTTP {response.status_code} from {url}")
                return Reply(url, 200, response.headers, self._read_body(url, response, kind))
        raise FetchFailed(f"more than {self.settings.max_redirects} redirects from {url}")

    def _next_hop(self, url: str, location: str) -> str:
        try:
            target = urljoin(url, location)
            scheme = urlsplit(target).scheme
            httpx.URL(target)
        except (ValueError, httpx.InvalidURL) as error:
            raise FetchFailed(f"{url} redirects to {location!r}, not a URL ({error}); refused") from None
        if scheme not in ("http", "https"):
            raise FetchFailed(f"{url} redirects to a {scheme or 'relative'!r} URL; only http and https are followed")
        if urlsplit(url).scheme == "https" and scheme == "http":
            raise FetchFailed(f"{url} redirects from https down to http ({target}); refused")
        return target

    def _read_body(self, url: str, response: httpx.Response, kind: _Kind) -> bytes:
        cap = self.settings.max_bytes
        encoding = response.headers.get("content-encoding", "identity").lower()
        if encoding not in ("identity", ""):
            raise FetchFailed(f"{url} sent Content-Encoding {encoding!r} though identity was asked; refused")
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise FetchFailed(f"{url} declares {int(declared):,} bytes; the cap is {cap:,} (fetch.max_bytes)")
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type and not kind.allows(content_type):
            raise FetchFailed(f"{url} answered {content_type!r}, not {kind.noun} (a soft 404?)")
        body = bytearray()
        try:
            for chunk in response.iter_raw():
                body += chunk
                if len(body) > cap:
                    raise FetchFailed(f"{url} sent more than {cap:,} bytes (fetch.max_bytes); aborted")
                if self.clock() > self.deadline:
                    raise self._still_sending(url)
        except httpx.HTTPError as error:
            if self.connections.expired.is_set():
                raise self._still_sending(url) from None
            if isinstance(error, httpx.TimeoutException):
                raise FetchFailed(f"{url} stopped sending (read timeout)") from None
            raise FetchFailed(f"{url} sent an incomplete body ({error})") from None
        if self.connections.expired.is_set():  # the watchdog's shutdown reads as the end of a body delimited by close
            raise self._still_sending(url)
        if (problem := kind.check(bytes(body))) is not None:
            raise FetchFailed(f"{url} sent {len(body):,} bytes that {problem}")
        return bytes(body)

    def _still_sending(self, url: str) -> FetchFailed:
        return FetchFailed(f"{url} was still sending at the {self.settings.deadline:g}s fetch deadline")


@dataclass(frozen=True)
class _Kind:
    """What a fetch expects back: the Accept header, the content types and a check of the body."""

    noun: str
    accept: str
    types: tuple[str, ...]  # allowed content types; a trailing "/" allows a whole family
    check: Callable[[bytes], str | None]  # why the body is not acceptable, or None

    def allows(self, content_type: str) -> bool:
        return any(content_type == t or (t.endswith("/") and content_type.startswith(t)) for t in self.types)


def _image_problem(data: bytes) -> str | None:
    return None if sniff(data) else "are not a PNG, JPEG, GIF, WebP or AVIF image"


def _text_problem(data: bytes) -> str | None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "are not UTF-8 text"
    return None


IMAGE = _Kind("an image", "image/png,image/*;q=0.8", ("image/", "application/octet-stream"), _image_problem)
FEED = _Kind(
    "JSON or YAML",
    "application/json, application/yaml;q=0.9, text/plain;q=0.5",
    ("application/json", "text/json", "application/yaml", "application/x-yaml", "text/yaml", "text/plain"),
    _text_problem,
)
