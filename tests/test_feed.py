"""The codes data from an http(s) feed: conditional, last good copy on failure, and a broken
feed keeps the last good site with a message that says why."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import yaml

from .conftest import local_server, run_cli
from .test_build import snapshot


class Feed:
    """A feed server: answers `body` with an ETag, honours If-None-Match, or fails with `status`."""

    def __init__(self, body: bytes) -> None:
        self.body, self.status, self.content_type = body, 200, "application/json"
        self.seen: list[dict[str, str]] = []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        feed = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                feed.seen.append(dict(self.headers))
                etag = '"' + hashlib.sha256(feed.body).hexdigest()[:12] + '"'
                if feed.status != 200:
                    self.send_response(feed.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", feed.content_type)
                    self.send_header("Content-Length", str(len(feed.body)))
                    self.send_header("ETag", etag)
                    self.end_headers()
                    self.wfile.write(feed.body)

        return Handler


@contextmanager
def serving(feed: Feed) -> Iterator[str]:
    with local_server(feed.handler()) as base:
        yield f"{base}/codes.json"


def codes_json(site: Path) -> bytes:
    data = yaml.safe_load((site / "codes.yaml").read_text())
    for code in data["codes"]:
        for key in ("added", "expires"):
            if key in code:
                code[key] = code[key].isoformat()
    return json.dumps(data, indent=1).encode()


def use_feed(site: Path, url: str) -> None:
    """Content from the feed. The icons point at a closed port on loopback (refused at once:
    each falls back to its copy in icons/), so nothing leaves the machine."""
    (site / "site.toml").write_text(f'[site]\ncontent = "{url}"\n\n[fetch]\nallow_private = true\ntimeout = 2.0\n')
    icon_map = site / "icon_map.yaml"
    icon_map.write_text(re.sub(r"https://cdn\.jsdelivr\.net/\S+", "http://127.0.0.1:9/icon.png", icon_map.read_text()))


def test_feed_drives_the_site_conditionally_and_survives_failures(site: Path) -> None:
    feed = Feed(codes_json(site))
    with serving(feed) as url:
        use_feed(site, url)
        first = run_cli(site, "build")
        assert first.returncode == 0, first.stderr
        assert "published r000001" in first.stdout
        assert "HDDTAPES" in (site / "dist/current/index.html").read_text()
        # Unchanged feed: a conditional request, 304, nothing changed.
        again = run_cli(site, "build")
        assert "nothing changed" in again.stdout
        assert feed.seen[-1].get("If-None-Match", "").startswith('"')
        # A new code in the feed is a page change.
        feed.body = feed.body.replace(b"HDDTAPES", b"FEEDCODE")
        changed = run_cli(site, "build")
        assert "published r000002" in changed.stdout and "FEEDCODE" in (site / "dist/current/index.html").read_text()
        before = snapshot(site / "dist")
        # The feed fails: its last good copy is used and the run says so; the site stays.
        feed.status = 500
        failed = run_cli(site, "build")
        assert failed.returncode == 0
        assert f"content feed is stale: HTTP 500 from {url}; using its last good copy" in failed.stderr
        assert "nothing changed" in failed.stdout
        # Bad JSON: no publish, and the message names the feed and the line.
        feed.status = 200
        feed.body = b'{"game": "G",\n "codes": [\n  {"code": "X",, }\n ]}'
        bad = run_cli(site, "build")
        assert bad.returncode == 78
        assert f"{url}:3: expected the node content, but found ','" in bad.stderr
        # Valid JSON, wrong shape.
        feed.body = json.dumps({"game": "G", "codes": [{"code": "X", "added": "yesterday", "rewards": []}]}).encode()
        shape = run_cli(site, "build")
        assert shape.returncode == 78
        assert f"{url}:1: `added:` must be a date" in shape.stderr
        # HTML instead of JSON (a soft 404): refused as the wrong type, last good copy used.
        feed.content_type = "text/html"
        soft = run_cli(site, "build")
        assert soft.returncode == 0 and "not JSON or YAML (a soft 404?)" in soft.stderr
        assert snapshot(site / "dist") == before


def test_feed_with_no_good_copy_ever_is_an_error(site: Path) -> None:
    feed = Feed(b"")
    feed.status = 404
    with serving(feed) as url:
        use_feed(site, url)
        result = run_cli(site, "build")
    assert result.returncode == 69
    assert f"content feed: HTTP 404 from {url}; there is no earlier copy to fall back on" in result.stderr
    assert not (site / "dist" / "current").exists()
