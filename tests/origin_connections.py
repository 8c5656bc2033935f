"""tests/origin.py's scripted origin, also telling which connection carried each request: for the tests of
the fetch stage's kept-alive connections (tests/test_fetch.py).

`serve_counting()` runs the same server and routes as `origin.serve()`, and records for every request the
connection it came on (the client's port, unique while the connection is open), for every connection the
TLS SNI name it opened with, and which connections the client has closed. One more route, ONCE, answers
a connection's first request and hangs up on the next, as a server whose keep-alive timeout fires just as
a request arrives.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .origin import ScriptedOrigin, Seen, _Handler, _Server, _stop, make_png


@dataclass(frozen=True)
class Carried:
    """One request and the connection it came on (the client's port)."""

    connection: int
    seen: Seen


class _CountingServer(_Server):
    def __init__(self, png: bytes, tls: ssl.SSLContext | None) -> None:
        super().__init__(png, tls)
        self.RequestHandlerClass = _CountingHandler
        self.carried: list[Carried] = []
        self.sni: dict[int, str | None] = {}
        self.closed: set[int] = set()
        if tls is not None:
            tls.sni_callback = self._note_sni

    def _note_sni(self, connection: ssl.SSLSocket, name: str | None, context: ssl.SSLContext) -> None:
        """The server's sni_callback (its sockets are SSLSockets: wrap_socket in _Server.finish_request)."""
        with self.lock:
            self.sni[connection.getpeername()[1]] = name


class _CountingHandler(_Handler):
    server: _CountingServer
    timeout = 10.0  # an idle connection is closed by the client, not by this server's timeout, in any test

    def handle(self) -> None:
        """Every request of the connection (keep-alive), then note that the client closed it."""
        try:
            super().handle()
        finally:
            with self.server.lock:
                self.server.closed.add(self.client_address[1])

    def do_GET(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = self.path.split("?")[0]
        with self.server.lock:
            self.server.carried.append(Carried(self.client_address[1], Seen(path, headers)))
            first = sum(c.connection == self.client_address[1] for c in self.server.carried) == 1
        if path != ONCE:
            super().do_GET()
        elif first:
            self.ok()
        else:
            self.close_connection = True  # read the request, hang up without a word


ONCE = "/once-per-connection.png"  # /ok.png for a connection's first request; any later one is hung up on


class CountingOrigin(ScriptedOrigin):
    _server: _CountingServer

    def carried(self) -> list[Carried]:
        """Every request so far with its connection, in arrival order."""
        with self._server.lock:
            return list(self._server.carried)

    def connections(self) -> dict[int, list[Seen]]:
        """Connection (client port) -> the requests it carried, in arrival order."""
        by_connection: dict[int, list[Seen]] = {}
        for carried in self.carried():
            by_connection.setdefault(carried.connection, []).append(carried.seen)
        return by_connection

    def sni(self) -> dict[int, str | None]:
        """Connection (client port) -> the name its TLS handshake asked for (over TLS only)."""
        with self._server.lock:
            return dict(self._server.sni)

    def closed(self) -> set[int]:
        """The connections the client has closed (their handler saw the end)."""
        with self._server.lock:
            return set(self._server.closed)


@contextmanager
def serve_counting(png: bytes | None = None, tls: ssl.SSLContext | None = None) -> Iterator[CountingOrigin]:
    """As origin.serve() on 127.0.0.1 (a free port); over TLS the context's sni_callback is taken."""
    server = _CountingServer(png if png is not None else make_png(), tls)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield CountingOrigin(server)
    finally:
        _stop(server, thread)
