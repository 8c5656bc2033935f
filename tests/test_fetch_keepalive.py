"""Stage 1 against an origin that offers HTTP/2: real nginx (`listen ... ssl http2`) with a certificate made
by openssl, the production client trusting it. The stage keeps to HTTP/1.1 (httpcore's sync HTTP/2 is not
safe across threads: see pipeline/connections.py) and keeps its connections alive, as nginx's own log tells
($connection, $server_protocol), 304 revalidation included; and a run imports neither trio nor h2."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.fetch import fetch_sources, make_client
from pipeline.model import EncodeSettings, FetchSettings, IconSpec, Origin
from pipeline.store import IconStore
from tests.nginx import require_nginx
from tests.origin import make_png, self_signed
from tests.tools import require, stop_process

NAME = "icons.test"  # the stage's resolver maps it to 127.0.0.1; the certificate is for it only
SETTINGS = FetchSettings(timeout=5.0, deadline=10.0, allow_private=True, concurrency=4)
ICONS = 40
START_TIMEOUT = 5.0


def nginx_config(prefix: Path, port: int) -> str:
    """nginx serving prefix/icons over TLS with HTTP/2 on 127.0.0.1:port, logging each request's
    connection serial number and protocol. `listen ... http2` works on every nginx with the http_v2
    module (1.25.1 and later also take `http2 on;` and warn that this form is deprecated)."""
    temp = prefix / "temp"
    return f"""\
daemon off;
master_process on;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} notice;
events {{ worker_connections 64; }}
http {{
    types {{ image/png png; }}
    log_format connections '$connection $server_protocol $status $uri';
    access_log {prefix / "access.log"} connections;
    client_body_temp_path {temp}; proxy_temp_path {temp}; fastcgi_temp_path {temp};
    uwsgi_temp_path {temp}; scgi_temp_path {temp};
    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name {NAME};
        ssl_certificate {prefix / "origin.crt"};
        ssl_certificate_key {prefix / "origin.key"};
        root {prefix / "icons"};
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.25):
            return True
    except OSError:
        return False


@pytest.fixture
def h2_origin() -> Iterator[tuple[Path, int, ssl.SSLContext]]:
    """nginx over HTTP/2 in its own prefix (outside pytest's 0700 temp dirs, so that workers dropped to
    nobody under root can read the icons): (prefix, port, a client context trusting its certificate)."""
    require_nginx()
    require(shutil.which("openssl") is not None, "needs the openssl CLI to make a test certificate")
    prefix = Path(tempfile.mkdtemp(prefix="fetch-h2-"))
    try:
        prefix.chmod(0o755)
        (prefix / "temp").mkdir()
        (prefix / "icons").mkdir(mode=0o755)
        for n in range(ICONS):
            (prefix / "icons" / f"{n}.png").write_bytes(make_png(seed=n))
            (prefix / "icons" / f"{n}.png").chmod(0o644)
        _, trusting = self_signed(prefix, NAME)  # origin.crt, origin.key
        port = free_port()
        (prefix / "nginx.conf").write_text(nginx_config(prefix, port))
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        process = subprocess.Popen(
            [binary, "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not accepts(port):
                assert process.poll() is None and time.monotonic() < deadline, (prefix / "error.log").read_text()
                time.sleep(0.02)
            yield prefix, port, trusting
        finally:
            stop_process(process, group=True)
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def logged(prefix: Path, count: int) -> list[tuple[str, str, str, str]]:
    """nginx's access log, once it has `count` lines (nginx writes a line after the response went out,
    which can be a moment after the client has read it; bounded wait): (connection, protocol, status, uri)."""
    end = time.monotonic() + 2.0
    while len(lines := (prefix / "access.log").read_text().splitlines()) < count and time.monotonic() < end:
        time.sleep(0.02)
    return [(c, protocol, status, uri) for c, protocol, status, uri in (line.split() for line in lines)]


def test_an_origin_offering_http2_is_revalidated_over_kept_alive_http11(h2_origin, tmp_path) -> None:
    prefix, port, trusting = h2_origin
    store = IconStore(tmp_path / "icons")
    icons = [
        IconSpec(f"Icon {n}", f"icon-{n}", f"https://{NAME}:{port}/{n}.png", "alt", EncodeSettings(), 7)
        for n in range(ICONS)
    ]
    with make_client(SETTINGS, verify=trusting) as client:
        for expected in (Origin.DOWNLOADED, Origin.NOT_MODIFIED):  # the first run, then the hourly one
            sources = fetch_sources(
                icons,
                {icon.name: store.load(icon) for icon in icons},
                client,
                SETTINGS,
                resolve=lambda host, port: ["127.0.0.1"],
            )
            assert [(s.origin, s.data) for s in sources] == [(expected, make_png(seed=n)) for n in range(ICONS)], [
                s.reason for s in sources
            ]
            for source in sources:
                store.save(source)
    log = logged(prefix, 2 * ICONS)
    assert sorted(uri for *_, uri in log) == sorted([f"/{n}.png" for n in range(ICONS)] * 2)
    assert {protocol for _, protocol, *_ in log} == {"HTTP/1.1"}
    stages: dict[str, set[str]] = {"200": set(), "304": set()}  # the first run's connections, the hourly one's
    for connection, _, status, _ in log:
        stages[status].add(connection)
    assert not stages["200"] & stages["304"], stages  # each stage opens its own (and closes them)
    assert all(1 <= len(connections) <= SETTINGS.concurrency for connections in stages.values()), stages


LIGHT_RUN = """
import ssl, sys
from pipeline.fetch import fetch_sources, make_client
from pipeline.model import EncodeSettings, FetchSettings, IconSpec
settings = FetchSettings(timeout=5.0, deadline=10.0, allow_private=True)
client = make_client(settings, verify=ssl.create_default_context(cafile=sys.argv[1]))
icon = IconSpec("Icon", "icon", sys.argv[2], "alt", EncodeSettings(), 7)
[source] = fetch_sources([icon], {"Icon": None}, client, settings, resolve=lambda host, port: ["127.0.0.1"])
print(source.origin.value, source.reason, sorted({"trio", "h2", "httpcore"} & set(sys.modules)))
"""


def test_a_run_imports_neither_trio_nor_h2(h2_origin) -> None:
    """httpcore imports trio and h2 whenever they are installed (~150 and ~40 ms); make_client keeps both out
    of a run, in a fresh process (in pytest's, httpcore may be imported already)."""
    prefix, port, _ = h2_origin
    run = subprocess.run(
        [sys.executable, "-c", LIGHT_RUN, str(prefix / "origin.crt"), f"https://{NAME}:{port}/0.png"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["downloaded  ['httpcore']"]
    assert [protocol for _, protocol, *_ in logged(prefix, 1)] == ["HTTP/1.1"]
