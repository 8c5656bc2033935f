"""The fetch stage's connections, which go only to a checked address and end at the stage's deadline.
fetch.py says what is asked for (conditional GETs, redirects, bodies, the fallback to last good copies);
this module is where a request meets the network, so that every way one could reach an address nobody
checked, or outlive the stage, is in one place to read and to audit.

Each hop's host is resolved once, by the stage's own resolver, and the request goes to one of the
addresses that answer (the URL's host replaced by the address; the Host header, the TLS SNI and the
certificate check stay the name's). Without allow_private every address of the answer must be public.
Before a byte is sent on a connection, its peer must be the address checked for it, so a DNS server
that answers a public address to the check and 127.0.0.1 to a second lookup (DNS rebinding) has no
second lookup to answer. At the deadline a watchdog shuts every connection of the stage: per-read
timeouts alone let a server that drips its headers a byte at a time hold a request for hours.

Connections are kept alive (HTTP/1.1), in pools the stage owns: one per (scheme, host name, port,
checked address) and thread, opened by the stage, each peer checked and in the watchdog's reach, closed
when the stage ends. A pool is never shared across names (httpcore keys its pools by the URL's host, which
here is the address: two names on one address would share connections and the second name's requests
would go out under the first one's SNI and certificate), nor with the client's own pool (IndexNow's), nor
with another stage, and no proxy is ever in the way. (500 conditional GETs on fresh connections were
0.57 s of a 0.98 s hourly no-op run; kept alive they take ~0.3x the wall and 0.7x the CPU, over TLS 0.2x
and 0.3x. A 304 on a kept-alive connection then cost ~0.7 ms of CPU; a pool per thread, a URL parsed once
and no constant rebuilt per request took 1.4x off that, to about what httpx's transport alone costs.)

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
import re
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

from .errors import FetchFailed
from .model import FetchSettings

Resolver = Callable[[str, int], list[str]]  # (host, port) -> its addresses, best first; OSError if none
log = logging.getLogger(__name__)


class Connections:
    """Every connection of one fetch stage. As a context manager: `settings.deadline` wall-clock seconds
    after it is entered, every connection is cut; when it exits, every one is closed."""

    def __init__(
        self,
        client: httpx.Client,
        settings: FetchSettings,
        resolve: Resolver | None,  # None: the system's resolver
        clock: Callable[[], float],
        deadline: float,  # on `clock`
    ) -> None:
        if not isinstance(client, FetchClient):
            raise TypeError(
                f"the fetch stage opens its own connections with the trust store of a client from "
                f"fetch.make_client, not of a {type(client).__name__}"
            )
        self.settings, self.resolve, self.clock, self.deadline = settings, resolve or _resolve, clock, deadline
        self.expired = threading.Event()  # set by the watchdog, at the deadline
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.pools = _Pools(client, max(1, settings.concurrency))
        self.timer = threading.Timer(settings.deadline, self._cut_off)
        self.timer.daemon = True

    def __enter__(self) -> Connections:
        self.timer.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.timer.cancel()
        self.pools.close()

    @contextlib.contextmanager
    def get(self, url: str, headers: dict[str, str]) -> Iterator[httpx.Response]:
        """GET `url` (one hop: redirects are the caller's) from the first of its checked addresses that takes the
        connection (the next one is tried only when the TCP connection itself failed), through the stage's pool
        for that name and address: the response, released after the block. The name stays in Host, SNI and the
        certificate check."""
        name, rest = _split(url)
        addresses = self._addresses(url, name)
        headers = {**headers, "Host": name.netloc}
        for index, address in enumerate(addresses):
            key = (name.scheme, name.host, name.port, address)
            pool = self.pools.take(key)
            try:
                last = index + 1 == len(addresses)
                response = self._ask(pool, url, _at(name, address, rest), name.host, headers, last)
                if response is None:
                    log.debug("cannot connect to %s at %s; trying %s", url, address, addresses[index + 1])
                    continue
                try:
                    yield response
                finally:
                    _release(response)
                return
            finally:
                self.pools.give_back(key)
        raise FetchFailed(f"cannot resolve the host of {url} (no address)")  # not reached: _addresses has one

    def _cut_off(self) -> None:
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
            timeout = self._timeout(url)  # for each phase: connect, write, read, and the wait for a connection
            attempt = _Attempt(url, address)
            request = httpx.Request(
                "GET",
                target,
                headers=headers,
                extensions={
                    "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout},
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
                    raise FetchFailed(f"no response from {url}{at} within {timeout:g}s") from None
                raise FetchFailed(f"cannot connect to {url}{at} ({type(error).__name__}: {error})") from None
            response.request = request
            return response

    def _timeout(self, url: str) -> float:
        remaining = self.deadline - self.clock()
        if remaining <= 0:
            raise FetchFailed(f"the fetch deadline of {self.settings.deadline:g}s passed before {url} was asked")
        return min(self.settings.timeout, remaining)

    def _addresses(self, url: str, name: _Name) -> list[str]:
        """The addresses of the URL's host, asked for once for this hop: the request goes to one of them
        and nowhere else. Without allow_private, a loopback, private, link-local or reserved address
        anywhere in the answer refuses the host before any packet is sent."""
        host, port = name.lookup
        if _ip(host) is not None:
            addresses = [host]  # an address already: no lookup, nothing a resolver could change
        else:
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

    def _no_answer(self, url: str) -> FetchFailed:
        return FetchFailed(f"{url} had not answered at the {self.settings.deadline:g}s fetch deadline")


_Key = tuple[str, str, int, str]  # a pool's: (scheme, host name, port, the checked address it connects to)


class _Pools:
    """The stage's own connection pools, one per key and thread, each of one connection kept alive; the stage
    runs `connections` threads, so a name is reached over `connections` connections at most. At most
    `connections` x `connections` pools with no request in flight stay open (the idle connections of
    `connections` shared pools of `connections` each), the least recently used closed first: icons from
    hundreds of hosts do not hold hundreds of idle sockets.

    One connection per pool and thread, not one pool of `connections` per key shared by the threads:
    httpcore's pool looks at each of its connections (a poll() on every idle one) for every request and
    every release, and at all of them again for each idle one (quadratic in the pool's size). With 8 threads
    on one origin, one connection each cut the CPU of a 304 by a fifth."""

    def __init__(self, client: FetchClient, connections: int) -> None:
        self.client, self.idle = client, connections * connections
        self.lock = threading.Lock()
        self.pools: dict[tuple[_Key, int], httpx.HTTPTransport] = {}  # least recently used first
        self.busy: dict[tuple[_Key, int], int] = {}  # requests in flight

    def take(self, key: _Key) -> httpx.HTTPTransport:
        """This thread's pool for `key` (made on first use), kept open until it is given back."""
        mine = (key, threading.get_ident())
        with self.lock:
            pool = self.pools.pop(mine, None) or self.client.transport(1)
            self.pools[mine] = pool
            self.busy[mine] = self.busy.get(mine, 0) + 1
        return pool

    def give_back(self, key: _Key) -> None:
        """This thread is done with its pool for `key`: close the idle pools past the limit."""
        with self.lock:
            self.busy[key, threading.get_ident()] -= 1
            idle = [k for k in self.pools if not self.busy[k]] if len(self.pools) > self.idle else []
            surplus = [self.pools.pop(k) for k in idle[: max(0, len(idle) - self.idle)]]
        for pool in surplus:
            pool.close()

    def close(self) -> None:
        """Close every connection (at the end of the stage: no pool outlives it)."""
        with self.lock:
            pools, self.pools = list(self.pools.values()), {}
        for pool in pools:
            pool.close()


@dataclass
class _Attempt:
    """One connection attempt of one hop: the URL as asked, the checked address it may connect to."""

    url: str
    address: str
    connected: bool = False  # its own connection is open, to `address`


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: IPv4 in the low 32 bits, reached through a gateway


@functools.lru_cache(maxsize=1024)
def _ip(text: str) -> IPAddress | None:
    """The address in `text` (an IPv6 zone dropped, an IPv4-mapped IPv6 address as its IPv4), or None.
    Cached: a request asks it of the same few names and addresses several times."""
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


_PORTS = {"http": 80, "https": 443}
_URL = re.compile(r"([^:/?#]+)://([^/?#]*)([^#]*)")  # scheme, authority, path and query: httpx's own split


@dataclass(frozen=True)
class _Name:
    """The origin of a URL as httpx reads it (scheme and host in lower case, the host IDNA-encoded)."""

    scheme: str
    host: str  # as in the SNI and the certificate check
    port: int
    netloc: str  # the Host header: the host, and the port unless it is the scheme's
    lookup: tuple[str, int]  # what the resolver is asked: the host as urlsplit reads it, and the port


def _split(url: str) -> tuple[_Name, str]:
    """The URL's origin, and its path and query as sent. A request's URL is parsed once, by httpx, with the
    checked address in it (`_at`); the name is parsed on its own, once per origin: a full parse of each
    URL for its name, then one for its address, was a fifth of the CPU of a 304."""
    split = _URL.match(url)
    if split is None:
        raise FetchFailed(f"{url} is not an absolute http or https URL")
    return _name(split[1], split[2]), split[3]


@functools.lru_cache(maxsize=256)
def _name(scheme: str, authority: str) -> _Name:
    origin = httpx.URL(f"{scheme}://{authority}/")
    host, netloc, port = origin.raw_host.decode("ascii"), origin.netloc.decode("ascii"), origin.port
    parts = urlsplit(f"{scheme}://{authority}/")
    lookup = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    return _Name(origin.scheme, host, port or _PORTS[origin.scheme], netloc, lookup)


def _at(name: _Name, address: str, rest: str) -> httpx.URL:
    """The URL with its host replaced by `address` (the path and query normalised as httpx does any URL's)."""
    return httpx.URL(f"{name.scheme}://{f'[{address}]' if ':' in address else address}:{name.port}{rest}")


def _release(response: httpx.Response) -> None:
    """Close the response. httpcore puts a connection back in its pool only once the response was read to
    its end, so one known to have no body (a 304, or Content-Length: 0) is read first: it costs no wait,
    and a revalidation keeps its connection. Any other unread body drops its connection with it."""
    if not response.is_stream_consumed and (
        response.status_code == 304 or response.headers.get("content-length") == "0"
    ):
        with contextlib.suppress(httpx.HTTPError):
            for _ in response.iter_raw():
                pass  # nothing: the end is what counts
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
