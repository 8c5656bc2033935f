"""`pipeline serve` end to end, with real parts: the CLI in a subprocess on a free loopback port
(--port 0), a copy of the default site with a warm encode cache, real inotify through watchfiles,
and Debian's headless Chromium (Playwright) with the page open while templates/index.html is
edited, broken and fixed. dist/ is built once beside the server (as the hourly refresh would,
proving serve does not hold the site's build lock) and must be byte-for-byte untouched after.

Figures (terminal summary): the edit-to-shown time of the reload, and the rebuild-to-reload
latency: from the moment serve reports the rebuild done (its log line, as read by this test) to
the reloaded page's navigation start (performance.timeOrigin), both on the same wall clock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from pipeline.lock import exclusive

from .conftest import REPO, copy_default_site, run_cli
from .test_browser import CHROMIUM, CHROMIUM_ARGS, require_chromium
from .tools import require, stop_process

READY = re.compile(r"at (http://127\.0\.0\.1:(\d+)/)")
REBUILT = re.compile(r"pipeline serve: rebuilt in ([\d.]+)s: previewing (r\d+)")
REBUILDS = re.compile(r"pipeline serve: (rebuilt in|rebuild failed)")
H1 = re.compile(r"<h1>.*?</h1>", re.S)
OVERLAY = "#__pipeline-overlay"
# When this page's navigation started (epoch ms), how (navigate/reload), and when it first showed
# content (ms after that start: first-contentful-paint, else DOMContentLoaded).
NAVIGATION = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const paint = performance.getEntriesByName("first-contentful-paint")[0];
  return [performance.timeOrigin, nav.type, paint ? paint.startTime : nav.domContentLoadedEventEnd];
}"""
RELOAD_BUDGET = 2.0  # seconds from the edit to the changed page on screen
STRICT_CSP = (
    "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'self'; script-src 'self'; "
    "style-src 'self'; img-src 'self'; object-src 'none'\">"
)
WAIT_MS = 10_000


class ServeLog:
    """Every line the server writes (stdout and stderr), stamped with when this test read it."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self.changed:
                self.lines.append((time.time(), line.rstrip("\n")))
                self.changed.notify_all()

    def since(self, start: float) -> list[tuple[float, str]]:
        with self.changed:
            return [(at, line) for at, line in self.lines if at >= start]

    def wait_for(self, pattern: re.Pattern[str], since: float, timeout: float) -> tuple[float, re.Match[str]]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for at, line in self.lines:
                    if at >= since and (found := pattern.search(line)):
                        return at, found
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"serve never logged {pattern.pattern!r}; it logged:\n{self.text()}", pytrace=False)
                self.changed.wait(left)

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under `folder` (symlinks not followed): link targets, file hashes, inodes, mtimes."""
    seen = {}
    for directory, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(directory, name)
            info = path.lstat()
            rel = path.relative_to(folder).as_posix()
            if stat.S_ISLNK(info.st_mode):
                seen[rel] = "-> " + os.readlink(path)
            elif stat.S_ISDIR(info.st_mode):
                seen[rel] = f"dir {info.st_mtime_ns}"
            else:
                seen[rel] = f"{hashlib.sha256(path.read_bytes()).hexdigest()} {info.st_ino} {info.st_mtime_ns}"
    return seen


def save(path: Path, text: str, atomic: bool = False) -> None:
    """As an editor saves: in place (truncate and write), or atomically (a new file renamed over)."""
    if atomic:
        fresh = path.with_name(path.name + ".new")
        fresh.write_text(text, encoding="utf-8")
        os.replace(fresh, path)
    else:
        path.write_text(text, encoding="utf-8")


def with_h1(template: str, h1: str) -> str:
    return H1.sub(lambda _: h1, template, count=1)


def test_a_preview_publishes_to_its_own_folder_only(tmp_path: Path) -> None:
    from pipeline import config
    from pipeline.serve import preview_of

    root = copy_default_site(tmp_path / "site")
    loaded = config.load_site(root)
    remote = dataclasses.replace(
        loaded, publish=dataclasses.replace(loaded.publish, target="s3://bucket/site", keep_releases=3)
    )
    preview = preview_of(remote)
    assert (preview.dist_dir, preview.cache_dir) == (root / ".cache/preview/dist", root / ".cache/preview")
    assert preview.publish.target == "" and preview.publish.keep_releases == 3
    assert (preview.root, preview.icons, preview.templates_dir) == (root, loaded.icons, root / "templates")


@pytest.mark.browser
def test_serve_reloads_on_edits_shows_errors_and_leaves_dist_alone(site: Path, tmp_path: Path, record_figure) -> None:
    require_chromium()
    require(importlib.util.find_spec("watchfiles") is not None, "watchfiles is missing (pip install -e '.[test]')")
    from playwright.sync_api import sync_playwright

    index = site / "templates" / "index.html"
    original = index.read_text(encoding="utf-8")
    found = H1.search(original)
    assert found, "templates/index.html has no <h1> to edit"
    h1_line = original.count("\n", 0, found.start()) + 1
    base = site / "templates" / "_base.html"
    if "Content-Security-Policy" not in base.read_text(encoding="utf-8"):  # the pages' own policy, if not yet there
        base.write_text(base.read_text(encoding="utf-8").replace("<head>", "<head>\n" + STRICT_CSP, 1))

    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--port", "0", "--site", str(site)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    log = ServeLog(process)
    try:
        _, ready = log.wait_for(READY, 0, timeout=60)
        url, port = ready.group(1), int(ready.group(2))

        # At once: the site's own build beside it (what the hourly refresh does), which must never
        # exit 75 because of serve, and makes the dist/ that must stay untouched from here on; a
        # second serve of the site (refused, 75); a serve of another folder on the taken port (69).
        (tmp_path / "elsewhere").mkdir()
        with ThreadPoolExecutor(3) as pool:
            beside = pool.submit(run_cli, site, "build", "--offline")
            second = pool.submit(run_cli, site, "serve", "--port", "0", timeout=30)
            taken = pool.submit(run_cli, tmp_path / "elsewhere", "serve", "--port", str(port), timeout=30)
        assert beside.result().returncode == 0, beside.result().stderr
        before = snapshot(site / "dist")
        assert second.result().returncode == 75, second.result().stderr
        assert "another pipeline serve" in second.result().stderr
        assert taken.result().returncode == 69 and f"127.0.0.1:{port}" in taken.result().stderr, taken.result().stderr

        with pytest.raises(OSError):  # 127.0.0.1 only: another loopback address is refused
            socket.create_connection(("127.0.0.2", port), timeout=2).close()
        with httpx.Client(base_url=url, timeout=5) as http:
            script = http.get("/__pipeline/reload.js")
            assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
            missing = http.get("/no-such-page")
            assert missing.status_code == 404 and b"/__pipeline/reload.js" in missing.content
            assert http.get("/%2e%2e/%2e%2e/etc/passwd").status_code == 400

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, timeout=30_000
            )
            try:
                page = browser.new_page()
                console: list[str] = []
                page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
                page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
                page.goto(url, wait_until="load", timeout=WAIT_MS)
                loaded_at, _, _ = page.evaluate(NAVIGATION)

                # 1. An edit while a refresh run holds the site's build lock: the open tab reloads by itself.
                with exclusive(site / ".cache" / "pipeline.lock"):
                    edited = with_h1(original, "<h1>Preview edit A</h1>")
                    started = time.time()
                    save(index, edited)
                    saved = time.time()
                    page.locator("h1", has_text="Preview edit A").wait_for(timeout=WAIT_MS)
                    seen = time.time()
                reloaded_at, kind, painted_after = page.evaluate(NAVIGATION)
                assert kind == "reload" and reloaded_at > loaded_at, "the page did not reload by itself"
                _, line = log.wait_for(REBUILT, started, timeout=5)
                rebuilt = httpx.get(url + "__pipeline/status", timeout=5).json()["since"]  # stamped by serve
                painted = (reloaded_at + painted_after) / 1000
                assert painted - saved < RELOAD_BUDGET, (
                    f"the edit showed {painted - saved:.2f}s after the save: rebuilt at +{rebuilt - saved:.2f}s, "
                    f"reload started at +{reloaded_at / 1000 - saved:.2f}s\n{log.text()}"
                )
                seconds = float(line.group(1))
                record_figure("serve: save -> rebuild starts (watch, debounce)", f"{rebuilt - seconds - saved:.2f} s")
                record_figure("serve: rebuild (edit of templates/index.html)", f"{seconds:.2f} s")
                record_figure("serve: rebuild done -> reload starts", f"{(reloaded_at / 1000 - rebuilt) * 1000:.0f} ms")
                record_figure("serve: reload starts -> changed page painted", f"{painted_after / 1000:.2f} s")
                record_figure("serve: edit saved -> changed page painted", f"{painted - saved:.2f} s")
                record_figure("serve: edit saved -> change seen by Playwright", f"{seen - saved:.2f} s")

                # 2. A broken template: the overlay names it, the last good page stays, no reload.
                started = time.time()
                save(index, with_h1(original, "<h1>{{ broken( }}</h1>"))
                overlay = page.locator(OVERLAY)
                overlay.wait_for(state="visible", timeout=WAIT_MS)
                message = page.locator(OVERLAY + " pre").text_content() or ""
                assert f"templates/index.html:{h1_line}" in message, message
                assert (overlay.bounding_box() or {}).get("height", 0) > 0
                assert page.locator("h1").first.text_content() == "Preview edit A"
                assert page.evaluate(NAVIGATION)[0] == reloaded_at, "a failed rebuild reloaded the page"
                log.wait_for(re.compile(re.escape(f"pipeline: error: {message}")), started, timeout=5)
                build = run_cli(site, "build", "--offline")  # the same message as `pipeline build` prints
                assert build.returncode == 65 and f"pipeline: error: {message}" in build.stderr, build.stderr

                # 3. Fixed (saved as vim does, by a rename): it recovers, and the overlay is gone.
                save(index, with_h1(original, "<h1>Preview edit B</h1>"), atomic=True)
                page.locator("h1", has_text="Preview edit B").wait_for(timeout=WAIT_MS)
                assert page.locator(OVERLAY).count() == 0

                # 4. A burst of saves is one rebuild.
                started = time.time()
                for n in range(5):
                    save(index, with_h1(original, f"<h1>Preview burst {n}</h1>"))
                page.locator("h1", has_text="Preview burst 4").wait_for(timeout=WAIT_MS)
                time.sleep(1.0)  # a second rebuild, had the burst been split, would have logged by now
                rebuilds = [line for _, line in log.since(started) if REBUILDS.search(line)]
                assert len(rebuilds) == 1, rebuilds

                assert not [m for m in console if "__pipeline" in m], console  # CSP let the script and stream in
            finally:
                browser.close()

        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=10) == 0, log.text()
        log.thread.join(5)
        assert "pipeline serve: stopped" in log.text()
    finally:
        stop_process(process, group=True, timeout=5)

    assert snapshot(site / "dist") == before, "dist/ changed while serve ran"
    assert b"__pipeline" not in (site / "dist" / "current" / "index.html").read_bytes()
    preview = site / ".cache" / "preview" / "dist" / "current" / "index.html"
    assert b"Preview burst 4" in preview.read_bytes() and b"__pipeline" not in preview.read_bytes()
