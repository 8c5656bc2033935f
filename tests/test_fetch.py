"""Stage 1 against a real HTTP server on 127.0.0.1 (tests/origin.py) through the production client."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from pipeline.errors import SourceError
from pipeline.fetch import IconStore, fetch_sources, make_client
from pipeline.model import EncodeSettings, FetchSettings, IconSpec, Origin, SourceIcon
from tests.origin import ScriptedOrigin, make_png, serve

TIMEOUT = 0.5
DEADLINE = 2.0
MAX_BYTES = 100_000
SETTINGS = FetchSettings(timeout=TIMEOUT, deadline=DEADLINE, max_bytes=MAX_BYTES, max_redirects=3, allow_private=True)
SLACK = 0.5  # scheduling margin on wall-time bounds
OLD_PNG = make_png(seed=99)  # the "last good copy" a failing source falls back to


@pytest.fixture
def origin() -> Iterator[ScriptedOrigin]:
    with serve() as server:
        yield server


@pytest.fixture
def client() -> Iterator[httpx.Client]:
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


def fetch_one(icon: IconSpec, store: IconStore, client: httpx.Client | None,
              settings: FetchSettings = SETTINGS) -> tuple[SourceIcon, float]:
    start = time.monotonic()
    sources = fetch_sources([icon], store, client, settings)
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
    assert (meta["url"], meta["etag"], meta["last_modified"], meta["ext"]) == (icon.url, origin.etag, origin.last_modified, "png")
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

# (path, a fragment the reason must contain, the most wall time the fetch may take)
FAILURES = [
    ("/404.png", "HTTP 404 from", TIMEOUT),
    ("/500.png", "HTTP 500 from", TIMEOUT),
    ("refused", "cannot connect to", TIMEOUT),
    ("/slow-headers", "no response from", TIMEOUT + SLACK),
    ("/drip", "still sending at the 2s fetch deadline", DEADLINE + TIMEOUT + SLACK),
    ("/drip-headers", "2s fetch deadline", DEADLINE + TIMEOUT + SLACK),
    ("/truncated.png", "incomplete body", TIMEOUT),
    ("/html", "answered 'text/html', not an image", TIMEOUT),
    ("/lying.png", "bytes that are not a PNG", TIMEOUT),
    ("/big-declared.png", "declares 50,000,000 bytes; the cap is 100,000", TIMEOUT / 2),  # no wait for the body
    ("/endless", "sent more than 100,000 bytes", TIMEOUT),
    ("/loop", "more than 3 redirects", TIMEOUT),
    ("/to-file", "redirects to a 'file' URL", TIMEOUT),
    ("/gzip.png", "sent Content-Encoding 'gzip'", TIMEOUT),
]


def failing_url(origin: ScriptedOrigin, path: str) -> str:
    return f"http://127.0.0.1:{closed_port()}/icon.png" if path == "refused" else origin.url(path)


@pytest.mark.parametrize(("path", "why", "limit"), FAILURES, ids=[f[0] for f in FAILURES])
def test_failing_source_with_a_good_copy_is_stale(origin, client, store, path, why, limit) -> None:
    icon = spec(failing_url(origin, path))
    seed(store, icon)
    source, elapsed = fetch_one(icon, store, client)
    assert (source.origin, source.data, source.etag) == (Origin.STALE, OLD_PNG, '"old"')
    assert icon.url in source.reason and why in source.reason
    assert elapsed <= limit + SLACK


@pytest.mark.parametrize(("path", "why", "limit"), FAILURES, ids=[f[0] for f in FAILURES])
def test_failing_source_without_a_copy_is_a_source_error(origin, client, store, path, why, limit) -> None:
    icon = spec(failing_url(origin, path))
    start = time.monotonic()
    with pytest.raises(SourceError) as raised:
        fetch_sources([icon], store, client, SETTINGS)
    assert time.monotonic() - start <= limit + SLACK
    [problem] = raised.value.problems
    assert problem.startswith("icon 'Polychrome': ") and icon.url in problem and why in problem
    assert "no earlier copy in icons/" in problem
    assert "Polychrome" in str(raised.value) and icon.url in str(raised.value)
    assert raised.value.exit_code == 69
    assert not store.directory.exists()  # nothing half-fetched was written


def test_slowloris_body_is_cut_at_the_deadline_not_before(origin, client, store) -> None:
    icon = spec(origin.url("/drip"))
    seed(store, icon)
    source, elapsed = fetch_one(icon, store, client)
    assert source.origin is Origin.STALE and "deadline" in source.reason
    assert DEADLINE - 0.1 <= elapsed <= DEADLINE + TIMEOUT + SLACK
    assert origin.client_left("/drip")


def test_slow_headers_time_out_at_the_read_timeout(origin, client, store) -> None:
    icon = spec(origin.url("/slow-headers"))
    seed(store, icon)
    source, elapsed = fetch_one(icon, store, client)
    assert source.origin is Origin.STALE and f"no response from {icon.url} within 0.5s" in source.reason
    assert TIMEOUT - 0.05 <= elapsed <= TIMEOUT + SLACK
    assert origin.count("/slow-headers") == 1  # a read timeout is not retried
    assert origin.client_left("/slow-headers")


def test_oversized_declaration_is_refused_before_the_body(origin, client, store) -> None:
    icon = spec(origin.url("/big-declared.png"))
    seed(store, icon)
    source, elapsed = fetch_one(icon, store, client)
    assert "declares 50,000,000 bytes" in source.reason
    assert elapsed < TIMEOUT / 2  # the server holds the body back: reading it would wait a whole timeout
    assert origin.client_left("/big-declared.png")


def test_endless_body_is_aborted_at_the_cap(origin, client, store) -> None:
    icon = spec(origin.url("/endless"))
    seed(store, icon)
    source, _ = fetch_one(icon, store, client)
    assert f"{icon.url} sent more than 100,000 bytes (fetch.max_bytes); aborted" == source.reason
    assert origin.client_left("/endless")  # the connection was dropped, not drained


def test_redirect_loop_stops_after_max_redirects(origin, client, store) -> None:
    icon = spec(origin.url("/loop"))
    seed(store, icon)
    source, _ = fetch_one(icon, store, client)
    assert source.reason == f"more than 3 redirects from {icon.url}"
    assert origin.count("/loop") == 3 + 1
    assert origin.count() == 4


def test_redirect_to_a_file_url_is_not_followed(origin, client, store) -> None:
    icon = spec(origin.url("/to-file"))
    seed(store, icon)
    source, _ = fetch_one(icon, store, client)
    assert source.reason == f"{icon.url} redirects to a 'file' URL; only http and https are followed"
    assert source.data == OLD_PNG
    assert origin.count() == 1


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
        fetch_sources([good, stale, missing], store, client, SETTINGS)
    assert raised.value.problems == (
        f"icon 'Missing': HTTP 404 from {missing.url}; there is no earlier copy in icons/ to fall back on",)
    seed(store, missing)
    sources = fetch_sources([good, stale, missing], store, client, SETTINGS)
    assert [(s.spec.name, s.origin) for s in sources] == [
        ("Good", Origin.DOWNLOADED), ("Stale", Origin.STALE), ("Missing", Origin.STALE)]
    assert origin.count("/ok.png") == 2 and origin.count("/500.png") == 2 and origin.count("/404.png") == 2


# ---- refusing before connecting, and offline ---------------------------------------------------------


def test_private_address_is_refused_before_any_request(origin, store) -> None:
    settings = replace(SETTINGS, allow_private=False)
    icon = spec(origin.url("/ok.png"))
    with make_client(settings) as http, pytest.raises(SourceError) as raised:
        fetch_sources([icon], store, http, settings)
    [problem] = raised.value.problems
    assert f"{icon.url} resolves to the non-public address 127.0.0.1; refused" in problem
    seed(store, icon)
    with make_client(settings) as http:
        source, _ = fetch_one(icon, store, http, settings)
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
        fetch_sources([present, absent], store, None, SETTINGS)
    assert raised.value.problems == (f"icon 'Absent': no copy in icons/ and --offline forbids fetching {absent.url}",)
    assert origin.count() == 0
