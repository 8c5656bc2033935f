"""Stage 1: IconSpec (+ its last good copy) -> SourceIcon. HTTP only: the copies kept between
runs are read and written by store.py, at the build's edge.

Each source is asked for with a conditional GET (the stored ETag / Last-Modified). Everything a
hostile or broken server can do is bounded: per-phase timeouts plus one deadline for the whole
stage, a byte cap while streaming, `Accept-Encoding: identity` (no decompression bombs), only
http/https, every redirect hop checked by us (scheme, downgrade, private addresses), and the body
sniffed to be an image. At the deadline a watchdog shuts every connection of the stage: per-read
timeouts alone let a server that drips its headers a byte at a time hold a request for hours. A
source that fails yields the last good copy, marked STALE with the reason; only an icon that never
had a good copy is an error.

Each hop's host is resolved once, by the stage's own resolver, and the request goes to one of the
addresses that answer (the URL's host replaced by the address; the Host header, the TLS SNI and the
certificate check stay the name's). Without allow_private every address of the answer must be public.
Before a byte is sent on a connection, its peer must be the address checked for it, so a DNS server
that answers a public address to the check and 127.0.0.1 to a second lookup (DNS rebinding) has no
second lookup to answer.

Connections are kept alive (HTTP/1.1), in pools the stage owns: one per (scheme, host name, port,
checked address), opened by the stage, each peer checked and in the watchdog's reach, closed when the
stage ends. A pool is never shared across names (httpcore keys its pools by the URL's host, which here
is the address: two names on one address would share connections and the second name's requests would
go out under the first one's SNI and certificate), nor with the client's own pool (IndexNow's), nor with
another stage, and no proxy is ever in the way. (500 conditional GETs on fresh connections were 0.57 s
of a 0.98 s hourly no-op run; kept alive they take ~0.3x the wall and 0.7x the CPU, over TLS 0.2x and 0.3x.)

Not HTTP/2: httpcore's sync HTTP/2 lets the threads sharing a connection take stream IDs without a lock
and send them in any order (httpcore/_sync/http2.py, handle_request). Tried against nginx, 500 GETs on
8 threads: nginx answered GOAWAY ("client sent HEADERS frame with incorrect identifier 809, the last was
811") and every stream in flight failed, or httpcore raised a KeyError that no caller expects (encode/httpx
issue 3072, encode/httpcore PR 1062). Kept alive, HTTP/1.1 measured as fast as HTTP/2 on that run.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from .errors import FetchFailed, SourceError
from .model import Document, FetchSettings, IconSpec, Origin, Progress, SourceIcon, Stored, sniff

USER_AGENT = "pipeline-static-site/0.1 (+icon fetch; conditional GET)"
Resolver = Callable[[str, int], list[str]]  # (host, port) -> its addresses, best first; OSError if none
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
    fetcher = _Fetcher(client, settings, resolve or _resolve, clock, deadline) if client else None

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

    with _stage(fetcher, settings.deadline), ThreadPoolExecutor(max_workers=max(1, settings.concurrency)) as pool:
        futures = {pool.submit(fetch_one, spec): spec.name for spec in specs}
        if fetcher is not None:  # offline, icons/ is read in a blink: no progress to show
            progress("fetch", 0, len(futures), "")
            for done, future in enumerate(as_completed(futures), 1):
                progress("fetch", done, len(futures), futures[future])
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
    fetcher = _Fetcher(client, settings, resolve or _resolve, clock, clock() + settings.deadline)
    validators = stored if stored and stored.url == url else None
    try:
        with _stage(fetcher, settings.deadline):
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


@contextlib.contextmanager
def _stage(fetcher: _Fetcher | None, seconds: float) -> Iterator[None]:
    """At the deadline (wall-clock seconds), cut every connection of the stage; at its end, close them."""
    timer = threading.Timer(seconds, fetcher.cut_off) if fetcher else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer:
            timer.cancel()
        if fetcher:
            fetcher.pools.close()


_Key = tuple[str, str, int, str]  # a pool's: (scheme, host name, port, the checked address it connects to)


class _Pools:
    """The stage's own connection pools, one per key, each of at most `connections` connections kept alive.
    Pools with no request in flight stay open `connections` at most, the least recently used closed first:
    icons from hundreds of hosts do not hold hundreds of idle sockets."""

    def __init__(self, client: FetchClient, connections: int) -> None:
        self.client, self.connections = client, connections
        self.lock = threading.Lock()
        self.pools: dict[_Key, httpx.HTTPTransport] = {}  # least recently used first
        self.busy: dict[_Key, int] = {}  # requests in flight

    @contextlib.contextmanager
    def use(self, key: _Key) -> Iterator[httpx.HTTPTransport]:
        """The pool for `key` (made on first use), kept open while the block runs."""
        with self.lock:
            pool = self.pools.pop(key, None) or self.client.transport(self.connections)
            self.pools[key] = pool
            self.busy[key] = self.busy.get(key, 0) + 1
        try:
            yield pool
        finally:
            with self.lock:
                self.busy[key] -= 1
                idle = [k for k in self.pools if not self.busy[k]]
                surplus = [self.pools.pop(k) for k in idle[: max(0, len(idle) - self.connections)]]
            for pool in surplus:
                pool.close()

    def close(self) -> None:
        """Close every connection (at the end of the stage: no pool outlives it)."""
        with self.lock:
            pools, self.pools = list(self.pools.values()), {}
        for pool in pools:
            pool.close()


class _Fetcher:
    def __init__(
        self,
        client: httpx.Client,
        settings: FetchSettings,
        resolve: Resolver,
        clock: Callable[[], float],
        deadline: float,
    ) -> None:
        if not isinstance(client, FetchClient):
            raise TypeError(
                f"the fetch stage opens its own connections with the trust store of a client from "
                f"fetch.make_client, not of a {type(client).__name__}"
            )
        self.client, self.settings, self.resolve, self.clock, self.deadline = client, settings, resolve, clock, deadline
        self.expired = threading.Event()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.pools = _Pools(client, max(1, settings.concurrency))

    def cut_off(self) -> None:
        """At the deadline: shut every connection of the stage, so a read blocked in httpx returns now."""
        with self.lock:
            self.expired.set()
            sockets = list(self.sockets)
        for sock in sockets:
            _shut(sock)

    def _trace(self, attempt: _Attempt, event: str, info: dict[str, Any]) -> None:
        """httpx trace hook of one attempt: note the socket of a connection it opens (and of its TLS layer),
        for the watchdog, and refuse the connection, before a byte is sent on it, unless its peer is the
        address checked for it. A request that goes out on a connection from the pool opens nothing: that
        connection was checked when it opened, for the same key (the pools are the stage's own)."""
        if event == "connection.connect_tcp.complete":
            stream = info["return_value"]
            sock = stream.get_extra_info("socket")
            if self._watch(sock):
                stream.close()
                raise self._no_answer(attempt.url)
            try:
                peer = str(sock.getpeername()[0])
            except OSError as error:
                peer = f"nothing ({error})"
            if _ip(peer) != _ip(attempt.address):
                stream.close()
                raise FetchFailed(f"{attempt.url} connected to {peer}, not to the address checked, {attempt.address}")
            attempt.connected = True
        elif event == "connection.start_tls.complete":
            self._watch(info["return_value"].get_extra_info("socket"))

    def _watch(self, sock: socket.socket) -> bool:
        """Put the socket in the watchdog's reach; True (and the socket shut) if the deadline has passed."""
        with self.lock:
            self.sockets.append(sock)
            late = self.expired.is_set()
        if late:
            _shut(sock)
        return late

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
            with self._exchange(url, self._addresses(url), headers) as response:
                if response.has_redirect_location:
                    url = self._next_hop(url, response.headers["location"])
                    continue
                if response.status_code == 304:
                    return Reply(url, 304, response.headers, b"")
                if response.status_code != 200:
                    raise FetchFailed(f"HTTP {response.status_code} from {url}")
                return Reply(url, 200, response.headers, self._read_body(url, response, kind))
        raise FetchFailed(f"more than {self.settings.max_redirects} redirects from {url}")

    @contextlib.contextmanager
    def _exchange(self, url: str, addresses: list[str], headers: dict[str, str]) -> Iterator[httpx.Response]:
        """GET `url` from the first of its checked `addresses` that takes the connection (the next one is
        tried only when the TCP connection itself failed), through the stage's pool for that name and
        address: the response, released after the block. The name stays in Host, SNI and the certificate
        check."""
        target = httpx.URL(url)
        host = target.raw_host.decode("ascii")
        headers = {**headers, "Host": target.netloc.decode("ascii")}
        for index, address in enumerate(addresses):
            with self.pools.use((target.scheme, host, target.port or _PORTS[target.scheme], address)) as pool:
                last = index + 1 == len(addresses)
                response = self._ask(pool, url, target.copy_with(host=address), host, headers, last)
                if response is None:
                    log.debug("cannot connect to %s at %s; trying %s", url, address, addresses[index + 1])
                    continue
                try:
                    yield response
                finally:
                    _release(response)
                return
        raise FetchFailed(f"cannot resolve the host of {url} (no address)")  # not reached: _addresses has one

    def _ask(
        self, pool: httpx.HTTPTransport, url: str, target: httpx.URL, host: str, headers: dict[str, str], last: bool
    ) -> httpx.Response | None:
        """One GET through `pool` to `target` (the URL with the address in it): the response, or None when the
        TCP connection failed and another address is `last` to try. A request that went out on a kept-alive
        connection the server closed as it arrived (a server's idle timeout races the request) is asked
        again, once: the pool drops that connection, and a GET can be repeated."""
        address, tries = target.host, 2
        while True:
            tries -= 1
            timeout = self._timeout(url)
            attempt = _Attempt(url, address)
            request = httpx.Request(
                "GET",
                target,
                headers=headers,
                extensions={
                    "timeout": timeout.as_dict(),
                    "trace": functools.partial(self._trace, attempt),
                    "sni_hostname": host,
                },
            )
            try:
                response = pool.handle_request(request)
            except httpx.HTTPError as error:
                if self.expired.is_set():
                    raise self._no_answer(url) from None
                if tries and not attempt.connected and isinstance(error, (httpx.RemoteProtocolError, httpx.ReadError)):
                    log.debug("%s: a kept-alive connection closed under the request (%s); asking again", url, error)
                    continue
                if isinstance(error, httpx.ConnectError) and not attempt.connected and not last:
                    return None
                at = "" if _ip(address) == _ip(host) else f" at {address}"
                if isinstance(error, httpx.ConnectTimeout):
                    raise FetchFailed(f"timed out connecting to {url}{at}") from None
                if isinstance(error, httpx.TimeoutException):
                    raise FetchFailed(f"no response from {url}{at} within {timeout.read:g}s") from None
                raise FetchFailed(f"cannot connect to {url}{at} ({type(error).__name__}: {error})") from None
            response.request = request
            return response

    def _timeout(self, url: str) -> httpx.Timeout:
        remaining = self.deadline - self.clock()
        if remaining <= 0:
            raise FetchFailed(f"the fetch deadline of {self.settings.deadline:g}s passed before {url} was asked")
        return httpx.Timeout(min(self.settings.timeout, remaining))

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

    def _addresses(self, url: str) -> list[str]:
        """The addresses of the URL's host, asked for once for this hop: the request goes to one of them
        and nowhere else. Without allow_private, a loopback, private, link-local or reserved address
        anywhere in the answer refuses the host before any packet is sent."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if _ip(host) is not None:
            addresses = [host]  # an address already: no lookup, nothing a resolver could change
        else:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                addresses = list(dict.fromkeys(self.resolve(host, port)))
            except OSError as error:
                raise FetchFailed(f"cannot resolve the host of {url} ({error})") from None
            if not addresses:
                raise FetchFailed(f"cannot resolve the host of {url} (no address)")
        for address in addresses:
            ip = _ip(address)
            if ip is None:
                raise FetchFailed(f"cannot resolve the host of {url} (the resolver gave {address!r})")
            if not self.settings.allow_private and not _public(ip):
                raise FetchFailed(f"{url} resolves to the non-public address {address}; refused (allow_private is off)")
        return addresses

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
            if self.expired.is_set():
                raise self._still_sending(url) from None
            if isinstance(error, httpx.TimeoutException):
                raise FetchFailed(f"{url} stopped sending (read timeout)") from None
            raise FetchFailed(f"{url} sent an incomplete body ({error})") from None
        if self.expired.is_set():  # the watchdog's shutdown reads as the end of a body delimited by close
            raise self._still_sending(url)
        if (problem := kind.check(bytes(body))) is not None:
            raise FetchFailed(f"{url} sent {len(body):,} bytes that {problem}")
        return bytes(body)

    def _no_answer(self, url: str) -> FetchFailed:
        return FetchFailed(f"{url} had not answered at the {self.settings.deadline:g}s fetch deadline")

    def _still_sending(self, url: str) -> FetchFailed:
        return FetchFailed(f"{url} was still sending at the {self.settings.deadline:g}s fetch deadline")


@dataclass
class _Attempt:
    """One connection attempt of one hop: the URL as asked, the checked address it may connect to."""

    url: str
    address: str
    connected: bool = False  # its own connection is open, to `address`


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: IPv4 in the low 32 bits, reached through a gateway


def _ip(text: str) -> IPAddress | None:
    """The address in `text` (an IPv6 zone dropped, an IPv4-mapped IPv6 address as its IPv4), or None."""
    try:
        ip = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _public(ip: IPAddress) -> bool:
    """Globally routable, and so is any IPv4 address the IPv6 one is a way to reach (NAT64, 6to4)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else ip.sixtofour
        if inner is not None and not inner.is_global:
            return False
    return ip.is_global


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


_PORTS = {"http": 80, "https": 443}


def _release(response: httpx.Response) -> None:
    """Close the response. httpcore puts a connection back in its pool only once the response was read to
    its end, so one known to have no body (a 304, or Content-Length: 0) is read first: it costs no wait,
    and a revalidation keeps its connection. Any other unread body drops its connection with it."""
    if response.status_code == 304 or response.headers.get("content-length") == "0":
        with contextlib.suppress(httpx.HTTPError):
            response.read()
    response.close()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed already, or a TCP socket detached into its TLS wrapper (shut through that one)


def _resolve(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)]


class FetchClient(httpx.Client):
    """The production client (no proxies or .netrc from the environment, one transport retry; IndexNow
    sends through it), and what the fetch stage opens its own pools with: the same trust store (the CA
    bundle is loaded once per run) and local address."""

    def __init__(
        self, settings: FetchSettings, verify: ssl.SSLContext | None = None, local_address: str | None = None
    ) -> None:
        _import_httpcore_lightly()
        self.tls = verify or httpx.create_ssl_context()
        self.local_address = local_address
        super().__init__(
            trust_env=False,
            transport=self.transport(max(1, settings.concurrency)),
            timeout=httpx.Timeout(settings.timeout),
        )

    def transport(self, connections: int) -> httpx.HTTPTransport:
        """A new pool of at most `connections` connections, kept alive, opened the way this client opens its own."""
        return httpx.HTTPTransport(
            verify=self.tls,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            local_address=self.local_address,
            retries=1,
        )


def make_client(
    settings: FetchSettings, *, verify: ssl.SSLContext | None = None, local_address: str | None = None
) -> FetchClient:
    """The production client; `verify`: trust this instead of the CA bundle (tests), `local_address`: bind to it."""
    return FetchClient(settings, verify, local_address)


def _import_httpcore_lightly() -> None:
    """Import httpcore (httpx imports it with its first transport) without trio and h2, which it imports
    whenever they are installed: trio for the locks of its async API (httpcore/_synchronization.py), h2 for
    HTTP/2; this module uses neither (sync API, HTTP/1.1). Measured at load ~10: httpcore 350 ms with both,
    200 ms without trio, 160 ms without either (python itself 90 ms); a no-op run's target is 500 ms.
    A name that is None in sys.modules fails to import, which httpcore takes as "not installed"; both are
    put back at once (httpcore imports h2 again, on its own, for an HTTP/2 connection: a client made with
    http2=True elsewhere still works), and only names not imported yet are hidden (a process that imported
    trio itself keeps it working with httpx)."""
    if "httpcore" in sys.modules:
        return
    hidden = [name for name in ("trio", "h2") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import httpcore  # noqa: F401
    finally:
        for name in hidden:
            del sys.modules[name]
