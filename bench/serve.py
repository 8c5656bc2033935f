"""How fast the real nginx serves the built site with deploy/nginx.conf, gzip_static on and off.

Builds the default site (offline) into a temp copy, serves its dist/current with /usr/sbin/nginx
and the shipped server block (through tests/nginx.py: the same generated main config the tests
use, everything in a private temp prefix; for the benchmark only `access_log off`,
`worker_connections 1024` and `worker_processes` from --workers, default 1, differ; the server
block is untouched), then runs wrk on 127.0.0.1 against one path, alternating two variants,
--repeat times each:

  gzip   -H 'Accept-Encoding: gzip'  -> nginx sends the prebuilt index.html.gz (gzip_static)
  plain  no Accept-Encoding          -> nginx sends index.html

and prints the median requests/s and transfer/s of each, and gzip/plain ratios. It also reports
nginx's resident memory (VmRSS of the master + its workers, from /proc) before and after the load,
and what one response of each variant looks like (status, Content-Encoding, bytes).

Bounded: wrk runs with -d and a subprocess timeout of duration + 30 s; nginx is stopped by PID
(SIGTERM, a bounded wait, then SIGKILL to its process group) in a finally block; the temp site and
prefix are removed.

Usage (2 cores: about 40 s with the defaults, a warm encode cache in the repo's .cache/ is reused):
  python bench/serve.py
  python bench/serve.py --duration 10s --connections 64 --repeat 5 --workers 2

Writes bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import re
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

from tests import nginx as harness  # noqa: E402
from tests.conftest import copy_default_site  # noqa: E402

RESULTS = HERE / "results" / "serve.json"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
VARIANTS = {"gzip": ["-H", "Accept-Encoding: gzip"], "plain": []}
UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ok, reason = harness.nginx_available()
    if not ok or not os.access(WRK, os.X_OK):
        print(f"serve bench: cannot run: {reason or f'wrk not found ({WRK})'}", file=sys.stderr)
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
    parser.add_argument("--threads", "-t", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--connections", "-c", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--duration", "-d", default="5s", help="wrk duration per run, e.g. 5s (default)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant; the median is reported (default 3)")
    parser.add_argument("--path", default="/", help="the URL path to load (default /)")
    parser.add_argument("--workers", type=int, default=1, help="nginx worker_processes (default 1, as the tests)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"\d+(\.\d+)?[smh]?", args.duration):
        parser.error(f"--duration {args.duration!r}: use e.g. 5s, 30s or 1m")
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads (wrk needs one per thread)")
    return args


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
    result = subprocess.run([sys.executable, "-m", "pipeline", "build", "--offline", "--site", str(target)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    if result.returncode != 0:
        raise SystemExit(f"serve bench: the build failed ({result.returncode}):\n{result.stderr}")
    print(result.stdout.splitlines()[0])
    return target


# ---- nginx ---------------------------------------------------------------------------------------


class Nginx:
    """The harness's config, started here so the master's PID is known (for RSS and the stop)."""

    def __init__(self, site: Path, workers: int) -> None:
        self.site, self.workers = site, workers
        self.prefix = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> Nginx:
        harness.open_path_to(self.site)
        self.port = harness.free_port()
        server = harness.server_block(f"127.0.0.1:{self.port}", self.site / "dist" / "current")
        conf = harness.write_configs(self.prefix, server)
        text = conf.read_text(encoding="utf-8")
        text = text.replace("worker_processes 1;", f"worker_processes {self.workers};")
        text = text.replace(f"access_log {self.prefix / 'access.log'};", "access_log off;")  # no disk I/O per request
        text = text.replace("worker_connections 64;", "worker_connections 1024;")
        conf.write_text(text, encoding="utf-8")
        self.process = subprocess.Popen(
            [harness.nginx_binary(), "-p", f"{self.prefix}/", "-c", str(conf), "-e", str(self.prefix / "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + harness.START_TIMEOUT
        while not harness._answers(self.port):  # noqa: SLF001 - the harness's own readiness check
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.prefix / "error.log").read_text(errors="replace")[-2000:] if (self.prefix / "error.log").exists() else ""
                self.__exit__(None, None, None)
                raise SystemExit(f"serve bench: nginx did not start on 127.0.0.1:{self.port}\n{log}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            harness.stop(self.process)  # by PID: SIGTERM, bounded wait, SIGKILL to its group
        shutil.rmtree(self.prefix, ignore_errors=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        assert self.process is not None
        master = self.process.pid
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

    def rss_kib(self) -> dict[str, int]:
        out = {}
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
            if found:
                out[str(pid)] = int(found.group(1))
        return out


def sample(nginx: Nginx, path: str, headers: dict[str, str]) -> dict[str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        return {"status": response.status, "content_encoding": response.getheader("Content-Encoding"),
                "content_type": response.getheader("Content-Type"), "bytes": len(body)}
    finally:
        conn.close()


# ---- wrk -----------------------------------------------------------------------------------------


def wrk(args: argparse.Namespace, url: str, extra: list[str], duration: str | None = None) -> dict[str, float]:
    duration = duration or args.duration
    command = [WRK, f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}", "--latency", *extra, url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds_of(duration) + 30)
    if result.returncode != 0:
        raise SystemExit(f"serve bench: wrk failed ({result.returncode}): {result.stderr or result.stdout}")
    return parse_wrk(result.stdout)


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
        "latency_p50_ms": _ms(p50), "latency_p99_ms": _ms(p99),
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
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    with Nginx(site, args.workers) as nginx:
        url = nginx.base + args.path
        samples = {"gzip": sample(nginx, args.path, {"Accept-Encoding": "gzip"}), "plain": sample(nginx, args.path, {})}
        rss_idle = nginx.rss_kib()
        wrk(args, url, [], duration="1s")  # warm-up, not counted
        for _ in range(args.repeat):
            for name, extra in VARIANTS.items():  # alternate, so drift hits both alike
                runs[name].append(wrk(args, url, extra))
        rss_loaded = nginx.rss_kib()
    # nginx is stopped here (by PID, in Nginx.__exit__)

    medians = {name: {key: statistics.median(r[key] for r in rs) for key in ("requests_per_second", "transfer_bytes_per_second")}
               for name, rs in runs.items()}
    ratio = {key: medians["gzip"][key] / medians["plain"][key] for key in medians["gzip"]}
    errors = sum(r["non_2xx"] + r["socket_errors"] for rs in runs.values() for r in rs)

    print(f"\nnginx {subprocess.run([harness.nginx_binary(), '-v'], capture_output=True, text=True).stderr.strip().split('/')[-1]}, "
          f"{args.workers} worker(s); wrk -t{args.threads} -c{args.connections} -d{args.duration} on 127.0.0.1{args.path}, "
          f"{args.repeat} runs per variant, median; {os.cpu_count()} cores")
    for name in VARIANTS:
        s = samples[name]
        print(f"  {name:5}  one response: {s['status']}, Content-Encoding {s['content_encoding'] or '-'}, {s['bytes']:,} bytes")
    print(f"\n  {'variant':8} {'req/s':>10} {'transfer/s':>12}   {'runs (req/s)':<28} {'p50':>8} {'p99':>8}")
    for name, rs in runs.items():
        m = medians[name]
        p50 = statistics.median(r["latency_p50_ms"] for r in rs if r["latency_p50_ms"] is not None)
        p99 = statistics.median(r["latency_p99_ms"] for r in rs if r["latency_p99_ms"] is not None)
        each = ", ".join(f"{r['requests_per_second']:,.0f}" for r in rs)
        print(f"  {name:8} {m['requests_per_second']:>10,.0f} {human(m['transfer_bytes_per_second']) + '/s':>12}   "
              f"{each:<28} {p50:>6.2f}ms {p99:>6.2f}ms")
    print(f"  {'gzip/plain':8} {ratio['requests_per_second']:>10.2f}x {ratio['transfer_bytes_per_second']:>11.2f}x")
    idle, loaded = sum(rss_idle.values()), sum(rss_loaded.values())
    print(f"\n  nginx RSS (master + workers, VmRSS): {idle:,} KiB idle, {loaded:,} KiB after the load "
          f"({len(rss_loaded)} processes: {', '.join(f'{k}={v}' for k, v in rss_loaded.items())})")
    print(f"  non-2xx/socket errors: {errors}; total {time.monotonic() - started:.1f}s")

    record = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "wrk": {"threads": args.threads, "connections": args.connections, "duration": args.duration,
                "repeat": args.repeat, "path": args.path},
        "nginx_workers": args.workers, "samples": samples, "runs": runs, "median": medians,
        "ratio_gzip_over_plain": ratio, "errors": errors,
        "nginx_rss_kib": {"idle": rss_idle, "after_load": rss_loaded, "idle_total": idle, "after_load_total": loaded},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"  -> {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
