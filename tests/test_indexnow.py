"""IndexNow: only real page changes are announced, once, through a durable outbox; the fake
endpoint on 127.0.0.1 checks the body and verifies the key by fetching it through real nginx."""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageOps

from pipeline.indexnow import Outbox, ping
from pipeline.model import IndexNowSettings

from .conftest import local_server, run_cli
from .nginx import nginx_server  # noqa: F401  (fixture)

KEY = "test-key-0123456789"


@dataclass
class Endpoint:
    """Scripted IndexNow endpoint (and icon origin). `statuses` are answered first, in order;
    after that it answers as the protocol says after verifying the key at keyLocation."""

    icons: Path | None = None
    statuses: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    posts: list[dict] = field(default_factory=list)
    verified: list[bytes] = field(default_factory=list)
    base: str = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # the icon origin, with ETags
                path = endpoint.icons / self.path.rsplit("/", 1)[-1] if endpoint.icons else None
                if path is None or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", etag)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.posts.append(body)
                status, headers = endpoint.statuses.pop(0) if endpoint.statuses else (self.verify(body), {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def verify(self, body: dict) -> int:
                if set(body) != {"host", "key", "keyLocation", "urlList"} or not body["urlList"]:
                    return 400
                if any(not url.startswith(f"http://{body['host']}:") for url in body["urlList"]):
                    return 422
                served = httpx.get(body["keyLocation"], timeout=5)
                endpoint.verified.append(served.content)
                return 200 if served.status_code == 200 and served.content == body["key"].encode() else 403

        return Handler


def running(endpoint: Endpoint) -> AbstractContextManager[str]:
    """The endpoint on 127.0.0.1 for the block; yields its base URL."""
    return local_server(endpoint.handler())


def configure(site: Path, origin: str, base_url: str, key: str = KEY) -> None:
    """Point the site's icons at the local origin and IndexNow at the fake endpoint."""
    lines = []
    for line in (site / "icon_map.yaml").read_text().splitlines():
        if line.strip().startswith("url:"):
            line = line.split("url:")[0] + "url: " + origin + "/icons/" + line.rsplit("/", 1)[-1]
        lines.append(line)
    (site / "icon_map.yaml").write_text("\n".join(lines) + "\n")
    (site / "site.toml").write_text(
        f'[site]\nbase_url = "{base_url}"\n\n[fetch]\nallow_private = true\n\n'
        f'[indexnow]\nkey = "{key}"\nendpoint = "{origin}/indexnow"\n'
    )


@pytest.mark.nginx
def test_changed_pages_are_announced_once_and_the_key_is_verified_through_nginx(
    site: Path, tmp_path: Path, nginx_server
) -> None:  # noqa: F811
    assert run_cli(site, "build", "--offline").returncode == 0  # a live release for nginx to serve
    base = nginx_server(site)
    endpoint = Endpoint(icons=tmp_path / "origin")
    endpoint.icons.mkdir()
    with running(endpoint) as origin:
        _serve_current_icons(site, endpoint.icons)
        configure(site, origin, base)
        first = run_cli(site, "build")
        assert first.returncode == 0, first.stderr
        assert "indexnow  1 URL(s) sent, 0 queued" in first.stdout
        assert endpoint.posts == [
            {"host": "127.0.0.1", "key": KEY, "keyLocation": f"{base}/{KEY}.txt", "urlList": [f"{base}/"]}
        ]
        assert endpoint.verified == [KEY.encode()]  # fetched through nginx, byte-exact
        # Nothing changed: no switch, no ping (the sources answered 304).
        again = run_cli(site, "build")
        assert "nothing changed" in again.stdout and "11 not modified" in again.stdout
        assert len(endpoint.posts) == 1
        # An icon's bytes change but no page content does: a switch, no ping.
        icon = endpoint.icons / "1fa99.png"
        ImageOps.mirror(Image.open(icon)).save(icon)
        assets = run_cli(site, "build")
        assert "published r000003 (assets only" in assets.stdout and "1 downloaded" in assets.stdout
        assert len(endpoint.posts) == 1
        # A new code: exactly the home page, once.
        codes = site / "codes.yaml"
        codes.write_text(codes.read_text().replace("HDDTAPES", "HDDTAPES2"))
        content = run_cli(site, "build")
        assert "indexnow  1 URL(s) sent" in content.stdout
        assert [p["urlList"] for p in endpoint.posts] == [[f"{base}/"], [f"{base}/"]]
        # Offline runs never ping, even with a change.
        codes.write_text(codes.read_text().replace("HDDTAPES2", "HDDTAPES3"))
        offline = run_cli(site, "build", "--offline")
        assert "published" in offline.stdout and len(endpoint.posts) == 2


def _serve_current_icons(site: Path, target: Path) -> None:
    """Copy icons/<slug>.png to the origin under the source file name its URL ends with."""
    slug_by_line = {}
    current = None
    for line in (site / "icon_map.yaml").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            current = line.split(":")[0]
        elif "url:" in line and current:
            slug_by_line[line.rsplit("/", 1)[-1]] = current
    from pipeline.config import slugify

    for source_name, name in slug_by_line.items():
        (target / source_name).write_bytes((site / "icons" / f"{slugify(name)}.png").read_bytes())


@pytest.mark.nginx
def test_a_key_file_that_does_not_match_is_a_clear_403_and_urls_stay_queued(
    site: Path, tmp_path: Path, nginx_server
) -> None:  # noqa: F811
    """The endpoint fetches the key file through nginx; a BOM in front of the key fails the check."""
    (site / "site.toml").write_text(f'[indexnow]\nkey = "{KEY}"\n')
    assert run_cli(site, "build", "--offline").returncode == 0
    base = nginx_server(site)
    assert httpx.get(f"{base}/{KEY}.txt", timeout=5).content == KEY.encode()  # what every release serves
    key_file = site / "dist" / "current" / f"{KEY}.txt"
    key_file.unlink()  # doctor the live release: an editor saved the key file with a BOM
    key_file.write_bytes("\ufeff".encode() + KEY.encode())
    key_file.chmod(0o644)
    outbox = site / ".cache" / "indexnow.json"
    endpoint = Endpoint()
    with running(endpoint) as origin, httpx.Client() as client:
        settings = IndexNowSettings(KEY, f"{origin}/indexnow", 5)
        result = ping(outbox, {f"{base}/": "h1"}, base, settings, client, now=1000.0)
    assert endpoint.verified == ["\ufeff".encode() + KEY.encode()]  # it did fetch the file through nginx
    assert "refused the ping with 403: the key was not verified" in result.problem
    assert Outbox.load(outbox).pending == {f"{base}/": "h1"}


def test_outbox_backs_off_on_429_and_never_resends_unchanged(tmp_path: Path) -> None:
    outbox = tmp_path / "indexnow.json"
    endpoint = Endpoint(statuses=[(429, {"Retry-After": "999999"}), (202, {}), (200, {})])
    with running(endpoint) as origin, httpx.Client() as client:
        settings = IndexNowSettings(KEY, f"{origin}/indexnow", 5)
        base = "https://codes.example.org"
        first = ping(outbox, {f"{base}/": "v1"}, base, settings, client, now=1000.0)
        assert first.sent == () and first.pending == 1 and "429" in first.problem
        assert Outbox.load(outbox).retry_after == 1000.0 + 3600  # Retry-After capped at an hour
        waiting = ping(outbox, {}, base, settings, client, now=2000.0)
        assert len(endpoint.posts) == 1 and "stay queued" in waiting.problem
        later = ping(outbox, {}, base, settings, client, now=1000.0 + 3601)
        assert later.sent == (f"{base}/",) and later.pending == 0
        same = ping(outbox, {f"{base}/": "v1"}, base, settings, client, now=5000.0)
        assert same.sent == () and len(endpoint.posts) == 2  # same content: never sent twice
        changed = ping(outbox, {f"{base}/": "v2"}, base, settings, client, now=5001.0)
        assert changed.sent == (f"{base}/",) and len(endpoint.posts) == 3


def test_a_backoff_set_by_a_clock_far_ahead_does_not_lock_out(tmp_path: Path) -> None:
    outbox = tmp_path / "indexnow.json"
    Outbox({"https://x.org/": "v1"}, {}, retry_after=1000.0 + 365 * 86400).save(outbox)  # clock was a year ahead
    endpoint = Endpoint(statuses=[(200, {})])
    with running(endpoint) as origin, httpx.Client() as client:
        result = ping(outbox, {}, "https://x.org", IndexNowSettings(KEY, f"{origin}/indexnow", 5), client, now=1000.0)
    assert result.sent == ("https://x.org/",) and len(endpoint.posts) == 1


@pytest.mark.parametrize("status", [400, 403, 422, 500])
def test_refusals_keep_the_urls_and_say_why(tmp_path: Path, status: int) -> None:
    outbox = tmp_path / "indexnow.json"
    with running(Endpoint(statuses=[(status, {})])) as origin, httpx.Client() as client:
        result = ping(
            outbox,
            {"https://x.org/": "v1"},
            "https://x.org",
            IndexNowSettings(KEY, f"{origin}/indexnow", 5),
            client,
            now=1000.0,
        )
    assert result.sent == () and result.pending == 1 and str(status) in result.problem
    assert Outbox.load(outbox).pending == {"https://x.org/": "v1"}


def test_more_than_10000_urls_are_batched(tmp_path: Path) -> None:
    endpoint = Endpoint(statuses=[(200, {}), (200, {})])
    urls = {f"https://x.org/p{i}.html": "v" for i in range(10_001)}
    with running(endpoint) as origin, httpx.Client() as client:
        result = ping(
            tmp_path / "o.json", urls, "https://x.org", IndexNowSettings(KEY, f"{origin}/indexnow", 5), client, now=1.0
        )
    assert [len(p["urlList"]) for p in endpoint.posts] == [10_000, 1]
    assert len(result.sent) == 10_001 and result.pending == 0


def test_a_failure_after_the_switch_is_a_warning_and_the_run_says_it_published(site: Path, tmp_path: Path) -> None:
    """The outbox is unreadable only once `current` has moved: the run has published, so it says
    `published rNNNNNN`, exits 0 and reports the problem as a warning (it used to exit 78 with
    "nothing was built")."""
    endpoint = Endpoint(icons=tmp_path / "origin")
    endpoint.icons.mkdir()
    with running(endpoint) as origin:
        _serve_current_icons(site, endpoint.icons)
        configure(site, origin, "http://127.0.0.1:9")
        outbox = site / ".cache" / "indexnow.json"
        outbox.parent.mkdir(parents=True, exist_ok=True)
        outbox.write_text("{not json")
        result = run_cli(site, "build")
    assert result.returncode == 0, result.stderr
    assert "published r000001" in result.stdout
    live = os.readlink(site / "dist" / "current")
    assert live.endswith("r000001")
    assert "pipeline: warning: r000001 is live, but telling search engines failed" in result.stderr
    assert "IndexNow outbox is damaged" in result.stderr and "Traceback" not in result.stderr
    assert endpoint.posts == []
