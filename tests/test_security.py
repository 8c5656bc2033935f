"""Security headers and the Content-Security-Policy: deploy/nginx.conf served by the real nginx
(tests/nginx.py) over the built default site, and the page in headless Chromium with the policy
enforced.

  headers  every response (pages, assets, 304s, a redirect, every kind of error, in each
           encoding) carries X-Content-Type-Options, Referrer-Policy, Content-Security-Policy and
           Permissions-Policy exactly once, with the values below; every config block that adds a
           header repeats all four (nginx drops the server's add_headers in such a block).
  policy   default-src 'self', no 'unsafe-inline'/'unsafe-eval', no hash or nonce (a static header
           cannot follow releases), frame-ancestors 'none'; nothing granted by Permissions-Policy
           but clipboard-write to the site itself (the Copy buttons).
  pages    each page repeats the policy (minus frame-ancestors) in a <meta http-equiv>, before
           anything it governs, and holds no inline code: its scripts are fingerprinted files
           with SRI, ICON_MAP a JSON data block.
  browser  Chromium loads / and the 404 page through nginx: no `securitypolicyviolation` event,
           no console error; ICON_MAP is the constant page scripts see; a Copy button puts its
           code on the clipboard. An injected inline script is refused, so the listeners are live.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from pipeline.render import CONTENT_SECURITY_POLICY

from .nginx import SHIPPED_CONF, require_nginx, served_site
from .test_browser import launched_chromium
from .tools import MISSING_PAGE, built_default_site, html_pages

TIMEOUT = 5.0
TIMEOUT_MS = 10_000

HEADER_POLICY = CONTENT_SECURITY_POLICY + "; frame-ancestors 'none'"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "strict-origin-when-cross-origin",
    "content-security-policy": HEADER_POLICY,
}  # + permissions-policy, checked for its meaning in test_the_policies_grant_nothing_they_need_not
MUST_DENY = ("camera", "microphone", "geolocation", "payment", "usb", "clipboard-read")
GRANTED = {"clipboard-write": "(self)"}  # what the Copy buttons need, and only for the site itself


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]  # every header line, in order, names lower-cased
    body: bytes

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def one(self, name: str) -> str | None:
        values = self.all(name)
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None


def request(base: str, path: str, method: str = "GET", **headers: str) -> Reply:
    """One request, sent as written (no normalisation, no redirects, no decompression)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name.replace("_", "-"), value)
        conn.endheaders()
        response = conn.getresponse()
        return Reply(response.status, [(k.lower(), v) for k, v in response.getheaders()], response.read())
    finally:
        conn.close()


def directives(policy: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in policy.split(";"))):
        name, *values = part.split()
        assert name.lower() not in out, f"{name} twice in {policy!r}"
        out[name.lower()] = values
    return out


def permissions(header: str) -> dict[str, str]:
    """Permissions-Policy (a structured-field dictionary) -> feature: allowlist as written."""
    out = {}
    for member in filter(None, (m.strip() for m in header.split(","))):
        feature, _, allowlist = member.partition("=")
        assert feature not in out, f"{feature} twice in {header!r}"
        out[feature] = allowlist
    return out


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_site(warm_cache: Path) -> Iterator[Path]:
    with built_default_site(warm_cache, "test-security-") as root:
        yield root


@pytest.fixture(scope="module")
def release(built_site: Path) -> Path:
    return (built_site / "dist" / "current").resolve()


@pytest.fixture(scope="module")
def server(built_site: Path) -> Iterator[str]:
    require_nginx()
    with served_site(built_site) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched_chromium() as chromium:
        yield chromium


class Markup(HTMLParser):
    """Start tags (attributes decoded, in document order) and each <script>'s body."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._script: dict[str, str | None] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._script = dict(attrs)
            self.scripts.append((self._script, ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            attrs, body = self.scripts[-1]
            self.scripts[-1] = (attrs, body + data)


def asset(release: Path, url: str) -> bytes:
    return (release / url.lstrip("/")).read_bytes()


# ---- headers -------------------------------------------------------------------------------------


def check_security_headers(reply: Reply, label: str) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert reply.all(name) == [value], f"{label}: {name} is {reply.all(name)}, expected [{value!r}]"
    assert len(reply.all("permissions-policy")) == 1, f"{label}: permissions-policy {reply.all('permissions-policy')}"


@pytest.mark.nginx
def test_every_response_carries_the_security_headers(server: str, release: Path) -> None:
    """Pages, assets and errors alike, in every encoding: `always` everywhere, and every block
    that adds a header of its own repeats the four."""
    page = Markup((release / "index.html").read_text(encoding="utf-8"))
    named = {attrs.get("src") or attrs.get("href") for tag, attrs in page.tags if tag in ("script", "link", "img")}
    assets = sorted(url for url in named if url)
    assert any(u.endswith(".js") for u in assets) and any(u.endswith(".css") for u in assets), assets
    avif = "/assets/icons/probe.0123456789.avif"  # the default icons go as WebP: an AVIF in its own location
    (release / avif.lstrip("/")).write_bytes(b"\x00\x00\x00\x1cftypavif")
    (release / "guide").mkdir()  # a directory with an index.html: /guide redirects to /guide/
    (release / "guide" / "index.html").write_bytes(b"<!doctype html><title>guide</title>\n")
    (release / "link.txt").symlink_to("robots.txt")  # refused by disable_symlinks: 403
    try:
        cases: list[tuple[str, int]] = [(url, 200) for url in assets] + [
            ("/", 200),
            ("/index.html", 200),
            ("/codes.json", 200),
            ("/sitemap.xml", 200),
            ("/robots.txt", 200),
            ("/favicon.ico", 200),
            (avif, 200),
            ("/guide/", 200),
            ("/guide", 301),
            (MISSING_PAGE, 404),
            ("/assets/nope.0000000000.css", 404),
            ("/assets/", 404),
            ("/assets/icons/", 404),
            ("/404.html", 404),
            ("/index.html.gz", 404),
            ("/index.html.br", 404),
            ("/manifest.json", 404),
            ("/.env", 404),
            ("/link.txt", 403),
            ("/../etc/passwd", 400),
        ]
        for path, status in cases:
            for accept in (None, "gzip", "br"):
                reply = request(server, path, **({"Accept_Encoding": accept} if accept else {}))
                label = f"{path} (Accept-Encoding: {accept})"
                assert reply.status == status, f"{label}: {reply.status}, expected {status}"
                check_security_headers(reply, label)
        for path in ("/", "/codes.json", assets[0]):  # a 304 too, which add_header without `always` skips
            for accept in (None, "br"):
                encoding = {"Accept_Encoding": accept} if accept else {}
                etag = request(server, path, **encoding).one("etag") or ""
                reply = request(server, path, If_None_Match=etag, **encoding)
                assert reply.status == 304, (path, accept, reply.status)
                check_security_headers(reply, f"{path} 304 (Accept-Encoding: {accept})")
        reply = request(server, "/", method="HEAD")
        assert reply.status == 200
        check_security_headers(reply, "HEAD /")
    finally:
        (release / avif.lstrip("/")).unlink()
        (release / "link.txt").unlink()
        (release / "guide" / "index.html").unlink()
        (release / "guide").rmdir()


def config_blocks(text: str) -> list[tuple[str, str]]:
    """(the block's head, the directives directly inside it) for the server block and every
    location in it. A small tokenizer: quoted strings (which hold `;`, `{` and `}`, as in
    "${var}") and comments are skipped as nginx skips them."""
    blocks: list[tuple[str, str]] = []
    stack: list[list[str]] = []  # per open block: its head, then its directives
    current = ""
    index = 0
    while index < len(text):
        char = text[index]
        if char in "\"'":
            end = index + 1
            while text[end] != char:
                end += 2 if text[end] == "\\" else 1
            current += text[index : end + 1]
            index = end + 1
            continue
        if char == "#":
            index = text.find("\n", index)
            index = len(text) if index < 0 else index
            continue
        if char == "{":
            stack.append([" ".join(current.split())])
            current = ""
        elif char == "}":
            head, *directives = stack.pop()
            blocks.append((head, "\n".join(directives)))
            current = ""
        elif char == ";":
            if stack:
                stack[-1].append(" ".join(current.split()) + ";")
            current = ""
        else:
            current += char
        index += 1
    assert not stack, "unbalanced braces"
    return [(head, body) for head, body in blocks if head.startswith(("server", "location"))]


@pytest.mark.nginx
def test_every_block_that_adds_a_header_repeats_the_security_headers() -> None:
    """nginx's add_header in a location replaces every inherited one: the config must repeat the
    four in each block with an add_header of its own (the check above tries one URL per block; this
    one also covers a block a future edit adds)."""
    blocks = config_blocks(SHIPPED_CONF.read_text(encoding="utf-8"))
    assert blocks and blocks[-1][0].startswith("server"), [head for head, _ in blocks]
    wanted = {"Content-Security-Policy", "Permissions-Policy", "Referrer-Policy", "X-Content-Type-Options"}
    for head, body in blocks:
        added = re.findall(r"\badd_header\s+(\S+)\s+(\"[^\"]*\"|\S+)(\s+always)?\s*;", body)
        if not added:
            continue
        security = {name: bool(always) for name, _value, always in added if name in wanted}
        assert security == dict.fromkeys(wanted, True), (
            f"`{head}` adds {[a[0] for a in added]}: each of {sorted(wanted)} must be there, with `always`"
        )


@pytest.mark.nginx
def test_the_policies_grant_nothing_they_need_not(server: str) -> None:
    reply = request(server, "/")
    policy = directives(reply.one("content-security-policy") or "")
    assert policy.get("default-src") == ["'self'"], policy
    for directive in ("script-src", "style-src", "img-src"):
        assert policy.get(directive) == ["'self'"], (directive, policy)
    for directive in ("object-src", "base-uri", "form-action", "frame-ancestors"):
        assert policy.get(directive) == ["'none'"], (directive, policy)
    sources = " ".join(value for values in policy.values() for value in values)
    for loophole in (
        "'unsafe-inline'",
        "'unsafe-eval'",
        "'unsafe-hashes'",
        "'nonce-",
        "'sha256-",
        "'sha384-",
        "'sha512-",
        "data:",
        "blob:",
        "*",
        "http:",
        "https:",
    ):
        assert loophole not in sources, (loophole, policy)

    granted = permissions(reply.one("permissions-policy") or "")
    for feature in MUST_DENY:
        assert granted.get(feature) == "()", (feature, granted)
    assert {f: a for f, a in granted.items() if a != "()"} == GRANTED, granted


# ---- the pages -----------------------------------------------------------------------------------


def test_every_page_carries_the_policy_in_a_meta_element(release: Path) -> None:
    pages = html_pages(release)
    assert {p.name for p in pages} >= {"index.html", "404.html"}
    assert "frame-ancestors" not in CONTENT_SECURITY_POLICY  # ignored in <meta>, with a console error
    for page in pages:
        markup = Markup(page.file.read_text(encoding="utf-8"))
        names = [tag for tag, _ in markup.tags]
        metas = [
            i
            for i, (tag, attrs) in enumerate(markup.tags)
            if tag == "meta" and (attrs.get("http-equiv") or "").lower() == "content-security-policy"
        ]
        assert len(metas) == 1, (page.name, metas)
        assert markup.tags[metas[0]][1].get("content") == CONTENT_SECURITY_POLICY, page.name
        governed = [i for i, tag in enumerate(names) if tag in ("link", "script", "style", "img", "body")]
        assert metas[0] < min(governed), f"{page.name}: the <meta> policy comes after what it should govern"


def test_pages_hold_no_inline_code(release: Path) -> None:
    """What the policy forbids is not in the pages: every executable script is a local file with
    its SRI (and no body), any other <script> a JSON data block; no <style>, style=, on*= or
    javascript: URL."""
    for page in html_pages(release):
        markup = Markup(page.file.read_text(encoding="utf-8"))
        for attrs, body in markup.scripts:
            kind = (attrs.get("type") or "").lower()
            if kind == "application/json":
                assert "src" not in attrs, page.name
                json.loads(body)
                continue
            assert kind in ("", "text/javascript"), (page.name, attrs)
            src = attrs.get("src") or ""
            assert src.startswith("/assets/") and src.endswith(".js"), (page.name, attrs)
            assert body.strip() == "", (page.name, attrs, body[:80])
            digest = base64.b64encode(hashlib.sha384(asset(release, src)).digest()).decode()
            assert attrs.get("integrity") == f"sha384-{digest}", (page.name, src)
        for tag, attrs in markup.tags:
            assert tag != "style", page.name
            for name, value in attrs.items():
                assert not name.startswith("on") and name != "style", (page.name, tag, name)
                assert not (value or "").strip().lower().startswith("javascript:"), (page.name, tag, name)
    index = Markup((release / "index.html").read_text(encoding="utf-8"))
    assert any(attrs.get("src") for attrs, _ in index.scripts), "the home page loads no script"
    assert any(attrs.get("id") == "icon-map" for attrs, _ in index.scripts), "the home page has no ICON_MAP data"


# ---- in the browser ------------------------------------------------------------------------------

# Added to every page before its own scripts run: every CSP violation the document reports.
VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", function (event) {
  window.__violations.push({directive: event.violatedDirective, blocked: event.blockedURI,
                            source: event.sourceFile, line: event.lineNumber, sample: event.sample});
});
"""
CLIPBOARD_PROBE = "/__test-clipboard-probe"  # answered by the test itself, without the site's Permissions-Policy


@dataclass
class Loaded:
    status: int | None
    console_errors: list[str]
    violations: list[dict[str, Any]]


def load(context: Any, url: str) -> tuple[Any, Loaded]:
    page = context.new_page()
    errors: list[str] = []
    page.on(
        "console",
        lambda message: (
            errors.append(f"console {message.type}: {message.text} ({(message.location or {}).get('url', '')})")
            if message.type in ("error", "warning")
            else None
        ),
    )
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    response = page.goto(url, wait_until="load", timeout=TIMEOUT_MS)
    page.wait_for_function("() => document.readyState === 'complete'", timeout=TIMEOUT_MS)
    return page, Loaded(response.status if response else None, errors, page.evaluate("() => window.__violations"))


@pytest.fixture
def context(browser: Any, server: str) -> Iterator[Any]:
    """A fresh context that enforces CSP (no bypass_csp), with clipboard access granted to the site."""
    context = browser.new_context(service_workers="block")
    try:
        context.set_default_timeout(TIMEOUT_MS)
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server)
        context.add_init_script(VIOLATIONS)
        yield context
    finally:
        context.close()


@pytest.mark.browser
@pytest.mark.nginx
def test_the_page_runs_under_its_policy_and_the_copy_button_works(context: Any, server: str) -> None:
    page, loaded = load(context, server + "/")
    assert loaded.status == 200
    assert loaded.violations == [], loaded.violations
    assert loaded.console_errors == [], "\n".join(loaded.console_errors)

    # ICON_MAP is the constant page scripts see, the data block the build wrote.
    data = json.loads(page.locator("script#icon-map").text_content() or "")
    assert data and page.evaluate("() => typeof ICON_MAP === 'undefined' ? null : ICON_MAP") == data
    reassign = "() => { try { ICON_MAP = {}; return 'reassigned'; } catch (e) { return e.name; } }"
    assert page.evaluate(reassign) == "TypeError"  # a constant

    # The Copy button: the label turns "Copied" and the code is on the clipboard.
    button = page.locator("button.copy").first
    code = button.get_attribute("data-code")
    assert code
    button.click()
    page.wait_for_function("() => document.querySelector('button.copy').textContent === 'Copied'", timeout=TIMEOUT_MS)
    # The site's own Permissions-Policy denies clipboard-read (it never reads the clipboard), so the
    # test reads it back from a page of the same origin that it answers itself.
    context.route(
        server + CLIPBOARD_PROBE,
        lambda route: route.fulfill(
            status=200, content_type="text/html", body="<!doctype html><title>clipboard probe</title>"
        ),
    )
    probe = context.new_page()
    probe.goto(server + CLIPBOARD_PROBE)
    probe.bring_to_front()
    assert probe.evaluate("() => navigator.clipboard.readText()") == code
    page.bring_to_front()
    refused = page.evaluate("() => navigator.clipboard.readText().then(() => 'read', e => e.name)")
    assert refused == "NotAllowedError", "the site's Permissions-Policy should deny clipboard-read"

    assert page.evaluate("() => window.__violations") == [], "the clicks broke the policy"


@pytest.mark.browser
@pytest.mark.nginx
def test_the_404_page_runs_under_its_policy(context: Any, server: str) -> None:
    page, loaded = load(context, server + MISSING_PAGE)
    assert loaded.status == 404
    assert loaded.violations == [], loaded.violations
    # Chromium reports the 404 of the document itself as a console error; nothing else may be one.
    others = [e for e in loaded.console_errors if "status of 404" not in e or MISSING_PAGE not in e]
    assert others == [], "\n".join(others)
    assert page.locator("h1").text_content() == "Page not found"


@pytest.mark.browser
@pytest.mark.nginx
def test_the_policy_is_enforced_so_the_checks_above_are_live(context: Any, server: str) -> None:
    """An inline script and an inline style added to the served page are refused and reported:
    a page with inline code would have failed the checks above."""
    page, loaded = load(context, server + "/")
    assert loaded.violations == []
    page.evaluate("""() => {
      const script = document.createElement("script");
      script.textContent = "window.__inlineRan = true;";
      document.body.append(script);
      const style = document.createElement("style");
      style.textContent = "body { background: red; }";
      document.head.append(style);
    }""")
    page.wait_for_function("() => window.__violations.length >= 2", timeout=TIMEOUT_MS)
    assert page.evaluate("() => window.__inlineRan === true") is False
    reported = {v["directive"] for v in page.evaluate("() => window.__violations")}
    assert {"script-src-elem", "style-src-elem"} <= reported, reported
