"""Helpers shared by the tests (the one copy of each; tests/nginx.py and the test modules import them).

require(ok, reason)         skip when an outside tool (or root, or mounts) is missing, fail instead
                            when CI is set: the one skip helper for every external-tool check
built_default_site(cache)   the default site built once (offline, warm cache), outside pytest's tmp
html_pages(release)         every *.html of a release, with the URL nginx serves it at
img_srcs(html)              what each <img src> names, in document order (URLs from pipeline.gate.urls_in)
access_log(base)            nginx's access log for a server started by tests/nginx.py
stop_process(*processes)    the one process stopper: SIGTERM, bounded wait, SIGKILL (the process,
                            or the group it leads), for Popens and for (pid, cmdline) of processes
                            a test started indirectly
processes(), proc_info(pid), still_running(pid, cmdline)   what /proc says about processes
                            (these live in tests/processes.py, without pytest, for the benches)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from pipeline.gate import urls_in

from .conftest import REPO, copy_default_site, run_cli
from .processes import (  # noqa: F401 - moved to the pytest-free tests/processes.py; the tests import them from here
    group_members,
    has_exited,
    proc_info,
    processes,
    still_running,
    stop_process,
)

ARTIFACTS = REPO / "test-artifacts"
CI_NODE_MODULES = REPO / ".ci" / "node_modules"
MISSING_PAGE = "/no-such-page/for-the-404-check"  # how nginx serves 404.html: error_page 404


def require(ok: bool, reason: str) -> None:
    """Skip when a tool is missing (or root, or a working mount), except under CI (CI set), where
    it fails: a check must never drop out of CI silently because the image lacks a package."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def built_default_site(warm_cache: Path, prefix: str) -> Iterator[Path]:
    """A copy of the default site with the warm encode cache, built with `build --offline`.

    It lives in its own folder directly under the system temp dir, not under pytest's
    /tmp/pytest-of-USER, which every pytest session that starts on the machine chmods back to 0700
    (cutting the unprivileged nginx workers off mid-run); see test_browser.built_site."""
    holder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        root = copy_default_site(holder / "site")
        shutil.copytree(warm_cache, root / ".cache")
        result = run_cli(root, "build", "--offline")
        assert result.returncode == 0, f"build failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        yield root
    finally:
        shutil.rmtree(holder, ignore_errors=True)


@dataclass(frozen=True)
class Page:
    name: str  # its path inside the release, e.g. "index.html"
    file: Path
    url: str  # the path nginx serves it at
    status: int  # the status it is served with


def html_pages(release: Path) -> list[Page]:
    """Every HTML page of the release, each with the URL and status a visitor gets it with:
    index.html at its directory, 404.html as nginx's error_page for a missing URL (status 404),
    any other page at its own path."""
    pages = []
    for file in sorted(release.rglob("*.html")):
        relative = file.relative_to(release).as_posix()
        if relative == "404.html":
            pages.append(Page(relative, file, MISSING_PAGE, 404))
        elif file.name == "index.html":
            pages.append(Page(relative, file, "/" + relative[: -len("index.html")], 200))
        else:
            pages.append(Page(relative, file, "/" + relative, 200))
    return pages


class _ImgTags(HTMLParser):
    """How many non-empty src attributes each <img> has, in document order. Not a URL extractor
    (the URLs come from urls_in): it only lets img_srcs keep a None for an <img> without a src."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.src_counts: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.src_counts.append(sum(1 for key, value in attrs if key == "src" and value))


def img_srcs(html: str, page_url: str = "/") -> list[str | None]:
    """The path each <img src> names (resolved against the page URL), in document order; None
    for an <img> without a src. (An <img> naming src twice gives its last one, as this helper always
    did; the pages never do that.)"""
    tags = _ImgTags()
    tags.feed(html)
    tags.close()
    named = iter([url for tag, attribute, url in urls_in(html) if tag == "img" and attribute == "src"])
    srcs: list[str | None] = []
    for count in tags.src_counts:
        found = [next(named) for _ in range(count)]
        srcs.append(urlsplit(urljoin(page_url, found[-1])).path if found else None)
    return srcs


# ---- nginx's access log ------------------------------------------------------------------------

# The default `combined` format: addr - user [time] "request" status bytes "referer" "agent"
LOG_LINE = re.compile(r'^(\S+) \S+ \S+ \[[^\]]*\] "(\S+) (\S+)[^"]*" (\d{3}) (\d+|-) "[^"]*" "([^"]*)"')


@dataclass(frozen=True)
class Hit:
    method: str
    path: str
    status: int
    agent: str


def nginx_prefix(base: str) -> Path:
    """The private prefix of a server that tests/nginx.py started for `base`: the nginx-test-*
    temp dir whose server.conf listens on that port (served_site yields only the URL)."""
    port = urlsplit(base).port
    found = [
        conf
        for conf in Path(tempfile.gettempdir()).glob("nginx-test-*/server.conf")
        if re.search(rf"^\s*listen 127\.0\.0\.1:{port};", _read(conf), re.MULTILINE)
    ]
    assert found, f"no nginx-test-* prefix in {tempfile.gettempdir()} listens on {port}"
    # A dir left by a killed run could name the same port: the live one was written last.
    return max(found, key=lambda conf: conf.stat().st_mtime_ns).parent


def access_log(prefix: Path) -> list[Hit]:
    hits = []
    for line in _read(prefix / "access.log").splitlines():
        match = LOG_LINE.match(line)
        if match:
            hits.append(Hit(match.group(2), urlsplit(match.group(3)).path, int(match.group(4)), match.group(6)))
    return hits


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
