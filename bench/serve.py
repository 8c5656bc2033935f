"""How fast the real nginx serves the built site, against the Flask set-up this project replaces.

Builds the default site (offline) into a temp copy and starts three stacks on 127.0.0.1, all at
once (idle servers cost no CPU), so every number comes from the same run:

  ours      /usr/sbin/nginx with the shipped server block (deploy/nginx.conf) serving dist/current
            through tests/nginx_core.py's generated main config; for the benchmark only `access_log
            off`, `worker_connections 1024` and `worker_processes` (--workers, default 1) differ.
            gzip_static on: a gzip request gets the prebuilt index.html.gz (gzip -9).
  fly       the same, with the block's `gzip off; gzip_static on;` turned into `gzip on;
            gzip_static off;`: every gzip response compressed on the fly (gzip_comp_level 1 as
            nginx and Debian ship it; --gzip-level). Why the build precompresses.
  baseline  Flask + gunicorn + nginx: bench/baseline/app.py renders the same index.html with the
            repo's Jinja2 templates and the same data on every request (load the config and
            content with pipeline.config, the SiteView as pipeline/build.py builds it, icons at
            the built release's hashed URLs), under gunicorn (bench/baseline/gunicorn.conf.py:
            sync workers, 2 x cores + 1, on 127.0.0.1) behind an nginx proxy with `gzip on`
            for text/html, the typical set-up. The bench checks that the page is the same: the
            baseline's response, minified, must equal the built index.html byte for byte.

then runs wrk on 127.0.0.1 against one path, in two variants,

  gzip   -H 'Accept-Encoding: gzip'  (browser-like)
  plain  no Accept-Encoding

--repeat times each, interleaved (ours gzip, ours plain, baseline gzip, baseline plain, fly gzip,
then again), and prints the median requests/s and transfer/s of each, the ratios ours/baseline
per variant (the target: >= 200x with gzip) and fly/baseline, and the resident memory of each
stack's processes (VmRSS and PSS of nginx master + workers, gunicorn master + workers, from
/proc) idle and after the load.

Pinned, so the ratio measures the servers and not wrk: every server process (each nginx master and
its workers, gunicorn's master and workers, the baseline's proxy) runs under `taskset -c` on the
server cores, wrk on the others (default: the usable cores split in two halves, servers first; on
2 cores, servers on one, wrk on the other; --server-cpus/--wrk-cpus to choose, --no-pin to
share). The affinity each process really has is read back from /proc (Cpus_allowed_list) and
printed. wrk gets one thread per core it has; gunicorn 2 x server cores + 1 workers, the textbook
count for the cores it may use. Anything else running still shares the cores, so two more columns
say how far that moved the numbers: the ratio of the two runs of the same round (seconds apart) as
a median over rounds, and the CPU the stack's own processes spent per request (utime + stime from
/proc over the run, divided by the requests), which contention hardly changes. The load average
before and after is printed and recorded.

Bounded: wrk runs with -d (default 5s) and a subprocess timeout of duration + 30 s; every server
is stopped by PID (SIGTERM to the master, a bounded wait, then SIGKILL to its process group) in a
finally block; the temp site and prefixes are removed.

Needs nginx, wrk and taskset (apt-get install nginx wrk util-linux), and for the baseline Flask
and gunicorn: the bench extra (pip install -e '.[bench]'), or --no-baseline for the nginx rows
alone. No pytest: the nginx harness comes from tests/nginx_core.py, which does not import it.

Usage (2 cores: about 2 minutes with the defaults, a warm encode cache in the repo's .cache/
is reused):
  python bench/serve.py
  python bench/serve.py --quick        # one 2 s run per cell, about 40 s
  python bench/serve.py --duration 10s --connections 64 --repeat 5 --workers 2

Writes bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the repo's tests/ helpers and pipeline, even when not installed

from tests import nginx_core as harness  # noqa: E402 - pytest-free, unlike tests/nginx.py
from tests.sites import copy_default_site  # noqa: E402

RESULTS = HERE / "results" / "serve.json"
BASELINE = HERE / "baseline"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
TASKSET = shutil.which("taskset") or "/usr/bin/taskset"
VARIANTS = {"gzip": ["-H", "Accept-Encoding: gzip"], "plain": []}
HEADERS = {"gzip": {"Accept-Encoding": "gzip"}, "plain": {}}
UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
TARGET = 200.0  # ours / baseline req/s with gzip, from the issue
STACKS = {
    "ours": "ours (nginx, gzip_static)",
    "baseline": "baseline (Flask+gunicorn+nginx)",
    "fly": "ours, gzip on the fly",
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ok, reason = harness.nginx_available()
    if ok and not os.access(WRK, os.X_OK):
        ok, reason = False, f"wrk is not installed (apt-get install wrk; looked for {WRK})"
    if ok and args.pin and not os.access(TASKSET, os.X_OK):
        ok, reason = False, "taskset is not installed (apt-get install util-linux), or run with --no-pin"
    if not ok:
        print(f"serve bench: cannot run: {reason}", file=sys.stderr)
        return 69
    if not args.no_baseline:
        missing = [name for name in ("flask", "gunicorn") if importlib.util.find_spec(name) is None]
        if missing:
            print(
                f"serve bench: the baseline needs {' and '.join(missing)} (bench-only): "
                f"pip install {' '.join(missing)}, or run with --no-baseline",
                file=sys.stderr,
            )
            return 69
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        site = build_site(workdir / "site")
        return run(args, site, started)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--threads", "-t", type=int, default=0, help="wrk threads (default: one per wrk core; 2 unpinned)"
    )
    parser.add_argument("--connections", "-c", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--duration", "-d", default="5s", help="wrk duration per run, e.g. 5s (default)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant; the median is reported (default 3)")
    parser.add_argument("--quick", action="store_true", help="--duration 2s --repeat 1 (about 40 s)")
    parser.add_argument(
        "--server-cpus",
        type=cpu_list,
        default=None,
        help="cores for every server process, e.g. 0 or 0-1 (default: the first half)",
    )
    parser.add_argument(
        "--wrk-cpus", type=cpu_list, default=None, help="cores for wrk, e.g. 1 (default: the other half)"
    )
    parser.add_argument(
        "--no-pin", dest="pin", action="store_false", help="no taskset: servers and wrk share every core"
    )
    parser.add_argument("--path", default="/", help="the URL path to load (default /)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker_processes of every nginx (ours, fly, the baseline's proxy); default 1, as the tests",
    )
    parser.add_argument(
        "--gunicorn-workers", type=int, default=0, help="baseline gunicorn sync workers (default 2 x server cores + 1)"
    )
    parser.add_argument(
        "--gzip-level",
        type=int,
        default=1,
        choices=range(1, 10),
        metavar="1-9",
        help="gzip_comp_level of the on-the-fly gzip (fly and the baseline's proxy); default 1, nginx's own",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the Flask baseline (no Flask/gunicorn needed)")
    parser.add_argument("--no-fly", action="store_true", help="skip the on-the-fly gzip run of our nginx")
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS.relative_to(ROOT)})"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.repeat = "2s", 1
    if not re.fullmatch(r"\d+(\.\d+)?[smh]?", args.duration):
        parser.error(f"--duration {args.duration!r}: use e.g. 5s, 30s or 1m")
    try:
        args.server_cpus, args.wrk_cpus = choose_cpus(args.pin, args.server_cpus, args.wrk_cpus)
    except ValueError as error:
        parser.error(str(error))
    args.threads = args.threads or (len(args.wrk_cpus) if args.pin else 2)
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads (wrk needs one per thread)")
    args.gunicorn_workers = args.gunicorn_workers or 2 * len(args.server_cpus) + 1
    return args


def cpu_list(text: str) -> list[int]:
    """`0`, `0,2` or `0-3` (taskset's list syntax) -> sorted core numbers."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise argparse.ArgumentTypeError(f"{text!r}: use core numbers like 0, 0,2 or 0-3")
        cpus.update(range(int(low), int(high or low) + 1))
    return sorted(cpus)


def choose_cpus(pin: bool, server: list[int] | None, load: list[int] | None) -> tuple[list[int], list[int]]:
    """(server cores, wrk cores). Pinned: the usable cores (this process's affinity) split in two
    halves unless given, disjoint and usable; unpinned: every usable core for both."""
    usable = sorted(os.sched_getaffinity(0))
    if not pin:
        return usable, usable
    if len(usable) < 2 and not (server and load):
        raise ValueError(f"pinning needs 2 usable cores, this process has {usable}: run with --no-pin")
    server = server or [c for c in usable if c not in (load or [])][: max(1, len(usable) // 2)]
    load = load or [c for c in usable if c not in server]
    for name, cpus in (("--server-cpus", server), ("--wrk-cpus", load)):
        if not cpus or not set(cpus) <= set(usable):
            raise ValueError(f"{name} {cpus}: not among the usable cores {usable}")
    if set(server) & set(load):
        raise ValueError(f"--server-cpus {server} and --wrk-cpus {load} overlap: the point is to keep them apart")
    return server, load


def pinned(args: argparse.Namespace, cpus: list[int]) -> list[str]:
    """The command prefix that runs a program on `cpus` (taskset execs it, so the PID stays the
    program's and its children inherit the affinity); nothing when --no-pin."""
    return [TASKSET, "-c", ",".join(map(str, cpus))] if args.pin else []


def cores(cpus: list[int]) -> str:
    return f"core{'s' if len(cpus) > 1 else ''} {','.join(map(str, cpus))}"


def allowed_cpus(pid: int) -> str:
    """The cores the kernel lets `pid` run on, as /proc prints them (e.g. "0" or "0-1")."""
    found = re.search(r"^Cpus_allowed_list:\s+(\S+)", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return found.group(1) if found else "?"


def seconds_of(duration: str) -> float:
    unit = duration[-1] if duration[-1] in "smh" else "s"
    number = float(duration.rstrip("smh"))
    return number * {"s": 1, "m": 60, "h": 3600}[unit]


# ---- the site ----------------------------------------------------------------------------------


def build_site(target: Path) -> Path:
    copy_default_site(target)
    warm = ROOT / ".cache" / "encode"
    if warm.is_dir():  # same key scheme as the pipeline: a stale entry is simply not used
        shutil.copytree(warm, target / ".cache" / "encode")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "build", "--offline", "--site", str(target)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    if result.returncode != 0:
        raise SystemExit(f"serve bench: the build failed ({result.returncode}):\n{result.stderr}")
    print(result.stdout.splitlines()[0])
    return target


# ---- processes -----------------------------------------------------------------------------------


def process_tree(master: int) -> list[int]:
    """The master and its direct children (nginx and gunicorn workers are exactly that)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:  # field 4: ppid
                children.append(int(entry.name))
    return [master, *sorted(children)]


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes so far (/proc/PID/stat fields 14 and 15)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def memory_kib(pids: list[int]) -> dict[str, object]:
    """VmRSS per process, and totals of RSS and PSS (PSS splits pages shared between a master and
    its forked workers, so its total is what the stack really holds)."""
    rss, pss = {}, 0
    for pid in pids:
        with contextlib.suppress(OSError):
            found = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
            if found:
                rss[str(pid)] = int(found.group(1))
        with contextlib.suppress(OSError):
            found = re.search(r"^Pss:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.MULTILINE)
            if found:
                pss += int(found.group(1))
    return {"rss": rss, "rss_total": sum(rss.values()), "pss_total": pss, "processes": len(rss)}


def wait_until_answering(port: int, process: subprocess.Popen, what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not harness.answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"serve bench: {what} did not answer on 127.0.0.1:{port}\n{tail}")
        time.sleep(0.02)


# ---- nginx ---------------------------------------------------------------------------------------


def shipped_block(port: int, site: Path) -> str:
    return harness.server_block(f"127.0.0.1:{port}", site / "dist" / "current")


def on_the_fly_block(port: int, site: Path, level: int) -> str:
    """The shipped block with precompression swapped for nginx's on-the-fly gzip."""
    text = shipped_block(port, site)
    for old, new in (
        (r"^(\s*)gzip off;", rf"\1gzip on; gzip_comp_level {level};"),
        (r"^(\s*)gzip_static on;", r"\1gzip_static off;"),
    ):
        text, count = re.subn(old, new, text, flags=re.MULTILINE)
        if count != 1:
            raise SystemExit(
                f"serve bench: deploy/nginx.conf must have exactly one line matching {old!r} (has {count})"
            )
    return text


def proxy_block(port: int, upstream: int, level: int) -> str:
    """A minimal reverse proxy in front of gunicorn, as the usual Flask deployment guides have it."""
    return f"""\
server {{
    listen 127.0.0.1:{port};
    server_name _;
    server_tokens off;
    gzip on;                      # text/html only (gzip_types' default), as Debian's nginx.conf
    gzip_comp_level {level};
    gzip_vary on;
    location / {{
        proxy_pass http://127.0.0.1:{upstream};
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
    }}
}}
"""


class Nginx:
    """The harness's main config around a server block, for the benchmark with `access_log off`
    (no disk I/O per request), `worker_connections 1024` and `workers` worker processes, started
    under `wrapper` (taskset). `block(port)` gives the server block text."""

    def __init__(self, site: Path, workers: int, wrapper: list[str], block=None) -> None:
        self.site, self.workers, self.wrapper = site, workers, wrapper
        self.block = block or (lambda port: shipped_block(port, site))
        self.prefix = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> Nginx:
        try:
            harness.open_path_to(self.site)
            self.process, self.port = harness.launch(
                self.prefix, self.block, workers=self.workers, connections=1024, access_log=False, wrapper=self.wrapper
            )
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            harness.stop(self.process)
        shutil.rmtree(self.prefix, ignore_errors=True)

    def pids(self) -> list[int]:
        assert self.process is not None
        return process_tree(self.process.pid)


class Gunicorn:
    """bench/baseline/app.py under gunicorn with bench/baseline/gunicorn.conf.py."""

    START_TIMEOUT = 30.0

    def __init__(self, site: Path, workers: int, wrapper: list[str]) -> None:
        self.site, self.workers, self.wrapper = site, workers, wrapper
        self.prefix = Path(tempfile.mkdtemp(prefix="bench-gunicorn-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log = self.prefix / "gunicorn.log"

    def __enter__(self) -> Gunicorn:
        self.port = harness.free_port()
        env = {
            **os.environ,
            "BASELINE_SITE": str(self.site),
            "BASELINE_BIND": f"127.0.0.1:{self.port}",
            "BASELINE_WORKERS": str(self.workers),
        }
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [*self.wrapper, sys.executable, "-m", "gunicorn", "-c", str(BASELINE / "gunicorn.conf.py")],
                cwd=BASELINE,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until_answering(self.port, self.process, "gunicorn", self.log, self.START_TIMEOUT)
            deadline = time.monotonic() + self.START_TIMEOUT  # every worker forked, not only the first
            while len(self.pids()) < 1 + self.workers and time.monotonic() < deadline:
                time.sleep(0.05)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            harness.stop(self.process)  # SIGTERM is gunicorn's graceful stop (graceful_timeout 5 s)
        shutil.rmtree(self.prefix, ignore_errors=True)

    def pids(self) -> list[int]:
        assert self.process is not None
        return process_tree(self.process.pid)


def check_affinity(args: argparse.Namespace, groups: dict[str, dict[str, object]]) -> dict[str, list[str]]:
    """The cores each stack's processes may run on, read back from /proc, e.g. {"ours/nginx": ["0"]};
    pinned, every one must be exactly the server cores (a worker forked before the pin would not be)."""
    affinity = {
        f"{stack}/{name}": sorted({allowed_cpus(pid) for pid in server.pids()})
        for stack, parts in groups.items()
        for name, server in parts.items()
    }
    if args.pin:
        wrong = {
            part: allowed for part, allowed in affinity.items() if [cpu_list(a) for a in allowed] != [args.server_cpus]
        }
        if wrong:
            raise SystemExit(f"serve bench: server processes not pinned to cores {args.server_cpus}: {wrong}")
    return affinity


def sample(port: int, path: str, headers: dict[str, str]) -> tuple[dict[str, object], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        return {
            "status": response.status,
            "content_encoding": response.getheader("Content-Encoding"),
            "content_type": response.getheader("Content-Type"),
            "bytes": len(body),
        }, body
    finally:
        conn.close()


# ---- wrk -----------------------------------------------------------------------------------------


def wrk(args: argparse.Namespace, url: str, extra: list[str], duration: str | None = None) -> dict[str, float]:
    duration = duration or args.duration
    command = [
        *pinned(args, args.wrk_cpus),
        WRK,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{duration}",
        "--latency",
        *extra,
        url,
    ]
    cpu_before, wall_before = children_cpu_seconds(), time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds_of(duration) + 30)
    if result.returncode != 0:
        raise SystemExit(f"serve bench: wrk failed ({result.returncode}): {result.stderr or result.stdout}")
    parsed = parse_wrk(result.stdout)
    parsed["wall_seconds"] = round(time.monotonic() - wall_before, 3)
    parsed["wrk_cpu_seconds"] = round(children_cpu_seconds() - cpu_before, 3)
    return parsed


def children_cpu_seconds() -> float:
    """utime + stime of this process's reaped children so far (taskset execs wrk: the same process)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parse_wrk(text: str) -> dict[str, float]:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    transfer = re.search(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)", text, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in", text, re.MULTILINE)
    if not (rps and transfer and total):
        raise SystemExit(f"serve bench: cannot read wrk's output:\n{text}")
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\b", text, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\b", text, re.MULTILINE)
    return {
        "requests_per_second": float(rps.group(1)),
        "transfer_bytes_per_second": float(transfer.group(1)) * UNITS[transfer.group(2)],
        "requests": int(total.group(1)),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
        "latency_p50_ms": _ms(p50),
        "latency_p99_ms": _ms(p99),
    }


def _ms(found: re.Match[str] | None) -> float | None:
    if not found:
        return None
    return round(float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)], 3)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1024
    return f"{n}"


# ---- the run -------------------------------------------------------------------------------------


def run(args: argparse.Namespace, site: Path, started: float) -> int:
    # (stack, variant) in the order each repeat runs them; fly's plain would be ours' plain again.
    cells = [("ours", "gzip"), ("ours", "plain")]
    if not args.no_baseline:
        cells += [("baseline", "gzip"), ("baseline", "plain")]
    if not args.no_fly:
        cells += [("fly", "gzip")]
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    for stack, variant in cells:
        runs.setdefault(stack, {})[variant] = []
    samples: dict[str, dict[str, dict[str, object]]] = {stack: {} for stack in runs}
    memory: dict[str, dict[str, dict[str, object]]] = {}
    same_page: dict[str, object] = {}
    load_before = os.getloadavg()
    versions = {
        "nginx": subprocess.run([harness.nginx_binary(), "-v"], capture_output=True, text=True)
        .stderr.strip()
        .split("/")[-1]
    }

    with contextlib.ExitStack() as servers:
        on_server = pinned(args, args.server_cpus)
        ours = servers.enter_context(Nginx(site, args.workers, on_server))
        ports = {"ours": ours.port}
        groups: dict[str, dict[str, object]] = {"ours": {"nginx": ours}}
        if "fly" in runs:
            fly = servers.enter_context(
                Nginx(site, args.workers, on_server, lambda port: on_the_fly_block(port, site, args.gzip_level))
            )
            ports["fly"] = fly.port
            groups["fly"] = {"nginx": fly}
        if "baseline" in runs:
            versions.update(
                {name: importlib.metadata.version(name) for name in ("flask", "gunicorn", "jinja2", "werkzeug")}
            )
            app = servers.enter_context(Gunicorn(site, args.gunicorn_workers, on_server))
            proxy = servers.enter_context(
                Nginx(site, args.workers, on_server, lambda port: proxy_block(port, app.port, args.gzip_level))
            )
            ports["baseline"] = proxy.port
            groups["baseline"] = {"nginx": proxy, "gunicorn": app}

        bodies = {}
        for stack in runs:
            for variant in VARIANTS:
                samples[stack][variant], bodies[stack, variant] = sample(ports[stack], args.path, HEADERS[variant])
        if "baseline" in runs:
            same_page = check_same_page(bodies[("ours", "plain")], bodies[("baseline", "plain")])
        for stack, parts in groups.items():
            memory[stack] = {"idle": {name: memory_kib(server.pids()) for name, server in parts.items()}}
        affinity = check_affinity(args, groups)

        for stack in runs:  # warm-up, not counted: page cache, gunicorn workers' first render
            wrk(args, f"http://127.0.0.1:{ports[stack]}{args.path}", VARIANTS["gzip"], duration="1s")
        for _ in range(args.repeat):
            for stack, variant in cells:  # interleaved, so drift hits every cell alike
                before = sum(cpu_seconds(server.pids()) for server in groups[stack].values())
                result = wrk(args, f"http://127.0.0.1:{ports[stack]}{args.path}", VARIANTS[variant])
                used = sum(cpu_seconds(server.pids()) for server in groups[stack].values()) - before
                # CPU the stack's own processes spent per request: unlike req/s, barely moved by
                # whatever else shares the cores (wrk included)
                result["server_cpu_seconds"] = round(used, 2)
                result["server_cpu_us_per_request"] = round(used * 1e6 / max(result["requests"], 1), 2)
                # how busy each side kept its cores (1.0 = one core all the time): a server side
                # short of its cores while wrk's is full would mean wrk set the pace
                result["server_busy_cores"] = round(used / result["wall_seconds"], 2)
                result["wrk_busy_cores"] = round(result["wrk_cpu_seconds"] / result["wall_seconds"], 2)
                runs[stack][variant].append(result)
        for stack, parts in groups.items():
            memory[stack]["after_load"] = {name: memory_kib(server.pids()) for name, server in parts.items()}
    # every server is stopped here, by PID (ExitStack, in reverse order)

    medians = {
        stack: {
            variant: {
                key: statistics.median(r[key] for r in rs)
                for key in (
                    "requests_per_second",
                    "transfer_bytes_per_second",
                    "server_cpu_us_per_request",
                    "server_busy_cores",
                    "wrk_busy_cores",
                )
            }
            for variant, rs in variants.items()
        }
        for stack, variants in runs.items()
    }
    errors = sum(
        r["non_2xx"] + r["socket_errors"] for variants in runs.values() for rs in variants.values() for r in rs
    )

    def ratio(a: tuple[str, str], b: tuple[str, str]) -> dict[str, float] | None:
        if a[0] not in medians or b[0] not in medians or a[1] not in medians[a[0]] or b[1] not in medians[b[0]]:
            return None
        x, y = medians[a[0]][a[1]], medians[b[0]][b[1]]
        rounds = [
            ra["requests_per_second"] / rb["requests_per_second"] for ra, rb in zip(runs[a[0]][a[1]], runs[b[0]][b[1]])
        ]
        return {
            "requests_per_second": x["requests_per_second"] / y["requests_per_second"],
            "transfer_bytes_per_second": x["transfer_bytes_per_second"] / y["transfer_bytes_per_second"],
            # the same round's two runs, seconds apart: drift on a shared machine cancels more
            "requests_per_second_per_round_median": statistics.median(rounds),
            # how many times less server CPU a request costs in a than in b
            "server_cpu_per_request": y["server_cpu_us_per_request"] / max(x["server_cpu_us_per_request"], 1e-9),
        }

    ratios = {
        "ours_gzip_over_plain": ratio(("ours", "gzip"), ("ours", "plain")),
        "ours_over_baseline_gzip": ratio(("ours", "gzip"), ("baseline", "gzip")),
        "ours_over_baseline_plain": ratio(("ours", "plain"), ("baseline", "plain")),
        "fly_over_baseline_gzip": ratio(("fly", "gzip"), ("baseline", "gzip")),
        "ours_over_fly_gzip": ratio(("ours", "gzip"), ("fly", "gzip")),
    }
    load = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
    report(args, runs, samples, medians, ratios, memory, same_page, versions, errors, started, load, affinity)

    target = ratios["ours_over_baseline_gzip"]
    record = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg": load,
        },
        "versions": versions,
        "wrk": {
            "threads": args.threads,
            "connections": args.connections,
            "duration": args.duration,
            "repeat": args.repeat,
            "path": args.path,
        },
        "pinning": {
            "pinned": args.pin,
            "server_cpus": args.server_cpus,
            "wrk_cpus": args.wrk_cpus,
            "server_processes_allowed": affinity,
        },
        "nginx_workers": args.workers,
        "gunicorn_workers": None if args.no_baseline else args.gunicorn_workers,
        "gzip_level_on_the_fly": args.gzip_level,
        # ours alone, under the keys this file had before the baseline was added
        "samples": samples["ours"],
        "runs": runs["ours"],
        "median": medians["ours"],
        "ratio_gzip_over_plain": ratios["ours_gzip_over_plain"],
        "nginx_rss_kib": {
            "idle": memory["ours"]["idle"]["nginx"]["rss"],
            "after_load": memory["ours"]["after_load"]["nginx"]["rss"],
            "idle_total": memory["ours"]["idle"]["nginx"]["rss_total"],
            "after_load_total": memory["ours"]["after_load"]["nginx"]["rss_total"],
        },
        "stacks": {
            stack: {
                "label": STACKS[stack],
                "samples": samples[stack],
                "runs": runs[stack],
                "median": medians[stack],
                "memory_kib": memory[stack],
            }
            for stack in runs
        },
        "ratios": ratios,
        "same_page": same_page,
        "target": {
            "ours_over_baseline_gzip_rps": TARGET,
            "met": None if target is None else target["requests_per_second"] >= TARGET,
        },
        "errors": errors,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"  -> {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    return 0 if errors == 0 else 1


def check_same_page(ours: bytes, baseline: bytes) -> dict[str, object]:
    """The baseline renders unminified HTML; minified with the pipeline's own minifier it must be
    the built index.html exactly (same templates, same data, same hashed icon URLs)."""
    from pipeline import minify

    minified = minify.minify_html(baseline.decode("utf-8")).encode("utf-8")
    return {
        "identical_after_minify": minified == ours,
        "ours_bytes": len(ours),
        "baseline_bytes": len(baseline),
        "baseline_minified_bytes": len(minified),
    }


def report(args, runs, samples, medians, ratios, memory, same_page, versions, errors, started, load, affinity) -> None:
    extra = "".join(f", {k} {v}" for k, v in versions.items() if k != "nginx")
    print(
        f"\nnginx {versions['nginx']}{extra}; nginx worker_processes {args.workers}"
        + ("" if args.no_baseline else f", gunicorn {args.gunicorn_workers} sync workers")
        + f"; wrk -t{args.threads} -c{args.connections} -d{args.duration} on 127.0.0.1{args.path}, "
        f"{args.repeat} runs per cell, median; {os.cpu_count()} cores"
    )
    if args.pin:
        each = ", ".join(f"{part} {'/'.join(allowed)}" for part, allowed in affinity.items())
        print(
            f"  pinned with taskset: every server process on {cores(args.server_cpus)} (read back from /proc: {each}), "
            f"wrk on {cores(args.wrk_cpus)}"
        )
    else:
        print(f"  not pinned (--no-pin): servers and wrk share {cores(args.server_cpus)}")
    for stack in runs:
        for variant in VARIANTS:
            s = samples[stack][variant]
            print(
                f"  {stack:8} {variant:5}  one response: {s['status']}, Content-Encoding {s['content_encoding'] or '-'}, "
                f"{s['bytes']:,} bytes"
            )
    if same_page:
        verdict = "identical" if same_page["identical_after_minify"] else "DIFFERENT"
        print(
            f"  same page: the baseline's HTML ({same_page['baseline_bytes']:,} bytes) minified is {verdict} "
            f"to the built index.html ({same_page['ours_bytes']:,} bytes)"
        )

    print(
        f"\n  {'stack':32} {'variant':7} {'req/s':>10} {'transfer/s':>12}   {'runs (req/s)':<26} {'p50':>9} {'p99':>9} "
        f"{'CPU/req':>10} {'busy: srv':>9} {'wrk':>5}"
    )
    for stack, variants in runs.items():
        for variant, rs in variants.items():
            m = medians[stack][variant]
            p50 = statistics.median(r["latency_p50_ms"] for r in rs if r["latency_p50_ms"] is not None)
            p99 = statistics.median(r["latency_p99_ms"] for r in rs if r["latency_p99_ms"] is not None)
            each = ", ".join(f"{r['requests_per_second']:,.0f}" for r in rs)
            print(
                f"  {STACKS[stack]:32} {variant:7} {m['requests_per_second']:>10,.0f} "
                f"{human(m['transfer_bytes_per_second']) + '/s':>12}   {each:<26} {p50:>7.2f}ms {p99:>7.2f}ms "
                f"{m['server_cpu_us_per_request']:>8,.0f}us {m['server_busy_cores']:>9.2f} {m['wrk_busy_cores']:>5.2f}"
            )
    print(
        "  (CPU/req: utime+stime of the stack's own processes, nginx and gunicorn, over the run / requests; busy: CPU\n"
        "  seconds per wall second of the servers and of wrk, in cores: a side below its cores was waiting; medians)"
    )

    print(
        f"\n  {'ratio (medians)':40} {'req/s':>9} {'transfer/s':>11} {'req/s per round':>16} {'CPU/req (inverse)':>18}"
    )
    labels = {
        "ours_gzip_over_plain": "ours gzip / ours plain",
        "ours_over_baseline_gzip": "ours / baseline, gzip (target >= 200x)",
        "ours_over_baseline_plain": "ours / baseline, plain",
        "fly_over_baseline_gzip": "ours on the fly / baseline, gzip",
        "ours_over_fly_gzip": "ours gzip_static / ours on the fly",
    }
    for key, label in labels.items():
        r = ratios[key]
        if r is not None:
            print(
                f"  {label:40} {r['requests_per_second']:>8.1f}x {r['transfer_bytes_per_second']:>10.1f}x "
                f"{r['requests_per_second_per_round_median']:>15.1f}x {r['server_cpu_per_request']:>17.1f}x"
            )
    target = ratios["ours_over_baseline_gzip"]
    if target is not None:
        got = target["requests_per_second"]
        print(
            f"  target ours/baseline >= {TARGET:.0f}x with gzip: {'MET' if got >= TARGET else 'NOT met'} "
            f"({got:.1f}x{'' if got >= TARGET else f', {TARGET / got:.2f}x short'})"
        )

    print("\n  memory (KiB, from /proc: VmRSS summed over the processes; PSS total)")
    print(f"  {'stack':32} {'part':9} {'procs':>5} {'RSS idle':>10} {'RSS loaded':>11} {'PSS loaded':>11}")
    for stack, phases in memory.items():
        totals = [0, 0, 0]
        for part, idle in phases["idle"].items():
            loaded = phases["after_load"][part]
            totals = [totals[0] + idle["rss_total"], totals[1] + loaded["rss_total"], totals[2] + loaded["pss_total"]]
            print(
                f"  {STACKS[stack]:32} {part:9} {loaded['processes']:>5} {idle['rss_total']:>10,} {loaded['rss_total']:>11,} "
                f"{loaded['pss_total']:>11,}"
            )
        if len(phases["idle"]) > 1:
            print(f"  {STACKS[stack]:32} {'total':9} {'':>5} {totals[0]:>10,} {totals[1]:>11,} {totals[2]:>11,}")
    print(
        f"  non-2xx/socket errors: {errors}; load average (1/5/15 min) {' '.join(map(str, load['before']))} before, "
        f"{' '.join(map(str, load['after']))} after (anything else running shares the cores); "
        f"total {time.monotonic() - started:.1f}s"
    )


if __name__ == "__main__":
    sys.exit(main())
