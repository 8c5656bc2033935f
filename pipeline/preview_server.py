"""The preview's HTTP side: what `pipeline serve` (serve.py) answers on 127.0.0.1.

It serves the files of the live preview release (.cache/preview/dist/current) and nothing else,
and knows nothing of builds: serve.py's loop tells it the live release and the last error
(`State.update`), and it hands them to the open tabs. Kept apart so the loop (rebuilds, the
watcher, the locks, signals) and the server each read on their own; only the standard library.

Pages are served with one tag added before </body>, `<script src="/__pipeline/reload.js"
data-release="rNNNNNN">`: an external script (a strict `script-src 'self'` allows it; nothing
inline), added as the page is served, so no file on disk carries it. The script listens on
/__pipeline/events (Server-Sent Events: the live release and the last error). A tab reloads when
the live release is not the one its page came from; while the last rebuild failed it draws the
error over the last good page (as text), and removes it once a rebuild succeeds.
"""

from __future__ import annotations

import html
import json
import logging
import mimetypes
import os
import socketserver
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

KEEPALIVE = 15.0  # seconds between SSE comments on an idle stream (a closed tab is noticed then)
PREFIX = "/__pipeline/"
IMMUTABLE = "public, max-age=31536000, immutable"  # as nginx serves assets/: their names change with them
SCRIPT_TAG = '<script src="/__pipeline/reload.js" data-release="{release}"></script>'
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".xml": "application/xml",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".avif": "image/avif",
    ".webp": "image/webp",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


class State:
    """The live preview release and the last rebuild's error, as the pages' script hears them,
    and when that last changed (wall-clock seconds: what a test compares a reload with)."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.release = ""
        self.error = ""
        self.since = time.time()
        self.version = 0
        self.closing = False

    def update(self, release: str, error: str) -> None:
        with self.changed:
            if (release, error) != (self.release, self.error):
                self.release, self.error, self.since = release, error, time.time()
                self.version += 1
                self.changed.notify_all()

    def close(self) -> None:
        with self.changed:
            self.closing = True
            self.changed.notify_all()

    def after(self, version: int, timeout: float) -> tuple[int, str]:
        """(version, JSON) once the version is not `version` (or after `timeout`)."""
        with self.changed:
            self.changed.wait_for(lambda: self.version != version or self.closing, timeout)
            return self.version, self.json()

    def json(self) -> str:
        with self.changed:
            return json.dumps({"release": self.release, "error": self.error or None, "since": self.since})


class PreviewServer(ThreadingHTTPServer):
    """The files of the live release under `dist` (its `current` link), read afresh on every request, and
    the `state` the loop updates."""

    daemon_threads = True  # an open event stream never holds up the stop

    def __init__(self, address: tuple[str, int], dist: Path) -> None:
        self.dist = dist
        self.state = State()
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # without HTTPServer's getfqdn(): a DNS lookup
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: object, client_address: object) -> None:
        log.debug("request from %s failed", client_address, exc_info=True)

    def live(self) -> tuple[str, Path | None]:
        """The live preview release: its name and folder (None before the first good build)."""
        try:
            target = os.readlink(self.dist / "current")
        except OSError:
            return "", None
        return PurePosixPath(target).name, self.dist / target


class Handler(BaseHTTPRequestHandler):
    server: PreviewServer
    server_version = "pipeline-serve"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _answer(self, body: bool) -> None:
        path = urlsplit(self.path).path
        if path == PREFIX + "reload.js":
            self._send(HTTPStatus.OK, TYPES[".js"], RELOAD_JS.encode(), body)
        elif path == PREFIX + "status":
            self._send(HTTPStatus.OK, TYPES[".json"], self.server.state.json().encode(), body)
        elif path == PREFIX + "events":
            self._events() if body else self._send(HTTPStatus.OK, "text/event-stream", b"", body)
        else:
            self._file(path, body)

    def _file(self, path: str, body: bool) -> None:
        release, folder = self.server.live()
        if folder is None:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, TYPES[".html"], _no_preview(self.server.state.error), body)
            return
        parts = unquote(path).split("/")
        if any(part == ".." or "\0" in part or "\\" in part for part in parts):
            self._send(HTTPStatus.BAD_REQUEST, TYPES[".txt"], b"bad path\n", body)
            return
        target = folder.joinpath(*(part for part in parts if part not in ("", ".")))
        if target.is_dir():
            if not path.endswith("/"):
                self.send_response(HTTPStatus.MOVED_PERMANENTLY)
                self.send_header("Location", path + "/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            target = target / "index.html"
        status = HTTPStatus.OK
        if not _file_inside(target, folder):
            status, target = HTTPStatus.NOT_FOUND, folder / "404.html"
            if not target.is_file():
                self._send(status, TYPES[".txt"], b"not found\n", body)
                return
        try:
            data = target.read_bytes()
        except OSError:  # the release was collected between the lookup and the read
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, TYPES[".txt"], b"rebuilding; reload\n", body)
            return
        kind = TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".html":
            data = inject(data, release)
        hashed = status == HTTPStatus.OK and path.startswith("/assets/")  # fingerprinted: a reload keeps them
        self._send(status, kind, data, body, IMMUTABLE if hashed else "no-store")

    def _events(self) -> None:
        """Server-Sent Events: the state now, then each change, until the tab or the server goes."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        state, version = self.server.state, -1
        try:
            self.wfile.write(b"retry: 500\n\n")
            while True:
                seen, data = state.after(version, KEEPALIVE)
                if state.closing:
                    return
                if seen == version:
                    self.wfile.write(b": idle\n\n")
                else:
                    self.wfile.write(f"data: {data}\n\n".encode())
                version = seen
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return

    def _send(self, status: HTTPStatus, kind: str, data: bytes, body: bool, cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        if body:
            self.wfile.write(data)


def _file_inside(target: Path, folder: Path) -> bool:
    try:
        return target.is_file() and target.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def inject(page: bytes, release: str) -> bytes:
    """The page with the reload script's tag before its last </body> (at the end if it has none)."""
    tag = SCRIPT_TAG.format(release=html.escape(release)).encode()
    at = page.lower().rfind(b"</body>")
    return page + tag if at < 0 else page[:at] + tag + page[at:]


def _no_preview(error: str) -> bytes:
    text = html.escape(error or "the first build is still running")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>pipeline serve: no preview yet</title>'
        "</head><body><h1>No preview yet</h1><p>The page reloads by itself after the first good build.</p>"
        f"<pre>{text}</pre>{SCRIPT_TAG.format(release='')}</body></html>"
    ).encode()


RELOAD_JS = """\
// pipeline serve: reload this preview after a good rebuild; draw a failed one over the page.
(() => {
  "use strict";
  const script = document.currentScript;
  const release = (script && script.dataset.release) || "";
  const id = "__pipeline-overlay";

  function hide() {
    const box = document.getElementById(id);
    if (box) box.remove();
  }

  function show(error) {
    let box = document.getElementById(id);
    if (!box) {
      box = document.createElement("div");
      box.id = id;
      box.setAttribute("role", "alert");
      Object.assign(box.style, {
        position: "fixed", top: "0", left: "0", right: "0", zIndex: "2147483647", maxHeight: "60vh",
        overflow: "auto", margin: "0", padding: "12px 16px", background: "#3d0b0b", color: "#fff",
        font: "14px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace",
        borderBottom: "3px solid #e5484d", boxShadow: "0 2px 12px rgba(0, 0, 0, 0.5)", textAlign: "left",
      });
      const title = document.createElement("strong");
      title.textContent = "pipeline serve: the rebuild failed; below is the last good preview";
      const text = document.createElement("pre");
      Object.assign(text.style, { margin: "8px 0 0", whiteSpace: "pre-wrap", font: "inherit", color: "inherit" });
      box.append(title, text);
      (document.body || document.documentElement).append(box);
    }
    box.querySelector("pre").textContent = error;
  }

  const events = new EventSource("/__pipeline/events");
  events.onmessage = (event) => {
    const state = JSON.parse(event.data);
    if (state.release && state.release !== release) {
      events.close();
      location.reload();
      return;
    }
    if (state.error) show(state.error);
    else hide();
  };
})();
"""
