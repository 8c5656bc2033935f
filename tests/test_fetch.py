"""Stage 1 against a real HTTP server on 127.0.0.1 (tests/origin.py) through the production client."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest

from pipeline.connections import _at, _split
from pipeline.errors import SourceError
from pipeline.fetch import fetch_feed, fetch_sources, make_client
from pipeline.model import EncodeSettings, FetchSettings, IconSpec, Origin, SourceIcon, Stored
from pipeline.store import IconStore
from tests.origin import ScriptedOrigin, make_png, self_signed, serve
from tests.origin_connections import ONCE, CountingOrigin, serve_counting
from tests.tools import require

TIMEOUT = 0.5
DEADLINE = 2.0
MAX_BYTES = 100_000
SETTINGS = FetchSettings(timeout=TIMEOUT, deadline=DEADLINE, max_bytes=MAX_BYTES, max_redirects=3, allow_private=True)
SHORT = replace(SETTINGS, deadline=1.0)  # for the extra deadline tests, to keep the file quick
SLACK = 0.5  # scheduling margin on wall-time bounds
OLD_PNG = make_png(seed=99)  # the "last good copy" a failing source falls back to
PRIVATE_OFF = replace(SETTINGS, allow_private=False)
REBIND = "rebind.test"  # a name only the tests' own DNS knows (.test is reserved: no real DNS answers it)
PUBLIC = "93.184.216.34"  # a global address; public_network puts it on lo, and nothing else is reached
NETNS = "PIPELINE_TEST_NETNS"  # set inside the network namespace (public_network)


@pytest.fixture
def origin() -> Iterator[ScriptedOrigin]:
    with serve() as server:
        yield server


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """The production client, shared: building one loads the CA bundle (a quarter of a second)."""
    with make_client(SETTINGS) as http:
        yield http


@pytest.fixture
def store(tmp_path: Path) -> IconStore:
    return IconStore(tmp_path / "icons")


def spec(url: str, name: str = "Polychrome") -> IconSpec:
    return IconSpec(name, name.lower(), url, f"{name} icon", EncodeSettings(), 7)


def seed(store: IconStore, icon: IconSpec, data: bytes = OLD_PNG, etag: str = '"old"', last_modified: str = "") -> None:
    """Put a good copy of `icon` in icons/, as an earlier run would have left it."""
    store.save(SourceIcon(icon, data, Origin.DOWNLOADED, etag=etag, last_modified=last_modified))


def copies(store: IconStore, icons: list[IconSpec]) -> dict[str, Stored | None]:
    """What the build hands the fetch stage: each icon's last good copy in icons/."""
    return {icon.name: store.load(icon) for icon in icons}


def fetch_one(
    icon: IconSpec, store: IconStore, client: httpx.Client | None, settings: FetchSettings = SETTINGS
) -> tuple[SourceIcon, float]:
    start = time.monotonic()
    sources = fetch_sources([icon], copies(store, [icon]), client, settings)
    elapsed = time.monotonic() - start
    assert [s.spec for s in sources] == [icon]
    return sources[0], elapsed


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- 200, 304 and the validators -------------------------------------------------------------------


def test_first_fetch_downloads_sends_no_validators_and_save_keeps_the_etag(origin, client, store) -> None:
    icon = spec(origin.url("/ok.png"))
    source, _ = fetch_one(icon, store, client)
    assert (source.origin, source.data, source.reason) == (Origin.DOWNLOADED, origin.png, "")
    assert (source.etag, source.last_modified) == (origin.etag, origin.last_modified)
    [request] = origin.requests("/ok.png")
    assert "if-none-match" not in request.headers and "if-modified-since" not in request.headers
    assert request.headers["accept-encoding"] == "identity"
    assert request.headers["user-agent"].startswith("pipeline-static-site/")

    store.save(source)
    meta = json.loads((store.directory / "polychrome.meta.json").read_text())
    assert meta["url"] == icon.url and meta["ext"] == "png"
    assert (meta["etag"], meta["last_modified"]) == (origin.etag, origin.last_modified)
    assert (store.directory / "polychrome.png").read_bytes() == origin.png
    stored = store.load(icon)
    assert stored is not None and (stored.data, stored.etag) == (origin.png, origin.etag)


def test_second_fetch_is_conditional_and_304_keeps_the_stored_bytes(origin, client, store) -> None:
    icon = spec(origin.url("/ok.png"))
    first, _ = fetch_one(icon, store, client)
    store.save(first)
    second, _ = fetch_one(icon, store, client)
    assert [r.headers.get("if-none-match") for r in origin.requests("/ok.png")] == [None, origin.etag]
    assert origin.requests("/ok.png")[1].headers["if-modified-since"] == origin.last_modified
    assert (second.origin, second.data, second.etag) == (Origin.NOT_MODIFIED, origin.png, origin.etag)
    assert second.last_modified == origin.last_modified


def test_if_modified_since_alone_gets_a_304(origin, client, store) -> None:
    icon = spec(origin.url("/ok.png"))
    seed(store, icon, origin.png, etag="", last_modified=origin.last_modified)
    source, _ = fetch_one(icon, store, client)
    [request] = origin.requests("/ok.png")
    assert "if-none-match" not in request.headers
    assert request.headers["if-modified-since"] == origin.last_modified
    assert (source.origin, source.data) == (Origin.NOT_MODIFIED, origin.png)
    assert source.etag == origin.etag  # the 304's validators are the ones to keep


def test_changed_source_replaces_a_copy_with_an_old_etag(origin, client, store) -> None:
    icon = spec(origin.url("/ok.png"))
    seed(store, icon, OLD_PNG, etag='"old"')
    source, _ = fetch_one(icon, store, client)
    assert origin.requests("/ok.png")[0].headers["if-none-match"] == '"old"'
    assert (source.origin, source.data, source.etag) == (Origin.DOWNLOADED, origin.png, origin.etag)


def test_validators_of_a_copy_from_another_url_are_not_sent(origin, client, store) -> None:
    icon = spec(origin.url("/ok.png"))
    seed(store, spec(origin.url("/elsewhere.png")), origin.png, etag=origin.etag, last_modified=origin.last_modified)
    source, _ = fetch_one(icon, store, client)
    [request] = origin.requests("/ok.png")
    assert "if-none-match" not in request.headers and "if-modified-since" not in request.headers
    assert source.origin is Origin.NOT_MODIFIED  # a 200 with the very bytes we had


def test_rotating_etag_with_the_same_bytes_is_not_modified(origin, client, store) -> None:
    icon = spec(origin.url("/rotating-etag.png"))
    first, _ = fetch_one(icon, store, client)
    assert (first.origin, first.etag) == (Origin.DOWNLOADED, '"rot-1"')
    store.save(first)
    second, _ = fetch_one(icon, store, client)
    assert origin.requests("/rotating-etag.png")[1].headers["if-none-match"] == '"rot-1"'
    assert (second.origin, second.data, second.etag) == (Origin.NOT_MODIFIED, origin.png, '"rot-2"')


# ---- every way a source can fail: STALE with a copy, SourceError without -----------------------------


@dataclass(frozen=True)
class Failure:
    path: str  # on the origin; "refused" is a closed port instead
    why: str  # the reason must contain this (and the URL)
    at_most: float  # wall seconds the whole fetch may take
    at_least: float = 0.0
    requests: int = 1  # the origin saw exactly this many, all for `path`
    hung_up: bool = False  # the origin must see the client drop the connection (not drain it, not keep it)


FAILURES = [
    Failure("/404.png", "HTTP 404 from", TIMEOUT),
    Failure("/500.png", "HTTP 500 from", TIMEOUT),
    Failure("refused", "cannot connect to", TIMEOUT, requests=0),
    Failure("/slow-headers", "within 0.5s", TIMEOUT + SLACK, at_least=TIMEOUT - 0.05, hung_up=True),  # not retried
    Failure(
        "/drip",
        "was still sending at the 2s fetch deadline",
        DEADLINE + TIMEOUT + SLACK,
        at_least=DEADLINE - 0.1,
        hung_up=True,
    ),
    Failure(
        "/drip-headers",
        "had not answered at the 2s fetch deadline",
        DEADLINE + TIMEOUT + SLACK,
        at_least=DEADLINE - 0.1,
        hung_up=True,
    ),
    Failure("/truncated.png", "sent an incomplete body", TIMEOUT),
    Failure("/html", "answered 'text/html', not an image (a soft 404?)", TIMEOUT),
    Failure("/lying.png", "bytes that are not a PNG", TIMEOUT),
    # The server holds the body back: waiting for it would take a whole read timeout.
    Failure("/big-declared.png", "declares 50,000,000 bytes; the cap is 100,000", TIMEOUT / 2, hung_up=True),
    Failure("/endless", "sent more than 100,000 bytes (fetch.max_bytes); aborted", TIMEOUT, hung_up=True),
    Failure("/loop", "more than 3 redirects from", TIMEOUT, requests=3 + 1),
    Failure("/to-file", "redirects to a 'file' URL; only http and https are followed", TIMEOUT),
    Failure("/gzip.png", "sent Content-Encoding 'gzip' though identity was asked; refused", TIMEOUT),
]


def failing_url(origin: ScriptedOrigin, case: Failure) -> str:
    return f"http://127.0.0.1:{closed_port()}/icon.png" if case.path == "refused" else origin.url(case.path)


def check_failure(origin: ScriptedOrigin, case: Failure, url: str, reason: str, elapsed: float) -> None:
    assert url in reason and case.why in reason
    assert case.at_least <= elapsed <= case.at_most
    assert origin.count() == case.requests and origin.count(case.path) == case.requests
    if case.hung_up:
        assert origin.client_left(case.path)


@pytest.mark.parametrize("case", FAILURES, ids=[f.path for f in FAILURES])
def test_failing_source_with_a_good_copy_is_stale(origin, client, store, case) -> None:
    icon = spec(failing_url(origin, case))
    seed(store, icon)
    source, elapsed = fetch_one(icon, store, client)
    assert (source.origin, source.data, source.etag) == (Origin.STALE, OLD_PNG, '"old"')
    check_failure(origin, case, icon.url, source.reason, elapsed)
    assert store.load(icon) == Stored(OLD_PNG, icon.url, '"old"', "")  # the good copy is untouched


@pytest.mark.parametrize("case", FAILURES, ids=[f.path for f in FAILURES])
def test_failing_source_without_a_copy_is_a_source_error(origin, client, store, case) -> None:
    icon = spec(failing_url(origin, case))
    start = time.monotonic()
    with pytest.raises(SourceError) as raised:
        fetch_sources([icon], copies(store, [icon]), client, SETTINGS)
    elapsed = time.monotonic() - start
    [problem] = raised.value.problems
    assert problem.startswith("icon 'Polychrome': ")
    assert problem.endswith("; there is no earlier copy in icons/ to fall back on")
    check_failure(origin, case, icon.url, problem, elapsed)
    assert "Polychrome" in str(raised.value) and icon.url in str(raised.value)
    assert raised.value.exit_code == 69
    assert not store.directory.exists()  # nothing half-fetched was written


def test_deadline_holds_on_a_connection_kept_alive_from_an_earlier_run(origin, client, store) -> None:
    fetch_one(spec(origin.url("/ok.png"), "Earlier"), store, client)
    icon = spec(origin.url("/drip-headers"))
    seed(store, icon)
    source, elapsed = fetch_one(icon, store, client, SHORT)
    assert source.reason == f"{icon.url} had not answered at the 1s fetch deadline"
    assert elapsed <= SHORT.deadline + TIMEOUT + SLACK


def test_one_deadline_covers_the_whole_stage(origin, client, store) -> None:
    slow, next_in_line = spec(origin.url("/drip"), "Slow"), spec(origin.url("/ok.png"), "Next")
    seed(store, slow)
    seed(store, next_in_line)
    start = time.monotonic()
    sources = fetch_sources(
        [slow, next_in_line], copies(store, [slow, next_in_line]), client, replace(SHORT, concurrency=1)
    )
    assert time.monotonic() - start <= SHORT.deadline + TIMEOUT + SLACK
    assert [(s.origin, s.reason) for s in sources] == [
        (Origin.STALE, f"{slow.url} was still sending at the 1s fetch deadline"),
        (Origin.STALE, f"the fetch deadline of 1s passed before {next_in_line.url} was asked"),
    ]
    assert origin.count("/ok.png") == 0


def test_the_deadline_is_read_from_the_injected_clock(origin, client, store) -> None:
    readings = iter([0.0, 0.0])  # the stage start, then the request; every later reading is past the deadline
    icon = spec(origin.url("/ok.png"))
    seed(store, icon)
    [source] = fetch_sources([icon], copies(store, [icon]), client, SETTINGS, clock=lambda: next(readings, 100.0))
    assert (source.origin, source.reason) == (Origin.STALE, f"{icon.url} was still sending at the 2s fetch deadline")
    assert origin.count("/ok.png") == 1


def test_redirect_to_a_good_source_is_followed(origin, client, store) -> None:
    icon = spec(origin.url("/redirect-ok"))
    source, _ = fetch_one(icon, store, client)
    assert (source.origin, source.data, source.etag) == (Origin.DOWNLOADED, origin.png, origin.etag)
    assert [r.path for r in origin.requests()] == ["/redirect-ok", "/ok.png"]
    assert origin.requests("/ok.png")[0].headers["accept-encoding"] == "identity"


def test_one_failing_icon_does_not_hide_the_good_ones(origin, client, store) -> None:
    good, stale, missing = (
        spec(origin.url("/ok.png"), "Good"),
        spec(origin.url("/500.png"), "Stale"),
        spec(origin.url("/404.png"), "Missing"),
    )
    seed(store, stale)
    with pytest.raises(SourceError) as raised:
        fetch_sources([good, stale, missing], copies(store, [good, stale, missing]), client, SETTINGS)
    assert raised.value.problems == (
        f"icon 'Missing': HTTP 404 from {missing.url}; there is no earlier copy in icons/ to fall back on",
    )
    seed(store, missing)
    sources = fetch_sources([good, stale, missing], copies(store, [good, stale, missing]), client, SETTINGS)
    assert [(s.spec.name, s.origin) for s in sources] == [
        ("Good", Origin.DOWNLOADED),
        ("Stale", Origin.STALE),
        ("Missing", Origin.STALE),
    ]
    assert origin.count("/ok.png") == 2 and origin.count("/500.png") == 2 and origin.count("/404.png") == 2


# ---- https --------------------------------------------------------------------------------------------


@pytest.fixture
def tls_origin(tmp_path: Path) -> Iterator[tuple[ScriptedOrigin, httpx.Client]]:
    """The origin over TLS, and a client that trusts its certificate (make_client trusts only real CAs)."""
    require(shutil.which("openssl") is not None, "needs the openssl CLI to make a test certificate")
    server_context, client_context = self_signed(tmp_path)
    with serve(tls=server_context) as server, make_client(SETTINGS, verify=client_context) as http:
        yield server, http


def test_https_source_downloads(tls_origin, store) -> None:
    origin, http = tls_origin
    icon = spec(origin.url("/ok.png"))
    source, _ = fetch_one(icon, store, http)
    assert icon.url.startswith("https://")
    assert (source.origin, source.data, source.etag) == (Origin.DOWNLOADED, origin.png, origin.etag)


def test_https_headers_dripped_are_cut_at_the_deadline(tls_origin, store) -> None:
    origin, http = tls_origin
    icon = spec(origin.url("/drip-headers"))
    seed(store, icon)
    source, elapsed = fetch_one(icon, store, http, SHORT)
    assert source.reason == f"{icon.url} had not answered at the 1s fetch deadline"
    assert elapsed <= SHORT.deadline + TIMEOUT + SLACK


def test_https_redirect_down_to_http_is_refused(tls_origin, store) -> None:
    origin, http = tls_origin
    icon = spec(origin.url("/downgrade"))
    seed(store, icon)
    source, _ = fetch_one(icon, store, http)
    target = origin.url("/ok.png").replace("https://", "http://")
    assert source.reason == f"{icon.url} redirects from https down to http ({target}); refused"
    assert [r.path for r in origin.requests()] == ["/downgrade"]


# ---- refusing before connecting, and offline ---------------------------------------------------------


def test_private_address_is_refused_before_any_request(origin, client, store) -> None:
    settings = replace(SETTINGS, allow_private=False)
    icon = spec(origin.url("/ok.png"))
    with pytest.raises(SourceError) as raised:
        fetch_sources([icon], copies(store, [icon]), client, settings)
    [problem] = raised.value.problems
    assert f"{icon.url} resolves to the non-public address 127.0.0.1; refused" in problem
    seed(store, icon)
    source, _ = fetch_one(icon, store, client, settings)
    assert (source.origin, source.data) == (Origin.STALE, OLD_PNG) and "non-public" in source.reason
    assert origin.count() == 0


def test_offline_uses_icons_only(origin, store) -> None:
    icon = spec(origin.url("/ok.png"))
    seed(store, icon, etag='"kept"', last_modified="Tue, 31 Dec 2024 00:00:00 GMT")
    source, _ = fetch_one(icon, store, None)
    assert (source.origin, source.data, source.etag) == (Origin.LOCAL, OLD_PNG, '"kept"')
    assert source.last_modified == "Tue, 31 Dec 2024 00:00:00 GMT"
    assert origin.count() == 0


def test_offline_without_a_copy_names_the_icon_and_url(origin, store) -> None:
    present, absent = spec(origin.url("/ok.png"), "Present"), spec(origin.url("/404.png"), "Absent")
    seed(store, present)
    with pytest.raises(SourceError) as raised:
        fetch_sources([present, absent], copies(store, [present, absent]), None, SETTINGS)
    assert raised.value.problems == (f"icon 'Absent': no copy in icons/ and --offline forbids fetching {absent.url}",)
    assert origin.count() == 0


# ---- faults.md rows 2, 11, 16, 20 -------------------------------------------------------------------


def test_untrusted_certificate_is_refused_by_the_production_client(tmp_path: Path, store) -> None:
    """Row 20: verification is never turned off; the last good copy is used instead."""
    require(shutil.which("openssl") is not None, "needs the openssl CLI to make a test certificate")
    server_context, _trusting = self_signed(tmp_path)
    with serve(tls=server_context) as origin, make_client(SETTINGS) as production:
        icon = spec(origin.url("/ok.png"))
        seed(store, icon)
        source, _ = fetch_one(icon, store, production)
    assert source.origin is Origin.STALE and "CERTIFICATE_VERIFY_FAILED" in source.reason


def test_tls_handshake_that_never_completes_times_out_at_connect(store) -> None:
    """Row 2: a TCP server that accepts and says nothing, behind an https:// URL."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        icon = spec(f"https://127.0.0.1:{listener.getsockname()[1]}/icon.png")
        seed(store, icon)
        source, elapsed = fetch_one(icon, store, make_client(SETTINGS))
    assert source.origin is Origin.STALE and source.reason == f"timed out connecting to {icon.url}"
    assert elapsed <= 2 * TIMEOUT + SLACK  # one transport retry at most


def test_redirect_to_a_private_address_is_refused_before_connecting(public_network, store) -> None:
    """Row 11: with allow_private off, each hop's host is resolved and checked before any packet. The
    first hop must reach a public address for the redirect to be seen at all, so this runs in a network
    of its own where PUBLIC is on lo (the stage connects to the address it checked: the resolver can no
    longer call 127.0.0.1 public while the connection goes there anyway)."""
    if not public_network():
        return
    targets = [
        "http://127.0.0.2:9/x.png",
        "http://[::1]:9/x.png",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:9/x.png",
    ]
    with serve(host=PUBLIC) as public, make_client(SETTINGS) as http:
        for target in targets:
            icon = spec(public.url("/redirect-to") + "?to=" + target)
            seed(store, icon)
            [source] = fetch_sources([icon], copies(store, [icon]), http, PRIVATE_OFF)
            assert source.origin is Origin.STALE
            assert "resolves to the non-public address" in source.reason and target in source.reason, source.reason
        assert [r.path for r in public.requests()] == ["/redirect-to"] * len(targets)


def test_429_with_a_huge_retry_after_does_not_hold_the_run(origin, client, store) -> None:
    """Row 16: no waiting on Retry-After inside a build; the last good copy, and the next run asks again."""
    icon = spec(origin.url("/429.png"))
    seed(store, icon)
    source, elapsed = fetch_one(icon, store, client)
    assert source.origin is Origin.STALE and source.reason == f"HTTP 429 from {icon.url}"
    assert elapsed < 1.0


# ---- DNS rebinding (issue 10): the stage connects to the very address it checked ------------------------


class RebindingDNS:
    """An attacker's DNS with a TTL of 0: REBIND answers `answers` in turn, query after query (a public
    address, then 127.0.0.1, then the public one again...). `resolve` is the stage's resolver seam; the
    same DNS is also installed as socket.getaddrinfo, so every other lookup on the machine (httpx's own
    connect among them) meets it as it would a real DNS server. Other names resolve as usual."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: tuple[str, ...] = (PUBLIC, "127.0.0.1")) -> None:
        self.answers, self.queries, self.lock = answers, 0, threading.Lock()
        self.real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self.getaddrinfo)

    def _next(self) -> str:
        with self.lock:
            self.queries += 1
            return self.answers[(self.queries - 1) % len(self.answers)]

    def resolve(self, host: str, port: int) -> list[str]:
        if host == REBIND:
            return [self._next()]
        return [str(info[4][0]) for info in self.real(host, port, proto=socket.IPPROTO_TCP)]

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (REBIND, REBIND.encode()):
            return self.real(host, port, *args, **kwargs)
        address = self._next()
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port)))]


@pytest.fixture
def loopback_client() -> Iterator[httpx.Client]:
    """A real client whose sockets are bound to 127.0.0.1: a connection to a public address fails on the
    spot (EINVAL), so no packet of these tests leaves the machine, whatever the stage connects to."""
    with make_client(SETTINGS, local_address="127.0.0.1") as http:
        yield http


def test_dns_rebinding_does_not_reach_loopback(origin, loopback_client, store, monkeypatch) -> None:
    """The check asked the DNS and got a public address; httpx asked again to connect and got
    127.0.0.1, so the icon came from loopback with allow_private off. Now the stage asks once per hop
    and connects to the address it checked (here it cannot reach it: the client is bound to lo)."""
    dns = RebindingDNS(monkeypatch)
    icon = spec(origin.url("/ok.png", host=REBIND))
    seed(store, icon)
    [source] = fetch_sources([icon], copies(store, [icon]), loopback_client, PRIVATE_OFF, resolve=dns.resolve)
    assert origin.requests() == [], "the 127.0.0.1 origin was asked"
    assert (source.origin, source.data) == (Origin.STALE, OLD_PNG), source.reason
    assert source.reason.startswith(f"cannot connect to {icon.url} at {PUBLIC} ("), source.reason
    assert dns.queries == 1


def test_dns_rebinding_does_not_reach_loopback_for_the_codes_feed(origin, loopback_client, monkeypatch) -> None:
    dns = RebindingDNS(monkeypatch)
    url = origin.url("/codes.json", host=REBIND)
    with pytest.raises(SourceError) as raised:
        fetch_feed(url, None, loopback_client, PRIVATE_OFF, resolve=dns.resolve)
    assert origin.requests() == [], "the 127.0.0.1 origin was asked"
    assert f"cannot connect to {url} at {PUBLIC} (" in str(raised.value)
    assert dns.queries == 1


@pytest.mark.parametrize("answer", ["::ffff:127.0.0.1", "64:ff9b::a00:1", "2002:a00:1::1", f"{PUBLIC} 10.0.0.1"])
def test_every_address_of_an_answer_is_checked_with_ipv4_inside_ipv6(origin, client, store, answer) -> None:
    """One non-public address in the answer refuses the host, IPv4 embedded in IPv6 included (mapped,
    NAT64, 6to4): a connection to any of them can end up at a private IPv4 address."""
    icon = spec(origin.url("/ok.png", host=REBIND))
    seed(store, icon)
    [source] = fetch_sources(
        [icon], copies(store, [icon]), client, PRIVATE_OFF, resolve=lambda host, port: answer.split()
    )
    assert source.origin is Origin.STALE
    refused = answer.split()[-1]
    assert source.reason == f"{icon.url} resolves to the non-public address {refused}; refused (allow_private is off)"
    assert origin.count() == 0


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_allow_private_connects_by_the_injected_resolver_with_the_name_kept(tmp_path, store, scheme) -> None:
    """allow_private on still fetches from 127.0.0.1, by the address the stage resolved (the system
    resolver does not know REBIND): the request names the host, and over TLS the SNI and the
    certificate checked are the name's (the certificate is for REBIND only, not for 127.0.0.1)."""
    server_tls, client_tls, sni = None, None, []
    if scheme == "https":
        require(shutil.which("openssl") is not None, "needs the openssl CLI to make a test certificate")
        server_tls, client_tls = self_signed(tmp_path, REBIND)
        server_tls.sni_callback = lambda connection, name, context: sni.append(name)
    with serve(tls=server_tls) as origin, make_client(SETTINGS, verify=client_tls) as http:
        icon = spec(origin.url("/redirect-ok", host=REBIND))
        asked: list[str] = []

        def resolve(host: str, port: int) -> list[str]:
            asked.append(host)
            return ["127.0.0.1"]

        [source] = fetch_sources([icon], copies(store, [icon]), http, SETTINGS, resolve=resolve)
        assert (source.origin, source.data) == (Origin.DOWNLOADED, origin.png), source.reason
        assert [(r.path, r.headers["host"]) for r in origin.requests()] == [
            ("/redirect-ok", f"{REBIND}:{origin.port}"),
            ("/ok.png", f"{REBIND}:{origin.port}"),
        ]
        assert asked == [REBIND, REBIND]  # once per hop
        assert sni == ([REBIND] if scheme == "https" else [])  # both hops on one kept-alive connection


def test_a_connection_that_does_not_reach_the_checked_address_is_refused(origin, client, store) -> None:
    """The peer of every new connection must be the address checked for it, before a byte is sent: a
    connection to 0.0.0.0 (allowed with allow_private on) reaches this host's 127.0.0.1, so it is refused."""
    icon = spec(f"http://{REBIND}:{origin.port}/ok.png")
    seed(store, icon)
    [source] = fetch_sources([icon], copies(store, [icon]), client, SETTINGS, resolve=lambda host, port: ["0.0.0.0"])
    assert source.reason == f"{icon.url} connected to 127.0.0.1, not to the address checked, 0.0.0.0"
    assert origin.requests() == []


def test_a_client_the_stage_cannot_open_its_own_connections_with_is_refused(origin, store) -> None:
    """The stage opens its connections with a make_client client's trust store; a plain httpx.Client (its
    proxies, its pool, its trust store) is never silently used instead."""
    icon = spec(origin.url("/ok.png"))
    with httpx.Client(trust_env=False) as plain, pytest.raises(TypeError) as raised:
        fetch_sources([icon], copies(store, [icon]), plain, SETTINGS)
    assert str(raised.value) == (
        "the fetch stage opens its own connections with the trust store of a client from fetch.make_client, "
        "not of a Client"
    )
    assert origin.requests() == []


# ---- kept-alive connections: the stage's own pools, one per (scheme, name, port, checked address) --------


@pytest.fixture
def counting() -> Iterator[CountingOrigin]:
    with serve_counting() as server:
        yield server


def test_revalidation_reuses_connections_bounded_by_concurrency(counting, client, store) -> None:
    """The hourly no-op run: every icon a 304, over at most `concurrency` kept-alive connections."""
    icons = [spec(counting.url(f"/ok.png?n={n}"), f"Icon {n}") for n in range(12)]
    for icon in icons:
        seed(store, icon, counting.png, etag=counting.etag)
    sources = fetch_sources(icons, copies(store, icons), client, replace(SETTINGS, concurrency=3))
    assert {(s.origin, s.data) for s in sources} == {(Origin.NOT_MODIFIED, counting.png)}
    assert [c.seen.headers["if-none-match"] for c in counting.carried()] == [counting.etag] * len(icons)
    assert 1 <= len(counting.connections()) <= 3


def test_connections_are_the_stages_own_and_closed_when_it_ends(counting, store) -> None:
    """A connection kept alive in the client's own pool (IndexNow's, or anyone's) is never used by the
    stage, nor is one of an earlier stage: each stage opens its own and closes them all as it ends."""
    icons = [spec(counting.url(f"/ok.png?n={n}"), f"Icon {n}") for n in range(3)]
    with make_client(SETTINGS) as http:
        assert http.get(counting.url("/rotating-etag.png")).status_code == 200
        [held] = counting.connections()
        stages = []
        for _ in range(2):
            sources = fetch_sources(icons, copies(store, icons), http, replace(SETTINGS, concurrency=1))
            assert {s.origin for s in sources} == {Origin.DOWNLOADED}
            stages.append(set(counting.connections()) - {held, *(c for stage in stages for c in stage)})
            assert wait_for(lambda: stages[-1] <= counting.closed()), (stages, counting.closed())
        assert [len(stage) for stage in stages] == [1, 1]  # three icons over one connection, each stage
        assert [c.seen.path for c in counting.carried() if c.connection == held] == ["/rotating-etag.png"]
        assert held not in counting.closed()


def test_deadline_cuts_a_reused_connection_and_idle_ones(counting, client, store) -> None:
    """A drip on a connection the stage reuses (opened for an earlier icon) is cut at the deadline, and
    the connections idle in the pool at that moment are closed with the stage."""
    fast = [spec(counting.url(f"/ok.png?n={n}"), f"Fast {n}") for n in range(3)]
    slow = spec(counting.url("/drip-headers"), "Slow")
    icons = [*fast, slow]
    for icon in icons:
        seed(store, icon)
    start = time.monotonic()
    sources = fetch_sources(icons, copies(store, icons), client, replace(SHORT, concurrency=2))
    assert time.monotonic() - start <= SHORT.deadline + TIMEOUT + SLACK
    assert [s.origin for s in sources] == [Origin.DOWNLOADED] * 3 + [Origin.STALE]
    assert sources[-1].reason == f"{slow.url} had not answered at the 1s fetch deadline"
    [dripping] = [c.connection for c in counting.carried() if c.seen.path == "/drip-headers"]
    assert len(counting.connections()[dripping]) > 1, "the drip did not come on a reused connection"
    assert wait_for(lambda: set(counting.connections()) <= counting.closed())


def test_a_request_the_server_hangs_up_on_in_a_kept_alive_connection_is_asked_again(counting, client, store) -> None:
    """A server may close an idle kept-alive connection just as the next request goes out on it (its
    keep-alive timeout): that GET is asked again, once, on a fresh connection; the icon is not stale."""
    icons = [spec(counting.url(f"{ONCE}?n={n}"), f"Icon {n}") for n in range(3)]
    sources = fetch_sources(icons, copies(store, icons), client, replace(SETTINGS, concurrency=1))
    assert [(s.origin, s.reason) for s in sources] == [(Origin.DOWNLOADED, "")] * 3
    assert [len(requests) for requests in counting.connections().values()] == [2, 2, 1]  # hung up on, asked again


def test_two_names_on_one_address_never_share_a_connection(tmp_path, store) -> None:
    """Two host names at the same 127.0.0.1: each connection carries one name's requests only, under that
    name's SNI (a connection shared across names would send B's requests under A's SNI and certificate)."""
    require(shutil.which("openssl") is not None, "needs the openssl CLI to make a test certificate")
    server_tls, client_tls = two_name_certificate(tmp_path, "a.test", "b.test")
    with serve_counting(tls=server_tls) as origin, make_client(SETTINGS, verify=client_tls) as http:
        # one at a time, a.test's icons then b.test's: a pool shared by the names would reuse a.test's connection
        icons = [spec(origin.url(f"/ok.png?n={n}", host=f"{'ab'[n // 4]}.test"), f"Icon {n}") for n in range(8)]
        sources = fetch_sources(
            icons, copies(store, icons), http, replace(SETTINGS, concurrency=1), resolve=lambda h, p: ["127.0.0.1"]
        )
        assert {s.origin for s in sources} == {Origin.DOWNLOADED}, [s.reason for s in sources]
        names = {port: [seen.headers["host"] for seen in requests] for port, requests in origin.connections().items()}
        assert sorted(names.values()) == [[f"a.test:{origin.port}"] * 4, [f"b.test:{origin.port}"] * 4], names
        assert all(hosts[0] == f"{origin.sni()[port]}:{origin.port}" for port, hosts in names.items()), origin.sni()


def test_idle_pools_of_many_hosts_are_closed_past_concurrency(counting, client, store) -> None:
    """Icons from many hosts (here names for one address, a pool each) do not pile up idle sockets: at
    most `concurrency` pools with no request in flight stay open, so at most 2 x 2 connections here."""
    icons = [spec(counting.url("/ok.png", host=f"host{n}.test"), f"Icon {n}") for n in range(12)]
    settled: list[bool] = []

    def at_most_four_open(*progress: object) -> None:
        settled.append(wait_for(lambda: len(set(counting.connections()) - counting.closed()) <= 4))

    sources = fetch_sources(
        icons,
        copies(store, icons),
        client,
        replace(SETTINGS, concurrency=2),
        resolve=lambda host, port: ["127.0.0.1"],
        progress=at_most_four_open,
    )
    assert {s.origin for s in sources} == {Origin.DOWNLOADED}
    assert len(counting.connections()) == len(icons) and settled == [True] * (len(icons) + 1)


def two_name_certificate(directory: Path, *names: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for all `names` (openssl CLI): (server context, client context trusting it)."""
    cert, key = directory / "names.crt", directory / "names.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-days", "1", "-subj", f"/CN={names[0]}", "-addext", "subjectAltName=" + ",".join(f"DNS:{n}" for n in names)]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


def wait_for(condition: Callable[[], bool], timeout: float = 1.5) -> bool:
    """Poll `condition` until it holds or `timeout` passes (a server thread notes a close a moment after it)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


# Tests that need a public address to answer (they take the `public_network` fixture) run in a
# network namespace of their own: `unshare -rn`, a user and a network namespace (no root needed where
# unprivileged user namespaces are allowed) whose only interface is lo, with PUBLIC added to it. There a
# server on PUBLIC is a public host as far as the stage can tell, and nothing reaches the real network.
# All of them run in one pytest run in one namespace (a pytest start-up costs seconds); each test out
# here then reports its own result from in there.


@pytest.fixture(scope="session")
def public_network_results(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Run every selected test that takes `public_network` in one namespace: node id -> "" (passed),
    "skipped: ..." or the failure as pytest printed it."""
    require(shutil.which("unshare") is not None and shutil.which("ip") is not None, "needs unshare and ip")
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True, timeout=30)
    require(probe.returncode == 0, f"cannot make a network namespace ({probe.stderr.strip()})")
    ids = [item.nodeid for item in request.session.items if "public_network" in getattr(item, "fixturenames", ())]
    work = tmp_path_factory.mktemp("netns")
    setup = f'ip link set lo up && ip addr add {PUBLIC}/32 dev lo && exec "$@"'
    pytest_args = ["-q", "-p", "no:cacheprovider", f"--basetemp={work / 'tmp'}", f"--junitxml={work / 'junit.xml'}"]
    run = subprocess.run(
        ["unshare", "-rn", "sh", "-c", setup, "sh", sys.executable, "-m", "pytest", *pytest_args, *ids],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, NETNS: "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    results = {}
    if (work / "junit.xml").exists():
        for case in ElementTree.parse(work / "junit.xml").iter("testcase"):
            nodeid = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
            results[nodeid] = ""
            for outcome in case:
                if outcome.tag in ("failure", "error"):
                    results[nodeid] = outcome.text or outcome.get("message") or outcome.tag
                elif outcome.tag == "skipped":
                    results[nodeid] = f"skipped: {outcome.get('message')}"
    missing = [nodeid for nodeid in ids if nodeid not in results]
    assert not missing, f"{missing} did not run in the namespace:\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
    return results


@pytest.fixture
def public_network(request: pytest.FixtureRequest) -> Callable[[], bool]:
    """`public_network()`: True inside the namespace (the test goes on there); outside, the test's
    result from in there (a failure fails it here), then False: the caller returns."""

    def inside() -> bool:
        if os.environ.get(NETNS):
            return True
        result = request.getfixturevalue("public_network_results")[request.node.nodeid]
        if result.startswith("skipped: "):
            pytest.skip(result.removeprefix("skipped: "))
        assert result == "", f"in the network namespace:\n{result}"
        return False

    return inside


@contextlib.contextmanager
def public_and_loopback(tmp_path: Path, scheme: str) -> Iterator[tuple[ScriptedOrigin, ScriptedOrigin, httpx.Client]]:
    """Two origins on one port: the public host REBIND is meant to name (on PUBLIC), and a service on
    127.0.0.1 that only this machine should reach, serving another PNG; a client that trusts their
    certificate (for REBIND only) over https."""
    server_tls: ssl.SSLContext | None = None
    client_tls: ssl.SSLContext | None = None
    if scheme == "https":
        require(shutil.which("openssl") is not None, "needs the openssl CLI to make a test certificate")
        server_tls, client_tls = self_signed(tmp_path, REBIND)
    with (
        serve(make_png(seed=1), server_tls) as internal,
        serve(tls=server_tls, host=PUBLIC, port=internal.port) as public,
        make_client(SETTINGS, verify=client_tls) as http,
    ):
        yield public, internal, http


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_dns_rebinding_fetches_from_the_address_that_was_checked(public_network, tmp_path, monkeypatch, scheme) -> None:
    """The DNS answers PUBLIC to the stage's one query: the icon comes from the public host (by name:
    Host, SNI and certificate), never from the 127.0.0.1 service a second query would have named."""
    if not public_network():
        return
    dns = RebindingDNS(monkeypatch)
    with public_and_loopback(tmp_path, scheme) as (public, internal, http):
        icon = spec(public.url("/ok.png", host=REBIND))
        [source] = fetch_sources([icon], {icon.name: None}, http, PRIVATE_OFF, resolve=dns.resolve)
        assert internal.requests() == [], "the 127.0.0.1 service was asked"
        assert (source.origin, source.data) == (Origin.DOWNLOADED, public.png), source.reason
        assert [(r.path, r.headers["host"]) for r in public.requests()] == [("/ok.png", f"{REBIND}:{public.port}")]
        assert dns.queries == 1


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_dns_rebinding_on_a_redirect_hop_is_refused(public_network, tmp_path, monkeypatch, store, scheme) -> None:
    """The public host redirects to itself by name, and the DNS now answers 127.0.0.1: the hop is
    refused, naming its URL and the address, before anything is sent to 127.0.0.1."""
    if not public_network():
        return
    dns = RebindingDNS(monkeypatch)
    with public_and_loopback(tmp_path, scheme) as (public, internal, http):
        icon = spec(public.url("/redirect-to", host=REBIND) + "?to=/ok.png")
        seed(store, icon)
        [source] = fetch_sources([icon], copies(store, [icon]), http, PRIVATE_OFF, resolve=dns.resolve)
        hop = public.url("/ok.png", host=REBIND)
        assert internal.requests() == [], "the 127.0.0.1 service was asked"
        assert (source.origin, source.data) == (Origin.STALE, OLD_PNG)
        assert source.reason == f"{hop} resolves to the non-public address 127.0.0.1; refused (allow_private is off)"
        assert [r.path for r in public.requests()] == ["/redirect-to"]
        assert dns.queries == 2


@pytest.mark.parametrize(
    "target",
    [
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "mailto:a@b.org",
        "http://[::1",
        "http://256.1.1.1/x.png",
    ],
)
def test_a_redirect_to_a_url_httpx_cannot_parse_is_a_stale_source_not_a_crash(origin, client, store, target) -> None:
    """Found by the soak: httpx raised InvalidURL (not an HTTPError) for a Location like these, which
    escaped the stage and failed the whole run; urljoin raises ValueError for some (an unclosed IPv6 bracket)
    and httpx InvalidURL for others (an IPv4 address out of range)."""
    icon = spec(origin.url("/redirect-to") + "?to=" + target)
    seed(store, icon)
    [source] = fetch_sources([icon], copies(store, [icon]), client, SETTINGS)
    assert source.origin is Origin.STALE and source.data == OLD_PNG
    assert source.reason.startswith(f"{icon.url} redirects to "), source.reason
    assert source.reason.endswith(("; refused", "; only http and https are followed")), source.reason


def test_progress_reports_each_source_as_it_finishes(origin, client, store) -> None:
    icons = [spec(origin.url("/ok.png"), f"Icon {n}") for n in range(5)]
    seen: list[tuple[str, int, int, str]] = []
    sources = fetch_sources(icons, copies(store, icons), client, SETTINGS, progress=lambda *call: seen.append(call))
    assert [s.spec for s in sources] == icons  # results stay in icon_map.yaml's order
    assert seen[0] == ("fetch", 0, 5, "")
    assert [(stage, done, total) for stage, done, total, _ in seen[1:]] == [("fetch", n, 5) for n in range(1, 6)]
    assert sorted(name for *_, name in seen[1:]) == sorted(icon.name for icon in icons)


# ---- the address URL, and a body read before the release --------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/a/b.png",
        "http://example.com?x=1",
        "HTTP://EXAMPLE.com:8080/a/../b/./c?",
        "https://[::1]:8443/%41%zz?a=%20 b",
        "https://example.com/a?b#c?d",
        "http://example.com:80/x",
        "https://example.com:80/x",
        "https://Bücher.example/ä?q=ü",
    ],
)
@pytest.mark.parametrize("address", ["10.0.0.1", "2001:db8::1"])
def test_the_address_url_is_httpxs_with_the_host_replaced(url: str, address: str) -> None:
    """The stage parses a request's URL once, with the address in it, and the name's parts once per origin:
    what goes out (scheme, host, port, path and query; Host and SNI) is what httpx makes of the URL itself."""
    name, rest = _split(url)
    target, at = httpx.URL(url), _at(name, address, rest)
    default = {"http": 80, "https": 443}[target.scheme]
    assert (at.scheme, at.host, at.port or default, at.raw_path) == (
        target.scheme,
        address,
        target.port or default,
        target.raw_path,
    )
    assert (name.host, name.port, name.netloc) == (
        target.raw_host.decode("ascii"),
        target.port or default,
        target.netloc.decode("ascii"),
    )


class _EmptyImage(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_an_empty_200_falls_back_like_any_bad_body(client, store) -> None:
    """A 200 with Content-Length: 0 is read by the stage (an empty body, not an image); releasing the
    response after that must not read it again (httpx raised StreamConsumed, out of the stage)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmptyImage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        icon = spec(f"http://127.0.0.1:{server.server_address[1]}/empty.png")
        seed(store, icon)
        [source] = fetch_sources([icon], copies(store, [icon]), client, SETTINGS)
    finally:
        server.shutdown()
        server.server_close()
    assert (source.origin, source.data) == (Origin.STALE, OLD_PNG)
    assert source.reason == f"{icon.url} sent 0 bytes that are not a PNG, JPEG, GIF, WebP or AVIF image"
