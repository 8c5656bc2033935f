"""A scripted origin server for the fetch tests: one path per way a source can behave or misbehave.

`serve()` runs a ThreadingHTTPServer on 127.0.0.1 (a free port) in a daemon thread, over TLS if given
an SSLContext, and records every request (path and headers) so a test can assert what the client
sent. Every sleep and loop in a handler is bounded and also ends on the stop event, and stop() shuts
the client sockets down, so the server stops at once even while /drip or /endless are mid-response.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import io
import ipaddress
import select
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from PIL import Image

LAST_MODIFIED = "Wed, 01 Jan 2025 00:00:00 GMT"
DRIP_INTERVAL = 0.3  # seconds between the bytes of /drip and /drip-headers
SLOW_HEADERS = 5.0  # /slow-headers waits this long (or until the client leaves) before answering
HOLD_LIMIT = 20.0  # no handler keeps a connection longer than this, whatever the client does
ENDLESS_CHUNK = 16 * 1024
STOP_TIMEOUT = 5.0  # stop() fails loudly if a handler thread outlives this


def self_signed(directory: Path, name: str = "127.0.0.1") -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A certificate for `name` (an IP address or a host name) made with the openssl CLI: (server context,
    client context trusting it)."""
    cert, key = directory / "origin.crt", directory / "origin.key"
    try:
        ipaddress.ip_address(name)
        subject_alt_name = f"IP:{name}"
    except ValueError:
        subject_alt_name = f"DNS:{name}"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName={subject_alt_name}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


def make_png(seed: int = 0, size: int = 16) -> bytes:
    """A real RGBA PNG (a gradient, shifted by seed) that stage 2 can decode."""
    image = Image.new("RGBA", (size, size))
    step = 255 // max(1, size - 1)
    image.putdata(
        [
            ((x * step + seed) % 256, (y * step) % 256, (x + y) * 7 % 256, 128 + (x * y) % 128)
            for y in range(size)
            for x in range(size)
        ]
    )
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@dataclass(frozen=True)
class Seen:
    """One request as the server read it; header names are lower-cased."""

    path: str
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, png: bytes, tls: ssl.SSLContext | None, address: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        super().__init__(address, _Handler)
        self.png = png
        self.tls = tls
        self.etag = f'"ok-{hashlib.sha256(png).hexdigest()[:16]}"'
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.rotations = 0
        self.client_left: dict[str, threading.Event] = {}
        self.handlers: list[threading.Thread] = []
        self.connections: list[socket.socket] = []

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        """As ThreadingMixIn does, but keep each thread and socket so stop() can end and join them."""
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address), daemon=True)
        with self.lock:
            self.handlers.append(thread)
            self.connections.append(request)
        thread.start()

    def finish_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        """The TLS handshake happens here, in the handler thread, bounded by the handler's socket timeout."""
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(_Handler.timeout)
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)
        except OSError:
            return  # the client gave up on (or failed) the handshake
        with self.lock:
            self.connections.append(wrapped)  # the plain socket is detached now; stop() shuts this one
        try:
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()  # socketserver closes only the plain socket it accepted

    def left(self, path: str) -> threading.Event:
        with self.lock:
            return self.client_left.setdefault(path, threading.Event())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked, as real origins do
    timeout = 2.0  # socket timeout: an idle keep-alive connection cannot hold a thread for long
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        with self.server.lock:
            self.server.seen.append(Seen(path, {k.lower(): v for k, v in self.headers.items()}))
        route = ROUTES.get(path)
        if route is None:
            self._send(404, b"no such scenario\n", {"Content-Type": "text/plain"})
        else:
            route(self)

    # ---- helpers ----

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 304:
            self.wfile.write(body)

    def _start_close_delimited(self, headers: dict[str, str]) -> None:
        """Headers for a body that ends when the connection does (no length, not chunked)."""
        self.close_connection = True
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()

    def _wait_for_client_to_leave(self, limit: float) -> bool:
        """Block until the client closes its end, the server stops or `limit` passes; True if the client left."""
        self.close_connection = True
        end = time.monotonic() + limit
        while not self.server.stop_event.is_set() and time.monotonic() < end:
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable:
                try:
                    if not self.connection.recv(4096):
                        return True
                except OSError:
                    return True
        return False

    def _drip(self, data: bytes, start: int = 0) -> None:
        """Send data (from `start`, cycling) a byte every DRIP_INTERVAL until the client leaves or the server stops."""
        self.close_connection = True
        for i in range(start, start + int(HOLD_LIMIT / DRIP_INTERVAL)):
            if self.server.stop_event.wait(DRIP_INTERVAL):
                return
            try:
                self.wfile.write(data[i % len(data) : i % len(data) + 1])
            except OSError:
                self.server.left(urlsplit(self.path).path).set()
                return

    # ---- scenarios ----

    def ok(self) -> None:
        """200 with validators; 304 when If-None-Match (else If-Modified-Since) matches."""
        validators = {"ETag": self.server.etag, "Last-Modified": LAST_MODIFIED, "Content-Type": "image/png"}
        if_none_match = self.headers.get("If-None-Match")
        if_modified_since = self.headers.get("If-Modified-Since")
        if if_none_match is not None:
            tags = [tag.strip() for tag in if_none_match.split(",")]
            fresh = self.server.etag in tags or "*" in tags
        elif if_modified_since is not None:
            since = email.utils.parsedate_to_datetime(if_modified_since)
            fresh = since >= email.utils.parsedate_to_datetime(LAST_MODIFIED)
        else:
            fresh = False
        if fresh:
            self._send(304, headers={"ETag": self.server.etag, "Last-Modified": LAST_MODIFIED})
        else:
            self._send(200, self.server.png, validators)

    def rotating_etag(self) -> None:
        """The same bytes every time, under a new ETag every time; validators are ignored."""
        with self.server.lock:
            self.server.rotations += 1
            tag = f'"rot-{self.server.rotations}"'
        self._send(200, self.server.png, {"ETag": tag, "Content-Type": "image/png"})

    def not_found(self) -> None:
        self._send(404, b"<h1>Not found</h1>", {"Content-Type": "text/html"})

    def server_error(self) -> None:
        self._send(500, b"Internal Server Error\n", {"Content-Type": "text/plain"})

    def slow_headers(self) -> None:
        """Read the request, say nothing for far longer than any test timeout, then answer (if anyone is left)."""
        if self._wait_for_client_to_leave(SLOW_HEADERS):
            self.server.left("/slow-headers").set()
        elif not self.server.stop_event.is_set():
            self._send(200, self.server.png, {"Content-Type": "image/png"})

    def drip(self) -> None:
        """A slowloris body: the PNG signature, then 1 byte every DRIP_INTERVAL, never a read timeout, never an end.

        The body ends when the connection does, so a client that took its own cut-off for the end
        would be left holding a truncated PNG that still sniffs as one.
        """
        self._start_close_delimited({"Content-Type": "image/png"})
        self.wfile.write(self.server.png[:8])
        self._drip(self.server.png, start=8)

    def drip_headers(self) -> None:
        """A slowloris status line and headers: the body never even starts."""
        self.close_connection = True
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Drip: ")
        self._drip(b"a")

    def truncated(self) -> None:
        """Declare the whole PNG and 1000 bytes more, send half of it, close."""
        self.close_connection = True
        png = self.server.png
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(png) + 1000))
        self.end_headers()
        self.wfile.write(png[: len(png) // 2])

    def html(self) -> None:
        """A soft 404: 200 and a friendly HTML page."""
        page = b"<!doctype html><title>Oops</title><p>This icon has moved."
        self._send(200, page, {"Content-Type": "text/html; charset=utf-8"})

    def lying(self) -> None:
        """Claims image/png, sends HTML."""
        self._send(200, b"<!doctype html><title>Oops</title><p>Not an image.", {"Content-Type": "image/png"})

    def big_declared(self) -> None:
        """Declare 50 MB, send the PNG signature, then hold the connection open."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "50000000")
        self.end_headers()
        self.wfile.write(self.server.png[:8])
        if self._wait_for_client_to_leave(HOLD_LIMIT):
            self.server.left("/big-declared.png").set()

    def endless(self) -> None:
        """Chunked, a PNG signature then zeros, until the client closes (or HOLD_LIMIT, or stop)."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = self.server.png[:8] + bytes(ENDLESS_CHUNK - 8)
        end = time.monotonic() + HOLD_LIMIT
        while not self.server.stop_event.is_set() and time.monotonic() < end:
            try:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                self.server.left("/endless").set()
                return
            chunk = bytes(ENDLESS_CHUNK)

    def loop(self) -> None:
        self._send(302, headers={"Location": "/loop"})

    def to_file(self) -> None:
        self._send(302, headers={"Location": "file:///etc/passwd"})

    def redirect_ok(self) -> None:
        self._send(302, headers={"Location": "/ok.png"})

    def codes(self) -> None:
        """A codes feed (fetch_feed)."""
        self._send(200, b'{"codes": []}', {"Content-Type": "application/json", "ETag": '"codes-1"'})

    def redirect_to(self) -> None:
        """302 to whatever `?to=` names (SSRF tests)."""
        target = parse_qs(urlsplit(self.path).query).get("to", ["/ok.png"])[0]
        self._send(302, headers={"Location": target})

    def too_many(self) -> None:
        """429 with a Retry-After no client should honour in full."""
        self._send(429, b"slow down\n", {"Content-Type": "text/plain", "Retry-After": "999999"})

    def downgrade(self) -> None:
        """An absolute redirect to plain http on the same host and port (meant for the TLS server)."""
        self._send(302, headers={"Location": f"http://{self.headers['Host']}/ok.png"})

    def gzipped(self) -> None:
        """Content-Encoding gzip although the client asked for identity."""
        self._send(200, gzip.compress(self.server.png), {"Content-Type": "image/png", "Content-Encoding": "gzip"})


ROUTES = {
    "/ok.png": _Handler.ok,
    "/rotating-etag.png": _Handler.rotating_etag,
    "/404.png": _Handler.not_found,
    "/500.png": _Handler.server_error,
    "/slow-headers": _Handler.slow_headers,
    "/drip": _Handler.drip,
    "/drip-headers": _Handler.drip_headers,
    "/truncated.png": _Handler.truncated,
    "/html": _Handler.html,
    "/lying.png": _Handler.lying,
    "/big-declared.png": _Handler.big_declared,
    "/endless": _Handler.endless,
    "/loop": _Handler.loop,
    "/to-file": _Handler.to_file,
    "/redirect-ok": _Handler.redirect_ok,
    "/redirect-to": _Handler.redirect_to,
    "/429.png": _Handler.too_many,
    "/downgrade": _Handler.downgrade,
    "/gzip.png": _Handler.gzipped,
    "/codes.json": _Handler.codes,
}


class ScriptedOrigin:
    """The running server as a test sees it: URLs, the PNG it serves, and what it was sent."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self.png = server.png
        self.etag = server.etag
        self.last_modified = LAST_MODIFIED

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str, host: str | None = None) -> str:
        """The URL of `path`; by the server's address, or by `host` (a name some resolver maps to it)."""
        host = host or str(self._server.server_address[0])
        return f"{'https' if self._server.tls else 'http'}://{host}:{self.port}{path}"

    def requests(self, path: str | None = None) -> list[Seen]:
        """Every request so far, in arrival order; only those for `path` if given."""
        with self._server.lock:
            return [seen for seen in self._server.seen if path is None or seen.path == path]

    def count(self, path: str | None = None) -> int:
        return len(self.requests(path))

    def client_left(self, path: str, timeout: float = 2.0) -> bool:
        """Wait (bounded) until the handler for `path` saw the client drop the connection."""
        return self._server.left(path).wait(timeout)


@contextmanager
def serve(
    png: bytes | None = None, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1", port: int = 0
) -> Iterator[ScriptedOrigin]:
    """Run the origin on host:port (default: 127.0.0.1, a free port) for the duration of the block; stop it and
    join every thread (bounded) after."""
    server = _Server(png if png is not None else make_png(), tls, (host, port))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield ScriptedOrigin(server)
    finally:
        _stop(server, thread)


def _stop(server: _Server, thread: threading.Thread) -> None:
    server.stop_event.set()
    server.shutdown()
    server.server_close()
    with server.lock:
        handlers, connections = list(server.handlers), list(server.connections)
    for connection in connections:
        try:
            connection.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked in recv or send
        except OSError:
            pass  # already closed by its handler, or detached into its TLS wrapper
    end = time.monotonic() + STOP_TIMEOUT
    thread.join(max(0.0, end - time.monotonic()))
    for handler in handlers:
        handler.join(max(0.0, end - time.monotonic()))
    alive = [h.name for h in handlers if h.is_alive()] + ([thread.name] if thread.is_alive() else [])
    if alive:
        raise RuntimeError(f"origin server threads still running {STOP_TIMEOUT:g}s after stop: {alive}")
