"""Serve a built site with the real nginx and the shipped deploy/nginx.conf: the harness without
pytest, for the tests (through tests/nginx.py, which adds the fixture and the skip) and for
bench/serve.py (which runs with only the bench extra installed).

    from tests.nginx_core import served_site

    with served_site(site_dir) as base:   # base = "http://127.0.0.1:<port>"
        ...

nginx runs in the foreground (`daemon off;`) as a child, with its pid file, logs and temp dirs in
a private temp prefix, `worker_processes 1` unless told otherwise, and an http block that includes
/etc/nginx/mime.types and the shipped server block with only its `listen` and `root` lines
rewritten (to 127.0.0.1:<free port> and <site>/dist/current). It is stopped by PID with
tests/processes.stop_process: SIGTERM to its process group, a bounded wait, then SIGKILL to the
group. The main config loads no dynamic module (`load_module`) on purpose: the shipped block must
work on a stock nginx, brotli included (it serves the .br files with core directives; see the
Compression notes in deploy/nginx.conf).

Permissions: when run as root the master stays root but the workers drop to `nobody` (no `user`
line), as production workers drop to www-data. That is deliberate: it proves the files publish
writes are readable by an unprivileged worker. pytest's temp dirs are 0700, though, which nobody
could not traverse, so `open_path_to()` adds search permission (o+x, nothing else) to the
directories from the system temp dir down to the site folder. It never touches dist/ or anything
below it: those permissions are the pipeline's to get right, and the tests check them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .processes import stop_process

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONF = REPO / "deploy" / "nginx.conf"
MIME_TYPES = Path("/etc/nginx/mime.types")
START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0
PREFIX = "nginx-test-"  # tests/tools.nginx_prefix finds a server's prefix by this name

LISTEN = re.compile(r"^(\s*)listen\s+[^;]+;", re.MULTILINE)
ROOT = re.compile(r"^(\s*)root\s+[^;]+;", re.MULTILINE)


# ---- finding nginx -----------------------------------------------------------------------------


def nginx_binary() -> str | None:
    """nginx on PATH, or Debian's /usr/sbin/nginx (sbin is often not on a non-root PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    debian = Path("/usr/sbin/nginx")
    return str(debian) if os.access(debian, os.X_OK) else None


def nginx_available() -> tuple[bool, str]:
    """(usable, reason). Usable means the binary and the mime.types it needs are present."""
    if nginx_binary() is None:
        return False, "nginx is not installed (apt-get install nginx)"
    if not MIME_TYPES.is_file():
        return False, f"{MIME_TYPES} is missing (it comes with nginx-common)"
    return True, ""


# ---- config generation -------------------------------------------------------------------------


def server_block(listen: str, root: Path | str, source: Path = SHIPPED_CONF) -> str:
    """The shipped server block with its one `listen` and one `root` line replaced."""
    text = source.read_text(encoding="utf-8")
    for pattern, name in ((LISTEN, "listen"), (ROOT, "root")):
        found = len(pattern.findall(text))
        if found != 1:
            raise AssertionError(
                f"{source} must have exactly one `{name}` line for the harness to rewrite; it has {found}"
            )
    text = LISTEN.sub(lambda m: f"{m.group(1)}listen {listen};", text)
    return ROOT.sub(lambda m: f"{m.group(1)}root {root};", text)


def main_config(
    prefix: Path, server_conf: Path, *, workers: int = 1, connections: int = 64, access_log: bool = True
) -> str:
    """A minimal nginx.conf keeping every runtime path inside `prefix`. The defaults are the
    tests'; bench/serve.py raises `connections` and turns the access log off (no disk I/O per
    request)."""
    temp = {name: prefix / "temp" / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    return f"""\
daemon off;
master_process on;
worker_processes {workers};
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} notice;

events {{
    worker_connections {connections};
}}

http {{
    include {MIME_TYPES};
    default_type application/octet-stream;
    access_log {prefix / "access.log" if access_log else "off"};
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {server_conf};
}}
"""


def write_configs(
    prefix: Path, server_text: str, *, workers: int = 1, connections: int = 64, access_log: bool = True
) -> Path:
    """server.conf (`server_text`) and the main nginx.conf around it, in `prefix`; the main config's path."""
    (prefix / "temp").mkdir(parents=True, exist_ok=True)
    server_conf = prefix / "server.conf"
    server_conf.write_text(server_text, encoding="utf-8")
    conf = prefix / "nginx.conf"
    text = main_config(prefix, server_conf, workers=workers, connections=connections, access_log=access_log)
    conf.write_text(text, encoding="utf-8")
    return conf


def check_config(prefix: Path, server_text: str) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on a generated main config around `server_text` (nothing is served)."""
    binary = nginx_binary()
    assert binary, nginx_available()[1]
    conf = write_configs(prefix, server_text)
    return subprocess.run(
        [binary, "-t", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
        timeout=10,
    )


# ---- permissions -------------------------------------------------------------------------------


def open_path_to(directory: Path) -> None:
    """Give others search permission (o+x) on each directory from the system temp dir down to
    `directory`, so an unprivileged worker can reach it. Only dirs inside the temp dir are changed;
    a closed directory anywhere else is reported, not modified."""
    directory = directory.resolve()
    base = Path(tempfile.gettempdir()).resolve()
    if os.geteuid() != 0:
        return  # workers then run as this same user, who can already reach the site
    for path in [directory, *directory.parents]:
        mode = path.stat().st_mode
        if mode & 0o001:
            continue
        if path != base and base not in path.parents:
            raise PermissionError(
                f"{path} is not searchable by others (mode {oct(mode & 0o777)}); nginx workers cannot reach {directory}"
            )
        os.chmod(path, (mode & 0o7777) | 0o001)


# ---- running -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def answers(port: int) -> bool:
    """Whether an HTTP server answers a HEAD / on 127.0.0.1:`port` (nginx, or gunicorn for the bench)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.25) as conn:
            conn.settimeout(0.5)
            conn.sendall(b"HEAD / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            return conn.recv(12).startswith(b"HTTP/1.")
    except OSError:
        return False


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group the master leads (start_new_session; a fast shutdown), a
    bounded wait, then SIGKILL to the group, so no orphaned worker keeps the port."""
    stop_process(process, group=True, timeout=STOP_TIMEOUT)
    if process.stderr:
        process.stderr.close()


def log_tail(prefix: Path, limit: int = 2000) -> str:
    with contextlib.suppress(OSError):
        return (prefix / "error.log").read_text(encoding="utf-8", errors="replace")[-limit:]
    return ""


def launch(
    prefix: Path,
    block: Callable[[int], str],
    *,
    workers: int = 1,
    connections: int = 64,
    access_log: bool = True,
    wrapper: Sequence[str] = (),
    attempts: int = 3,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start nginx in `prefix` on a free port with `block(port)` as its server block and wait until
    it answers; (process, port). On another port if the free one was taken in the meantime. The
    caller stops the process with stop(). `wrapper` goes before the nginx command line and must
    exec it (e.g. `taskset -c 0`), so the process is still nginx's master."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError(nginx_available()[1])
    attempt = 0
    while True:
        attempt += 1
        port = free_port()
        conf = write_configs(prefix, block(port), workers=workers, connections=connections, access_log=access_log)
        (prefix / "error.log").unlink(missing_ok=True)
        process = subprocess.Popen(
            [*wrapper, binary, "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not answers(port):
                if process.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"nginx did not answer on 127.0.0.1:{port} within {START_TIMEOUT}s\n{log_tail(prefix)}"
                    )
                time.sleep(0.02)
        except BaseException:
            stop(process)
            raise
        if process.poll() is None:
            return process, port
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        stop(process)
        log = log_tail(prefix)
        if "Address already in use" not in log + stderr or attempt >= attempts:
            raise RuntimeError(f"nginx exited with {process.returncode}\n{stderr}\n{log}")


@contextlib.contextmanager
def served_site(
    site_dir: Path, *, source: Path = SHIPPED_CONF, root: Path | None = None, attempts: int = 3
) -> Iterator[str]:
    """Serve `site_dir`/dist/current (or `root`) with nginx and the shipped server block; yields
    the base URL. Retries on another port if the free port was taken in the meantime."""
    site_dir = Path(site_dir).resolve()
    root = root or site_dir / "dist" / "current"  # not resolved: `current` must stay a symlink
    open_path_to(site_dir)
    prefix = Path(tempfile.mkdtemp(prefix=PREFIX))
    try:
        process, port = launch(prefix, lambda port: server_block(f"127.0.0.1:{port}", root, source), attempts=attempts)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(process)
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
