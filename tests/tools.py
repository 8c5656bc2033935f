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
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from pipeline.gate import urls_in

from .conftest import REPO, copy_default_site, run_cli

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


# ---- processes ---------------------------------------------------------------------------------


def stop_process(*processes: subprocess.Popen | tuple[int, str], group: bool = False, timeout: float = 5.0) -> None:
    """Stop processes a test started: SIGTERM, a wait of at most `timeout` for all of them together,
    SIGKILL to any still running, then reap (each reap bounded by `timeout` too). Never waits
    unboundedly; one that has already ended is left alone.

    Each is a Popen (a child of this process) or a (pid, cmdline) pair for one the test started
    indirectly (a builder's encode worker, a daemon's run), which is only signalled while /proc
    still shows that pid running with that command line, so never a reused pid.

    With `group` (each Popen was started with start_new_session, so it leads its own group) both
    signals go to that group, so a helper it forked does not outlive it, and the leader is reaped
    only after the SIGKILL: until then its PID, and so the group ID, cannot be reused. A leader
    already reaped (a poll() collected it) has its group signalled only while a member of the group
    still runs (which also keeps the group ID from being reused), e.g. nginx workers that outlived
    their master."""
    popens = [p for p in processes if isinstance(p, subprocess.Popen)]
    others = [p for p in processes if not isinstance(p, subprocess.Popen)]

    def leader_running(process: subprocess.Popen) -> bool:
        return process.returncode is None and not has_exited(process.pid)

    def signal_all(number: int) -> None:
        for process in popens:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if not group:
                    if leader_running(process):
                        os.kill(process.pid, number)
                elif process.returncode is None or group_members(process.pid):  # the group ID is still ours
                    os.killpg(process.pid, number)
        for pid, cmdline in others:
            if still_running(pid, cmdline):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, number)

    def any_running() -> bool:
        return (
            any(leader_running(p) for p in popens)
            or (group and any(p.returncode is not None and group_members(p.pid) for p in popens))
            or any(still_running(pid, cmdline) for pid, cmdline in others)
        )

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    signal_all(signal.SIGKILL)
    for process in popens:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)


def has_exited(pid: int) -> bool:
    """Whether the child `pid` has exited, without reaping it (it stays a zombie)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def proc_info(pid: int) -> tuple[int, int, str] | None:
    """(ppid, process group, cmdline) of a live process, None if it is gone (or a zombie: it has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    state, ppid, group = stat.rsplit(")", 1)[1].split()[:3]
    return None if state in "ZX" else (int(ppid), int(group), cmdline)


def processes() -> dict[int, tuple[int, int, str]]:
    """Every live process: pid -> (ppid, process group, cmdline)."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (info := proc_info(int(name))):
            table[int(name)] = info
    return table


def still_running(pid: int, cmdline: str) -> bool:
    """`pid` is live and still has `cmdline` (the same command line: not a reused pid)."""
    info = proc_info(pid)
    return info is not None and info[2] == cmdline


def group_members(group: int) -> list[int]:
    """The live processes of a process group."""
    return [pid for pid, (_ppid, pgid, _cmd) in processes().items() if pgid == group]
