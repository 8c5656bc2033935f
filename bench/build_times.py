"""Build times: cold, no-op, one icon changed, one code added; and the cold speed-up from 1 to all cores.

Each figure is the wall time of the whole `python -m pipeline build --summary line --site S`
process (interpreter start and imports included), the median over --runs repeats, plus the
per-stage seconds parsed from its summary line, the encodes done and the files/bytes written.

Sites (each a temp copy of the repo's site files: site.toml, codes.yaml, templates/, icons/):
  default  the repo's icon_map.yaml (11 icons) with every URL pointed at the local origin
  large    --icons (default 500; 40 with --quick) 64 px PNGs from the emoji corpora that
           bench/encode_settings.py fetches with `npm pack` into bench/.cache/ (emoji-datasource-google
           and -twitter, half each, its deterministic sample), a generated icon_map.yaml
           ("E0000 google 1f600": http://127.0.0.1:PORT/...) and codes.yaml (every icon is a reward of
           some code), the repo's templates (index.html has a legend of every icon: one <picture> each)

Every icon source is served by a local origin (ThreadingHTTPServer on 127.0.0.1, in a thread) that
sends an ETag and answers a matching If-None-Match with 304; the site.toml copy sets
`[fetch] allow_private = true` and a generous deadline, and drops any [indexnow] section.

Scenarios, in this order in every repeat (each repeat starts from a fresh copy, so it measures
the same thing):
  cold      empty .cache/, no dist/, --jobs <cores>  -> every icon encoded, a release published
  noop      the same again, nothing changed           -> "nothing changed", encoded=0, written=0 (all 304)
  icon      one icon mirrored on the origin           -> encoded=1, published
  code      one code appended to codes.yaml           -> encoded=0, published
  cold-j1   (large site only) a fresh copy, --jobs 1  -> the speed-up is cold-j1 / cold

Targets: no-op <= 0.5 s (default) and <= 1.5 s (large); cold speed-up (jobs 1 -> all cores) >= 1.7x.
A missed no-op target is followed by one profiled no-op (cProfile + -X importtime) to show where
the time goes (also with --profile).

Usage (2 cores):
  python bench/build_times.py --quick      # 1 run, large = 40 icons, ~25 s
  python bench/build_times.py              # 3 runs, large = 500 icons, ~6.5 min idle (12 min at load ~4)
  python bench/build_times.py --runs 5 --icons 800 --sites large --profile

Writes bench/results/build_times.json. The load average is recorded: on a loaded machine the
times (and above all the speed-up) are not comparable with an idle one.
"""

from __future__ import annotations

import argparse
import cProfile  # noqa: F401 - used through `python -m cProfile`; imported so a missing module fails early
import datetime as dt
import hashlib
import io
import json
import os
import platform
import pstats
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "build_times.json"
CACHE = HERE / ".cache"
TARGETS = {"noop_default_s": 0.5, "noop_large_s": 1.5, "cold_speedup": 1.7}
BUILD_TIMEOUT = 3600.0  # seconds, one build process; it is killed (its whole process group) after this

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))


# ---- the local origin ---------------------------------------------------------------------------


class Origin(ThreadingHTTPServer):
    """Serves path -> PNG bytes with a strong ETag; If-None-Match with that ETag gets a 304."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default 5 drops SYNs under 8 parallel fetches: +1 s retransmits

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.counts = {"200": 0, "304": 0, "404": 0}
        self.thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def put(self, path: str, data: bytes) -> None:
        with self.lock:
            self.files[path] = data

    def get(self, path: str) -> bytes | None:
        with self.lock:
            return self.files.get(path)

    def count(self, status: str) -> None:
        with self.lock:
            self.counts[status] = self.counts.get(status, 0) + 1

    def take_counts(self) -> dict[str, int]:
        with self.lock:
            counts, self.counts = self.counts, {"200": 0, "304": 0, "404": 0}
        return counts

    def __enter__(self) -> Origin:
        self.thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.1}, name="bench-origin", daemon=True
        )
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()  # returns once serve_forever has left its loop (<= poll_interval)
        self.server_close()
        if self.thread is not None:
            self.thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    server: Origin
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a connection may sit idle

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        data = self.server.get(self.path.split("?")[0])
        if data is None:
            self.server.count("404")
            self._reply(404, b"not found\n", {"Content-Type": "text/plain"})
            return
        etag = f'"{hashlib.sha256(data).hexdigest()[:20]}"'
        asked = [t.strip() for t in self.headers.get("If-None-Match", "").split(",") if t.strip()]
        if etag in asked or "*" in asked:
            self.server.count("304")
            self._reply(304, b"", {"ETag": etag}, body=False)
            return
        self.server.count("200")
        self._reply(200, data, {"Content-Type": "image/png", "ETag": etag, "Cache-Control": "no-cache"})

    def _reply(self, status: int, data: bytes, headers: dict[str, str], body: bool = True) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if body:
            self.send_header("Content-Length", str(len(data)))
        if self.headers.get("Connection", "").lower() == "close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


# ---- the sites ----------------------------------------------------------------------------------


@dataclass
class Site:
    """A prepared site folder (the seed) that every repeat copies, and what the origin must serve."""

    name: str
    seed: Path
    sources: dict[str, bytes]  # origin path -> original bytes
    icon_names: list[str]
    change_path: str  # the origin path of the icon the "icon" scenario mirrors
    changed_bytes: bytes
    code_icons: list[str]  # rewards of the code the "code" scenario appends
    codes: int = 0
    notes: list[str] = field(default_factory=list)
    last_dir: Path | None = None  # the last repeat's folder after its "code" build (the origin changed)


def site_toml(source: Path) -> str:
    """The repo's site.toml with [fetch] allow_private = true, a generous deadline, no [indexnow]."""
    settings = tomllib.loads(source.read_text(encoding="utf-8")) if source.exists() else {}
    settings.pop("indexnow", None)  # a benchmark must never ping anything
    fetch = settings.setdefault("fetch", {})
    fetch["allow_private"] = True
    fetch["deadline"] = max(float(fetch.get("deadline", 0)), 600.0)
    fetch["timeout"] = max(float(fetch.get("timeout", 0)), 30.0)
    return dump_toml(settings)


def dump_toml(settings: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"site.toml value {v!r} is not supported by the benchmark's writer")

    lines = [f"{k} = {value(v)}" for k, v in settings.items() if not isinstance(v, dict)]
    for table, items in settings.items():
        if isinstance(items, dict):
            lines += ["", f"[{table}]"] + [f"{k} = {value(v)}" for k, v in items.items()]
    return "\n".join(lines).lstrip() + "\n"


def copy_common(target: Path) -> None:
    target.mkdir(parents=True)
    shutil.copytree(ROOT / "templates", target / "templates")
    (target / "site.toml").write_text(site_toml(ROOT / "site.toml"), encoding="utf-8")


def mirrored(data: bytes) -> bytes:
    """The same icon flipped left-right (top-bottom if that changes nothing): new bytes, new pixels."""
    from PIL import Image, ImageOps

    image = Image.open(io.BytesIO(data))
    image.load()
    image = image.convert("RGBA")
    flipped = ImageOps.mirror(image)
    if flipped.tobytes() == image.tobytes():
        flipped = ImageOps.flip(image)
    out = io.BytesIO()
    flipped.save(out, "PNG")
    return out.getvalue()


def make_default(root: Path, origin: Origin) -> Site:
    """The repo's site, its icon URLs pointed at the origin (which serves icons/<slug>.png)."""
    from pipeline.config import load_icon_map

    seed = root / "default"
    copy_common(seed)
    shutil.copytree(ROOT / "icons", seed / "icons")
    shutil.copy2(ROOT / "codes.yaml", seed / "codes.yaml")
    text = (ROOT / "icon_map.yaml").read_text(encoding="utf-8")
    specs = load_icon_map(ROOT / "icon_map.yaml")
    sources: dict[str, bytes] = {}
    for spec in specs:
        path = f"/default/{spec.slug}.png"
        sources[path] = (ROOT / "icons" / f"{spec.slug}.png").read_bytes()
        text = re.sub(rf"(?<![\w/.:-]){re.escape(spec.url)}(?![\w/.-])", origin.base + path, text)
    (seed / "icon_map.yaml").write_text(text, encoding="utf-8")
    check = load_icon_map(seed / "icon_map.yaml")
    if [s.url for s in check] != [origin.base + f"/default/{s.slug}.png" for s in specs]:
        raise SystemExit("build_times: could not point every icon_map.yaml URL at the local origin")
    changed = specs[len(specs) // 2]
    change_path = f"/default/{changed.slug}.png"
    codes = sum(
        1 for line in (seed / "codes.yaml").read_text(encoding="utf-8").splitlines() if re.match(r"\s*-\s+code:", line)
    )
    return Site(
        "default",
        seed,
        sources,
        [s.name for s in specs],
        change_path,
        mirrored(sources[change_path]),
        [specs[0].name, specs[-1].name],
        codes,
    )


def emoji_sample(count: int) -> tuple[list[tuple[str, str, Path]], dict[str, Any]]:
    """(set, file name, path) of `count` 64 px emoji PNGs, half per set: encode_settings' own
    deterministic sample (it fetches the packages with `npm pack` into bench/.cache/ if needed)."""
    try:
        import encode_settings  # bench/encode_settings.py

        return encode_settings.npm_corpus(count)
    except ImportError as error:  # its imports broke: read its cache directly, same sample order
        sets = ("google", "twitter")
        items: list[tuple[str, str, Path]] = []
        for i, emoji_set in enumerate(sets):
            folder = CACHE / "npm" / emoji_set
            if not (folder / ".complete").exists():
                raise RuntimeError(
                    f"bench/encode_settings.py cannot be imported ({error}) and {folder} is not filled; run it once"
                ) from None
            files = sorted(
                folder.glob("*.png"), key=lambda p: hashlib.sha256(f"{emoji_set}/{p.name}".encode()).hexdigest()
            )
            k = count // len(sets) + (1 if i < count % len(sets) else 0)
            items += [(emoji_set, p.name, p) for p in files[:k]]
        return items, {"fallback": str(error)}


def make_large(root: Path, origin: Origin, count: int) -> Site:
    seed = root / "large"
    copy_common(seed)
    (seed / "icons").mkdir()
    items, meta = emoji_sample(count)
    if len(items) < count:
        raise RuntimeError(f"the emoji corpora hold only {len(items)} icons; {count} asked")
    sources: dict[str, bytes] = {}
    names: list[str] = []
    lines = [
        "# Generated by bench/build_times.py: emoji from the npm packages emoji-datasource-google and",
        "# emoji-datasource-twitter 16.0.0 (64 px), served by the benchmark's local origin.",
    ]
    for index, (emoji_set, file_name, path) in enumerate(items):
        stem = Path(file_name).stem
        # Numbered: past ~4,000 icons two long sequence names would truncate to the same file name.
        name = f"E{index:04d} {emoji_set} {stem}"
        url_path = f"/npm/{emoji_set}/{file_name}"
        sources[url_path] = path.read_bytes()
        names.append(name)
        lines.append(
            f"{json.dumps(name)}:\n  url: {origin.base}{url_path}\n  alt: {json.dumps(f'{emoji_set} emoji {stem}')}"
        )
    (seed / "icon_map.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # Every icon is a reward of some code (5 per code), so the code rows reference them all too.
    per_code, codes = 5, ["game: Emoji benchmark", "codes:"]
    start = dt.date(2026, 1, 1)
    for n, first in enumerate(range(0, len(names), per_code)):
        added = start + dt.timedelta(days=n % 300)
        codes += [f"  - code: BENCH{n:04d}", f"    added: {added.isoformat()}"]
        if n % 3 == 0:  # a third of them expired
            codes.append(f"    expires: {(added + dt.timedelta(days=14)).isoformat()}")
        if n % 4 == 0:
            codes.append(f"    note: Benchmark code number {n}")
        codes.append("    rewards:")
        codes += [
            f"      - {{icon: {json.dumps(name)}, amount: {(i + 1) * 10}}}"
            for i, name in enumerate(names[first : first + per_code])
        ]
    (seed / "codes.yaml").write_text("\n".join(codes) + "\n", encoding="utf-8")
    changed = list(sources)[len(sources) // 2]
    site = Site(
        "large",
        seed,
        sources,
        names,
        changed,
        mirrored(sources[changed]),
        [names[0], names[-1]],
        len(range(0, len(names), per_code)),
    )
    site.notes.append(
        "sample: "
        + ", ".join(f"{s} {m.get('sampled')}/{m.get('available')}" for s, m in meta.items() if isinstance(m, dict))
    )
    return site


def append_code(site_dir: Path, icons: list[str]) -> None:
    text = (site_dir / "codes.yaml").read_text(encoding="utf-8")
    entry = [
        f"  - code: BENCHADDED{dt.date.today():%Y%m%d}",
        f"    added: {dt.date.today().isoformat()}",
        "    note: added by the benchmark",
        "    rewards:",
    ]
    entry += [f"      - {{icon: {json.dumps(name)}, amount: {i + 1}}}" for i, name in enumerate(icons)]
    (site_dir / "codes.yaml").write_text(text.rstrip("\n") + "\n" + "\n".join(entry) + "\n", encoding="utf-8")


# ---- one build ----------------------------------------------------------------------------------


def parse_summary(line: str) -> dict[str, Any]:
    """The fields of `--summary line`, each found on its own so a new field does not break the rest."""
    out: dict[str, Any] = {"outcome": line.split(";")[0].strip()}
    for key, pattern, cast in (
        ("encoded", r"\bencoded=(\d+)", int),
        ("stale", r"\bstale=(\d+)", int),
        ("files_written", r"\bwritten=(\d+) files", int),
        ("bytes_written", r"\bwritten=\d+ files/(\d+)B", int),
        ("changed", r"\bchanged=([^;\s]*)", str),
        ("reported_s", r"\s([\d.]+)s \[", float),
    ):
        found = re.search(pattern, line)
        out[key] = cast(found.group(1)) if found else None
    stages = re.search(r"\[([^\]]*)\]\s*$", line)
    out["stages"] = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", stages.group(1))} if stages else {}
    out["published"] = out["outcome"].startswith("published")
    out["nothing_changed"] = out["outcome"].startswith("nothing changed")
    return out


def build(site_dir: Path, *extra: str, prefix: tuple[str, ...] = (), timeout: float = BUILD_TIMEOUT) -> dict[str, Any]:
    """One `python -m pipeline build --summary line` process; wall time from before the fork to its exit."""
    command = [sys.executable, *prefix, "-m", "pipeline", "build", "--summary", "line", "--site", str(site_dir), *extra]
    env = {k: v for k, v in os.environ.items() if k != "BUILDER_CRASH_AT"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    busy_before = machine_busy_s()
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise RuntimeError(f"build timed out after {timeout:g}s: {' '.join(command[-6:])}") from None
    wall = time.perf_counter() - started
    busy = machine_busy_s() - busy_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise RuntimeError(f"build failed (exit {process.returncode}) in {site_dir}:\n{stderr.strip()[-3000:]}")
    lines = [line for line in stdout.splitlines() if line.strip()]
    record = parse_summary(lines[-1] if lines else "")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    record.update(
        wall_s=round(wall, 4),
        load_1m=round(load, 2),
        summary=lines[-1] if lines else "",
        cpu_s=round(cpu, 3),
        # cores kept busy by everything else on the machine meanwhile (from /proc/stat)
        others_cores=round(max(0.0, busy - cpu) / wall, 2) if busy == busy and wall > 0 else None,
        warnings=[line for line in stderr.splitlines() if "warning" in line][:5],
    )
    return record


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent not idle since boot (all cores; /proc/stat), NaN if unknown."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
    return busy / os.sysconf("SC_CLK_TCK")


def _kill_group(process: subprocess.Popen[str]) -> None:
    """The build and its encode workers: SIGTERM to its own process group, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ---- scenarios ----------------------------------------------------------------------------------

EXPECT = {
    "cold": "every icon encoded, published",
    "noop": "nothing changed, encoded=0, written=0, every source 304",
    "icon": "encoded=1, published",
    "code": "encoded=0, published",
    "cold-j1": "every icon encoded, published",
}


def check(scenario: str, record: dict[str, Any], icons: int) -> list[str]:
    problems = []
    e, w = record.get("encoded"), record.get("files_written")
    origin = record.get("origin", {})
    if scenario in ("cold", "cold-j1"):
        if e != icons:
            problems.append(f"encoded={e}, expected {icons}")
        if not record["published"]:
            problems.append("not published")
    elif scenario == "noop":
        if not record["nothing_changed"]:
            problems.append(f"outcome {record['outcome']!r}")
        if e != 0 or w != 0:
            problems.append(f"encoded={e} written={w}")
        if origin.get("304") != icons:
            problems.append(f"origin answered {origin}")
    elif scenario == "icon":
        if e != 1:
            problems.append(f"encoded={e}, expected 1")
        if not record["published"]:
            problems.append("not published")
    elif scenario == "code":
        if e != 0:
            problems.append(f"encoded={e}, expected 0")
        if not record["published"]:
            problems.append("not published")
    return problems


def run_site(
    site: Site,
    origin: Origin,
    work: Path,
    runs: int,
    cores: int,
    with_j1: bool,
    log: Any,
    capacity: list[dict[str, float]],
) -> dict[str, list[dict[str, Any]]]:
    records: dict[str, list[dict[str, Any]]] = {s: [] for s in EXPECT if with_j1 or s != "cold-j1"}
    icons = len(site.icon_names)

    def one(scenario: str, site_dir: Path, *extra: str) -> None:
        origin.take_counts()
        record = build(site_dir, *extra)
        record["origin"] = origin.take_counts()
        record["problems"] = check(scenario, record, icons)
        records[scenario].append(record)
        stages = " ".join(f"{k}={v:.2f}" for k, v in record["stages"].items())
        flag = "" if not record["problems"] else "  !! " + "; ".join(record["problems"])
        others = f"  others {record['others_cores']:.1f} cores" if record.get("others_cores") is not None else ""
        log(
            f"  {site.name:7} {scenario:7} {record['wall_s']:8.2f}s wall  cpu {record['cpu_s']:7.2f}s{others}  "
            f"encoded={record['encoded']} written={record['files_written']}  [{stages}]{flag}"
        )

    for repeat in range(runs):
        for path, data in site.sources.items():  # the origin as it was: the change undone
            origin.put(path, data)
        site_dir = work / f"{site.name}-{repeat}"
        shutil.copytree(site.seed, site_dir)
        one("cold", site_dir, "--jobs", str(cores))
        one("noop", site_dir)
        origin.put(site.change_path, site.changed_bytes)
        one("icon", site_dir)
        append_code(site_dir, site.code_icons)
        one("code", site_dir)
        if site.last_dir is not None:
            shutil.rmtree(site.last_dir)
        site.last_dir = site_dir  # kept for the profile: a build there now is a no-op
        if with_j1:
            capacity.append(cpu_capacity(cores))
            log(
                f"  {'':7} {'cpu':7} capacity {capacity[-1]['capacity']:.2f} of {cores} cores "
                f"(a CPU-bound loop: {cores} copies at once vs one alone)"
            )
            for path, data in site.sources.items():
                origin.put(path, data)
            site_dir = work / f"{site.name}-{repeat}-j1"
            shutil.copytree(site.seed, site_dir)
            one("cold-j1", site_dir, "--jobs", "1")
            shutil.rmtree(site_dir)
    for path, data in site.sources.items():
        origin.put(path, data)
    return records


CPU_LOOP = (
    "import time\nt = time.process_time()\nx = 0\nfor i in range({n}): x += i * i\nprint(time.process_time() - t)"
)


def cpu_capacity(cores: int, n: int = 12_000_000, tries: int = 2) -> dict[str, float]:
    """How many cores this machine gives us right now: one CPU-bound process alone, then `cores`
    copies at once, each the best of `tries`; capacity = cores * t_alone / t_together (about
    `cores` on an idle machine). The cold speed-up of the build cannot exceed it."""

    def run(copies: int) -> float:
        started = time.perf_counter()
        procs = [
            subprocess.Popen([sys.executable, "-c", CPU_LOOP.format(n=n)], stdout=subprocess.DEVNULL)
            for _ in range(copies)
        ]
        for p in procs:
            p.wait(300)
        return time.perf_counter() - started

    alone = min(run(1) for _ in range(tries))
    together = min(run(cores) for _ in range(tries))
    return {
        "alone_s": round(alone, 3),
        "together_s": round(together, 3),
        "capacity": round(cores * alone / together, 3),
        "load_1m": round(os.getloadavg()[0], 2),
    }


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [r["wall_s"] for r in records]
    stage_names = list(dict.fromkeys(k for r in records for k in r["stages"]))
    return {
        "n": len(records),
        "median_wall_s": statistics.median(walls),
        "min_wall_s": min(walls),
        "max_wall_s": max(walls),
        "median_reported_s": statistics.median(r["reported_s"] or 0 for r in records),
        "median_cpu_s": statistics.median(r["cpu_s"] for r in records),
        "median_others_cores": statistics.median(r.get("others_cores") or 0.0 for r in records),
        "median_stages_s": {
            k: round(statistics.median(r["stages"].get(k, 0.0) for r in records), 4) for k in stage_names
        },
        "encoded": [r["encoded"] for r in records],
        "files_written": [r["files_written"] for r in records],
        "bytes_written": [r["bytes_written"] for r in records],
        "outcome": records[-1]["outcome"],
        "problems": sorted({p for r in records for p in r["problems"]}),
    }


# ---- profiling ----------------------------------------------------------------------------------


def profile_noop(site: Site, origin: Origin, log: Any) -> dict[str, Any]:
    """Where a no-op build's time goes: the last repeat's folder (a build there is a no-op) built
    plainly, under cProfile, and under -X importtime; and the bare interpreter start for scale."""
    assert site.last_dir is not None
    for path, data in site.sources.items():
        origin.put(path, data)
    origin.put(site.change_path, site.changed_bytes)  # the origin as the last "code" build saw it
    site_dir = site.last_dir
    plain = build(site_dir)
    if not plain["nothing_changed"]:
        raise RuntimeError(f"the profiled build was not a no-op: {plain['summary']}")
    stats_file = site_dir.parent / f"{site.name}-noop.prof"
    profiled = build(site_dir, prefix=("-m", "cProfile", "-o", str(stats_file)))
    imports = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pipeline", "build", "--summary", "line", "--site", str(site_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    bare = _median_wall([sys.executable, "-c", "pass"])
    cli_only = _median_wall([sys.executable, "-c", "import pipeline.cli"])
    stats = pstats.Stats(str(stats_file))
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{_short(file)}:{line}({func})",
                "calls": nc,
                "tottime_s": round(tt, 4),
                "cumtime_s": round(ct, 4),
            }
        )
    by_cum = sorted(rows, key=lambda x: -x["cumtime_s"])
    by_tot = sorted(rows, key=lambda x: -x["tottime_s"])
    modules = []
    for line in imports.stderr.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if found:
            modules.append(
                {
                    "module": found.group(4),
                    "self_ms": int(found.group(1)) / 1000,
                    "cumulative_ms": int(found.group(2)) / 1000,
                    "depth": (len(found.group(3)) - 1) // 2,
                }
            )
    top_level = sorted((m for m in modules if m["depth"] == 0), key=lambda m: -m["cumulative_ms"])
    pipeline_mods = sorted(
        (m for m in modules if m["module"].startswith("pipeline")), key=lambda m: -m["cumulative_ms"]
    )
    out = {
        "site": site.name,
        "noop_wall_s": plain["wall_s"],
        "noop_stages_s": plain["stages"],
        "noop_reported_s": plain["reported_s"],
        "profiled_wall_s": profiled["wall_s"],
        "python_bare_start_s": bare,
        "python_start_plus_import_cli_s": cli_only,
        "imports_total_ms": round(sum(m["self_ms"] for m in modules), 1),
        "modules_imported": len(modules),
        "top_imports_ms": top_level[:20],
        "pipeline_imports_ms": pipeline_mods[:15],
        "top_cumulative": by_cum[:40],
        "top_self": by_tot[:25],
    }
    stages = " ".join(f"{k}={v:.2f}" for k, v in plain["stages"].items())
    log(
        f"\n  profile of a no-op build of {site.name}: {plain['wall_s']:.2f}s wall; bare interpreter {bare:.2f}s, "
        f"interpreter + import pipeline.cli {cli_only:.2f}s; the summary (from main() on) says "
        f"{plain['reported_s']}s, of which stages {sum(plain['stages'].values()):.2f}s [{stages}]"
    )
    log(
        f"    -X importtime: {len(modules)} modules, {out['imports_total_ms']:.0f} ms in all; top level (cumulative ms): "
        + ", ".join(f"{m['module']} {m['cumulative_ms']:.0f}" for m in top_level[:10])
    )
    log("    cProfile (cumulative s, self s, calls):")
    shown = 0
    for row in by_cum:
        if row["function"].startswith(("~", "<frozen", "<string>", "{built-in method builtins.exec")):
            continue
        log(f"      {row['cumtime_s']:7.3f}  {row['tottime_s']:7.3f}  {row['calls']:>7}  {row['function']}")
        shown += 1
        if shown == 25:
            break
    return out


def _median_wall(command: list[str], n: int = 5) -> float:
    walls = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(command, capture_output=True, cwd=ROOT, timeout=120, check=True)
        walls.append(time.perf_counter() - t)
    return round(statistics.median(walls), 4)


def _short(file: str) -> str:
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file.replace(str(ROOT) + "/", "")


# ---- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run and a small large site (40 icons)")
    parser.add_argument(
        "--runs", type=int, default=None, help="repeats per scenario; the median is reported (default 3)"
    )
    parser.add_argument(
        "--icons", type=int, default=None, help="icons in the large site (default 500; 40 with --quick)"
    )
    parser.add_argument("--sites", default="default,large", help="which sites, comma-separated (default: both)")
    parser.add_argument(
        "--profile", action="store_true", help="profile a no-op build of each site even when it meets its target"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    count = args.icons or (40 if args.quick else 500)
    wanted = [s.strip() for s in args.sites.split(",") if s.strip()]
    if unknown := set(wanted) - {"default", "large"}:
        parser.error(f"unknown site(s): {', '.join(sorted(unknown))}")
    cores = os.cpu_count() or 1

    started = time.perf_counter()
    load_before = os.getloadavg()
    log = lambda text: print(text, flush=True)  # noqa: E731
    log(
        f"build times: {runs} run(s) per scenario, sites {', '.join(wanted)} (large = {count} icons), "
        f"{cores} cores, load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
    )
    results: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "runs": runs,
        "machine": {"cpus": cores, "platform": platform.platform(), "python": platform.python_version()},
        "git_head": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "pipeline_modified": bool(
            subprocess.run(
                ["git", "status", "--porcelain", "pipeline"], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip()
        ),
        "command": "python -m pipeline build --summary line --site S [--jobs N]; wall time of the whole process",
        "targets": TARGETS,
        "sites": {},
        "profiles": {},
    }
    work = Path(tempfile.mkdtemp(prefix="bench-build-times-"))
    status = 0
    try:
        with Origin() as origin:
            log(f"origin on {origin.base}; work in {work}")
            sites: list[Site] = []
            capacity: list[dict[str, float]] = []
            results["cpu_capacity"] = capacity
            for name in wanted:
                try:
                    sites.append(make_default(work, origin) if name == "default" else make_large(work, origin, count))
                except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                    log(f"  site {name} skipped: {error}")
                    results["sites"][name] = {"skipped": str(error)}
                    status = 1
            for site in sites:
                for path, data in site.sources.items():
                    origin.put(path, data)
                log(
                    f"\n{site.name}: {len(site.icon_names)} icons, {site.codes} codes"
                    + (f" ({'; '.join(site.notes)})" if site.notes else "")
                )
                records = run_site(
                    site, origin, work, runs, cores, with_j1=site.name == "large", log=log, capacity=capacity
                )
                results["sites"][site.name] = {
                    "icons": len(site.icon_names),
                    "codes": site.codes,
                    "notes": site.notes,
                    "changed_icon": site.change_path,
                    "expect": {k: EXPECT[k] for k in records},
                    "scenarios": {k: {**summarise(v), "runs": v} for k, v in records.items()},
                }
            results["load_average_after_builds"] = os.getloadavg()
            evaluate(results)
            print_report(results, log)
            for site in sites:
                target = next((t for t in results["verdicts"] if t["name"] == f"noop_{site.name}_s"), None)
                if args.profile or (target and not target["pass"]):
                    try:
                        results["profiles"][site.name] = profile_noop(site, origin, log)
                    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                        log(f"  profiling {site.name} failed: {error}")
    except RuntimeError as error:
        log(f"build times: {error}")
        status = 1
        results["error"] = str(error)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_average"] = {"before": load_before, "after": os.getloadavg()}
    results["seconds_total"] = round(time.perf_counter() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    log(
        f"\nload average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (1 min); "
        f"total {results['seconds_total']:.0f}s; wrote "
        f"{args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}"
    )
    if any(s.get("problems") for site in results["sites"].values() for s in site.get("scenarios", {}).values()):
        status = status or 1
    return status


def evaluate(results: dict[str, Any]) -> None:
    verdicts = []
    large_icons = results["sites"].get("large", {}).get("icons")
    quick = (
        (
            f" (quick: {results['runs']} run(s)"
            + (f", large site of {large_icons} icons" if large_icons else "")
            + "; indicative only)"
        )
        if results["quick"]
        else ""
    )
    for name, limit_key in (("default", "noop_default_s"), ("large", "noop_large_s")):
        site = results["sites"].get(name, {})
        scenario = site.get("scenarios", {}).get("noop")
        if not scenario:
            continue
        value, limit = scenario["median_wall_s"], TARGETS[limit_key]
        busy = scenario.get("median_others_cores") or 0.0
        note = quick + (f" (other processes kept {busy:.1f} cores busy meanwhile)" if busy >= 0.3 else "")
        verdicts.append(
            {
                "name": limit_key,
                "label": f"no-op build, {name} site ({site['icons']} icons)",
                "value": value,
                "limit": limit,
                "unit": "s",
                "op": "<=",
                "pass": value <= limit,
                "miss_by": max(0.0, value - limit),
                "note": note,
                "others_cores": busy,
            }
        )
    large = results["sites"].get("large", {}).get("scenarios", {})
    if "cold" in large and "cold-j1" in large:
        j1, jn = large["cold-j1"], large["cold"]
        ratio = j1["median_wall_s"] / jn["median_wall_s"]
        per_repeat = [a["wall_s"] / b["wall_s"] for a, b in zip(j1["runs"], jn["runs"])]
        encode_ratio = (
            j1["median_stages_s"].get("encode", 0) / jn["median_stages_s"].get("encode", 1)
            if jn["median_stages_s"].get("encode")
            else None
        )
        # Amdahl: the part outside the encode stage does not get faster with more workers
        serial = jn["median_wall_s"] - jn["median_stages_s"].get("encode", 0.0)
        results["speedup"] = {
            "jobs1_median_s": j1["median_wall_s"],
            "jobsN_median_s": jn["median_wall_s"],
            "cores": results["machine"]["cpus"],
            "ratio": ratio,
            "per_repeat": per_repeat,
            "encode_stage_ratio": encode_ratio,
            "outside_encode_s": {
                "jobs1": j1["median_wall_s"] - j1["median_stages_s"].get("encode", 0.0),
                "jobsN": serial,
            },
            "cpu_s": {"jobs1": j1["median_cpu_s"], "jobsN": jn["median_cpu_s"]},
            "load_1m": {"jobs1": [r["load_1m"] for r in j1["runs"]], "jobsN": [r["load_1m"] for r in jn["runs"]]},
        }
        capacity = [c["capacity"] for c in results.get("cpu_capacity", [])]
        if capacity:
            sp = results["speedup"]
            sp["cpu_capacity_median"] = statistics.median(capacity)
            sp["share_of_capacity"] = ratio / sp["cpu_capacity_median"]
        verdicts.append(
            {
                "name": "cold_speedup",
                "label": f"cold build speed-up, --jobs 1 -> --jobs {results['machine']['cpus']} "
                f"({results['sites']['large']['icons']} icons)",
                "value": ratio,
                "limit": TARGETS["cold_speedup"],
                "unit": "x",
                "op": ">=",
                "pass": ratio >= TARGETS["cold_speedup"],
                "miss_by": max(0.0, TARGETS["cold_speedup"] - ratio),
                "note": quick
                + (
                    f" (the machine gave {statistics.median(capacity):.2f} cores to a CPU-bound loop)"
                    if capacity
                    else ""
                ),
            }
        )
    results["verdicts"] = verdicts


def print_report(results: dict[str, Any], log: Any) -> None:
    log(f"\n== build times: median of {results['runs']} run(s); wall = the whole process, start included ==")
    head = (
        f"{'site':8} {'scenario':8} {'wall s':>8} {'min':>7} {'max':>7} {'cpu s':>7} {'others':>6} {'enc':>4} "
        f"{'files':>5} {'bytes':>9}  stages (median s)"
    )
    log(head)
    log("-" * (len(head) + 40))
    log("(cpu s: the build and its workers; others: cores kept busy by every other process meanwhile, from /proc/stat)")
    for name, site in results["sites"].items():
        if "skipped" in site:
            log(f"{name:8} skipped: {site['skipped']}")
            continue
        for scenario, s in site["scenarios"].items():
            stages = " ".join(f"{k}={v:.2f}" for k, v in s["median_stages_s"].items())
            flag = "" if not s["problems"] else "  !! " + "; ".join(s["problems"])
            log(
                f"{name:8} {scenario:8} {s['median_wall_s']:8.2f} {s['min_wall_s']:7.2f} {s['max_wall_s']:7.2f} "
                f"{s['median_cpu_s']:7.2f} {s.get('median_others_cores', 0):6.1f} "
                f"{statistics.median(x or 0 for x in s['encoded']):>4.0f} "
                f"{statistics.median(x or 0 for x in s['files_written']):>5.0f} "
                f"{statistics.median(x or 0 for x in s['bytes_written']):>9,.0f}  {stages}{flag}"
            )
    if "speedup" in results:
        sp, cores = results["speedup"], results["machine"]["cpus"]
        encode = f"; encode stage alone {sp['encode_stage_ratio']:.2f}x" if sp["encode_stage_ratio"] else ""
        log(
            f"\ncold speed-up on the large site: --jobs 1 {sp['jobs1_median_s']:.1f}s / --jobs {cores} "
            f"{sp['jobsN_median_s']:.1f}s = {sp['ratio']:.2f}x (per repeat: "
            f"{', '.join(f'{x:.2f}' for x in sp['per_repeat'])}{encode}; outside the encode stage "
            f"{sp['outside_encode_s']['jobs1']:.1f}s vs {sp['outside_encode_s']['jobsN']:.1f}s; "
            f"CPU {sp['cpu_s']['jobs1']:.0f}s vs {sp['cpu_s']['jobsN']:.0f}s)"
        )
        if "cpu_capacity_median" in sp:
            log(
                f"  the machine gave {sp['cpu_capacity_median']:.2f} of {cores} cores to a CPU-bound loop at the time "
                f"(median of {len(results['cpu_capacity'])}); the build got {sp['share_of_capacity']:.0%} of that"
            )
    log("\ntargets:")
    for v in results["verdicts"]:
        value = f"{v['value']:.2f}{v['unit']}"
        miss = (
            ""
            if v["pass"]
            else f", missed by {v['miss_by']:.2f}{v['unit']} ({v['value'] / v['limit'] - 1:+.0%})"
            if v["unit"] == "s"
            else ("" if v["pass"] else f", missed by {v['miss_by']:.2f}x")
        )
        log(
            f"  [{'PASS' if v['pass'] else 'MISS'}] {v['label']}: {value} (target {v['op']} {v['limit']}{v['unit']}{miss}){v['note']}"
        )


if __name__ == "__main__":
    sys.exit(main())
