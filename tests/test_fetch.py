"""Stage 1 against a real HTTP server on 127.0.0.1 (tests/origin.py) through the production client."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from pipeline.errors import SourceError
from pipeline.fetch import fetch_sources, make_client
from pipeline.model import Stored
from pipeline.store import IconStore
from pipeline.model import EncodeSettings, FetchSettings, IconSpec, Origin, SourceIcon
from tests.origin import ScriptedOrigin, make_png, self_signed, serve
from tests.tools import require

TIMEOUT = 0.5
DEADLINE = 2.0
MAX_BYTES = 100_000
SETTINGS = FetchSettings(timeout=TIMEOUT, deadline=DEADLINE, max_bytes=MAX_BYTES, max_redirects=3, allow_private=True)
SHORT = replace(SETTINGS, deadline=1.0)  # for the extra deadline tests, to keep the file quick
SLACK = 0.5  # scheduling margin on wall-time bounds
OLD_PNG = make_png(seed=99)  # the "last good copy" a failing source falls back to


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


def fetch_one(icon: IconSpec, store: IconStore, client: httpx.Client | None,
              settings: FetchSettings = SETTINGS) -> tuple[SourceIcon, float]:
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
    Failure("/drip", "was still sending at the 2s fetch deadline", DEADLINE + TIMEOUT + SLACK,
            at_least=DEADLINE - 0.1, hung_up=True),
    Failure("/drip-headers", "had not answered at the 2s fetch deadline", DEADLINE + TIMEOUT + SLACK,
            at_least=DEADLINE - 0.1, hung_up=True),
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
    sources = fetch_sources([slow, next_in_line], copies(store, [slow, next_in_line]), client, replace(SHORT, concurrency=1))
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
    good, stale, missing = (spec(origin.url("/ok.png"), "Good"), spec(origin.url("/500.png"), "Stale"),
                            spec(origin.url("/404.png"), "Missing"))
    seed(store, stale)
    with pytest.raises(SourceError) as raised:
        fetch_sources([good, stale, missing], copies(store, [good, stale, missing]), client, SETTINGS)
    assert raised.value.problems == (
        f"icon 'Missing': HTTP 404 from {missing.url}; there is no earlier copy in icons/ to fall back on",)
    seed(store, missing)
    sources = fetch_sources([good, stale, missing], copies(store, [good, stale, missing]), client, SETTINGS)
    assert [(s.spec.name, s.origin) for s in sources] == [
        ("Good", Origin.DOWNLOADED), ("Stale", Origin.STALE), ("Missing", Origin.STALE)]
    assert origin.count("/ok.png") == 2 and origin.count("/500.png") == 2 and origin.count("/404.png") == 2


# ---- https --------------------------------------------------------------------------------------------


@pytest.fixture
def tls_origin(tmp_path: Path) -> Iterator[tuple[ScriptedOrigin, httpx.Client]]:
    """The origin over TLS, and a client that trusts its certificate (make_client trusts only real CAs)."""
    require(shutil.which("openssl") is not None, "needs the openssl CLI to make a test certificate")
    server_context, client_context = self_signed(tmp_path)
    transport = httpx.HTTPTransport(verify=client_context, retries=1)
    with serve(tls=server_context) as server, httpx.Client(trust_env=False, transport=transport) as http:
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


@pytest.mark.parametrize("target", ["http://127.0.0.2:9/x.png", "http://[::1]:9/x.png",
                                    "http://169.254.169.254/latest/meta-data", "http://localhost:9/x.png"])
def test_redirect_to_a_private_address_is_refused_before_connecting(origin, client, store, target) -> None:
    """Row 11: with allow_private off, each hop's host is resolved and checked before any packet.
    The origin itself stands for a public host here: the resolver seam says so, while the
    connection still goes to 127.0.0.1."""
    def resolve(host: str, port: int) -> list[str]:
        return ["8.8.8.8"] if host == "127.0.0.1" else [i[4][0] for i in socket.getaddrinfo(host, port)]

    icon = spec(origin.url("/redirect-to") + "?to=" + target)
    seed(store, icon)
    settings = replace(SETTINGS, allow_private=False)
    [source] = fetch_sources([icon], copies(store, [icon]), client, settings, resolve=resolve)
    assert source.origin is Origin.STALE
    assert "resolves to the non-public address" in source.reason and target in source.reason, source.reason
    assert [r.path for r in origin.requests()] == ["/redirect-to"], source.reason


def test_429_with_a_huge_retry_after_does_not_hold_the_run(origin, client, store) -> None:
    """Row 16: no waiting on Retry-After inside a build; the last good copy, and the next run asks again."""
    icon = spec(origin.url("/429.png"))
    seed(store, icon)
    source, elapsed = fetch_one(icon, store, client)
    assert source.origin is Origin.STALE and source.reason == f"HTTP 429 from {icon.url}"
    assert elapsed < 1.0
