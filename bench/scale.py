"""The scaling curve: how a build grows from 11 to 5,000 icons, in time, CPU, memory and bytes.

For each size, a site is built as four whole `python -m pipeline build --summary line --site S`
processes (interpreter start included), one after the other in one folder:
  cold   empty .cache/, no dist/, --jobs <cores>   every icon encoded, a release published
  noop   nothing changed                             every source answers 304, nothing written
  icon   one icon changed on the origin (mirrored)   one encode, published
  code   one code appended to codes.yaml             no encode, published
noop/icon/code are repeated --runs times (a different icon and a new code each time) and cold
--runs times below 1,000 icons, once from 1,000 on; every figure is the median.

Sites: 11 is the repo's own site (build_times.make_default: its icon URLs pointed at a local
origin); any other size is build_times.make_large: that many 64 px emoji from the npm corpora in
bench/.cache/npm (3,786 x 2 icons; bench/encode_settings.py fetches them with `npm pack` once),
served by build_times.Origin (ETag, 304 on If-None-Match).

Per build: wall time (fork to exit); CPU (user + sys of the build and every process it reaped,
i.e. its encode workers: os.wait4 on the build); peak RSS of the build process itself and,
separately, the largest of its children (read by the build at exit from getrusage RUSAGE_SELF and
RUSAGE_CHILDREN: a sitecustomize.py put on the build's PYTHONPATH registers that atexit hook and
nothing else; the build's own code is untouched); and after the cold build, the bytes of the
release's icons per format (dist/current/assets/icons/*). A child started with vfork + exec (as
subprocess and multiprocessing's spawn start them) reports at least its parent's RSS at the time:
at exec, Linux counts the high-water mark of the address space it leaves. So the children's figure
is an upper bound, and a no-op build showing one reveals a process started on the no-op path
(at the time of writing: `ldconfig -p`, run by ctypes.util.find_library when trio is imported). Each build is killed, with its whole
process group, past a time limit (600 s + 2 s per icon).

Growth: for each scenario a least-squares line time = a + b * icons, the marginal cost per icon
between the two smallest and the two largest sizes and its ratio, and the slope of
log(t - t_smallest) against log(icons - icons_smallest) over the sizes whose time is over 1.1x the
smallest's (a smaller rise is noise): 1 for linear growth, 2 for quadratic; above 1.15 the
scenario is flagged as growing faster than linearly. Wall time and CPU time each get their fit.

Targets of issue 14, evaluated where the size was measured: 500 icons: no-op <= 0.5 s wall, one
icon changed <= 1.0 s; 5,000 icons: no-op <= 3 s, cold build peak RSS (the build process) <= 300 MB.

Usage (2 cores):
  python bench/scale.py --quick                # 11, 100, 500 icons, 2 runs (1 cold): a few minutes idle
  python bench/scale.py                        # 11 .. 5,000, 3 runs: 30-60 min (the 5,000 cold build alone 15-30 min)
  python bench/scale.py --sizes 11,100,1000 --runs 5
  python bench/scale.py --replot               # redo fits, targets and charts from bench/results/scale.json

Writes bench/results/scale.json (--output) and four SVG charts (time, CPU, peak RSS, bytes per
format against icons): into bench/figures/ for a run with the default --output (the charts the
README shows), else next to the JSON (so `--quick`, which run.py points at bench/results/quick/,
never overwrites the committed ones). Needs only the package and the `bench` extra.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import charts  # noqa: E402
from build_times import (  # noqa: E402 - bench/build_times.py: the sites, the origin, the summary and its checks
    Origin,
    Site,
    check,
    make_default,
    make_large,
    mirrored,
    parse_summary,
)

RESULTS = HERE / "results" / "scale.json"
FIGURES = HERE / "figures"  # committed: the charts of the last full run, shown in the README
SIZES = (11, 100, 500, 1000, 5000)
QUICK_SIZES = (11, 100, 500)
DEFAULT_SITE_ICONS = 11  # the repo's icon_map.yaml; this size is the repo's own site
SCENARIOS = ("cold", "noop", "icon", "code")
LABELS = {"cold": "cold build", "noop": "no-op", "icon": "one icon changed", "code": "one code added"}
COLOURS = dict(zip(SCENARIOS, charts.PALETTE))
SUPERLINEAR_SLOPE = 1.15
# A size enters the slope only if its time exceeds the smallest size's by this share: a rise of
# 0.01 s over 0.54 s is noise, and its logarithm would swing the slope (measured: 2.1 from noise).
RISE_OVER_NOISE = 0.10
FORMATS = {"avif": "AVIF", "webp": "WebP", "png": "PNG"}  # file suffix -> label

# sitecustomize.py for the build: at exit, its own peak RSS and its children's (KB), to a file.
# The variable is removed at start so the encode workers (spawned with the build's environment)
# do not write too.
PROBE = """\
import atexit, os, resource

_path = os.environ.pop("BENCH_SCALE_RUSAGE", None)


def _report():
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(_path, "w") as out:
        out.write(f"{me.ru_maxrss} {children.ru_maxrss}\\n")


if _path:
    atexit.register(_report)
"""


@dataclass(frozen=True)
class Target:
    label: str
    icons: int
    scenario: str
    metric: str  # a key of Measured
    limit: float
    unit: str


TARGETS = (
    Target("500 icons: no-op <= 0.5 s wall", 500, "noop", "wall_s", 0.5, "s"),
    Target("500 icons: one icon changed <= 1.0 s wall", 500, "icon", "wall_s", 1.0, "s"),
    Target("5,000 icons: no-op <= 3 s wall", 5000, "noop", "wall_s", 3.0, "s"),
    Target("5,000 icons: cold build peak RSS <= 300 MB (the build process)", 5000, "cold", "build_rss_mb", 300.0, "MB"),
)


@dataclass(frozen=True)
class Measured:
    """One build process."""

    scenario: str
    wall_s: float
    cpu_s: float  # the build and its reaped children
    build_rss_mb: float | None  # the build process's own peak; None if its exit hook did not run
    children_rss_mb: float | None  # the largest of its children's peaks (the encode workers)
    tree_rss_mb: float  # max of the two, from wait4 (always there)
    load_1m: float
    outcome: str
    encoded: int | None
    files_written: int | None
    stages: dict[str, float]
    origin: dict[str, int]
    problems: tuple[str, ...]


def log(text: str) -> None:
    print(text, flush=True)


# ---- one build ----------------------------------------------------------------------------------


def run_build(site_dir: Path, scenario: str, icons: int, origin: Origin, probe: Path, extra: list[str]) -> Measured:
    """The whole build process, reaped with os.wait4 for its resource usage; past its time limit
    its process group gets SIGTERM, then SIGKILL 10 s later."""
    report = probe / "rusage.txt"
    report.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "BUILDER_CRASH_AT"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(probe), env.get("PYTHONPATH", "")) if p)
    env["BENCH_SCALE_RUSAGE"] = str(report)
    command = [sys.executable, "-m", "pipeline", "build", "--summary", "line", "--site", str(site_dir), *extra]
    limit = 600.0 + 2.0 * icons
    origin.take_counts()
    load = os.getloadavg()[0]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, cwd=ROOT, env=env, start_new_session=True)
        reaped = threading.Event()
        watchdog = threading.Timer(limit, stop_group, (process.pid, reaped))
        watchdog.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:  # Ctrl-C: the build (which cleans up on SIGTERM) and its workers go too
            watchdog.cancel()
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            raise
        finally:
            reaped.set()
            watchdog.cancel()
        wall = time.perf_counter() - started
        process.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if wall >= limit:
        raise RuntimeError(f"{scenario} build of {icons} icons stopped after its time limit of {limit:.0f}s")
    if code != 0:
        raise RuntimeError(f"{scenario} build of {icons} icons failed (exit {code}):\n{stderr.strip()[-3000:]}")
    lines = [line for line in stdout.splitlines() if line.strip()]
    record = parse_summary(lines[-1] if lines else "")
    record["origin"] = origin.take_counts()
    own, children = read_probe(report)
    return Measured(
        scenario=scenario,
        wall_s=round(wall, 4),
        cpu_s=round(usage.ru_utime + usage.ru_stime, 3),
        build_rss_mb=own,
        children_rss_mb=children,
        tree_rss_mb=round(usage.ru_maxrss / 1024, 1),
        load_1m=round(load, 2),
        outcome=record["outcome"],
        encoded=record["encoded"],
        files_written=record["files_written"],
        stages=record["stages"],
        origin=record["origin"],
        problems=tuple(check(scenario, record, icons)),
    )


def read_probe(report: Path) -> tuple[float | None, float | None]:
    try:
        own, children = (int(x) / 1024 for x in report.read_text(encoding="ascii").split())
    except (OSError, ValueError):
        return None, None
    return round(own, 1), round(children, 1) if children else None


def stop_group(pid: int, reaped: threading.Event) -> None:
    """SIGTERM to the build's own process group, SIGKILL 10 s later; nothing once it is reaped
    (its PID, and so its group's, may then belong to another process)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if reaped.is_set():
            return
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        reaped.wait(10)


def release_bytes(site_dir: Path) -> dict[str, int]:
    """Bytes of the live release's icon files per format (one release after a cold build)."""
    totals = dict.fromkeys(FORMATS, 0)
    for path in (site_dir / "dist" / "current" / "assets" / "icons").iterdir():
        fmt = path.suffix.lstrip(".")
        if fmt in totals:
            totals[fmt] += path.stat().st_size
    return totals


def add_code(site_dir: Path, icons: list[str], number: int) -> None:
    """Appends a new code (a new name each time: codes are unique) rewarding `icons`."""
    today = dt.date.today().isoformat()
    entry = [f"  - code: SCALE{number:03d}", f"    added: {today}", "    rewards:"]
    entry += [f"      - {{icon: {json.dumps(name)}, amount: {i + 1}}}" for i, name in enumerate(icons)]
    text = (site_dir / "codes.yaml").read_text(encoding="utf-8").rstrip("\n")
    (site_dir / "codes.yaml").write_text(text + "\n" + "\n".join(entry) + "\n", encoding="utf-8")


# ---- one size -----------------------------------------------------------------------------------


def measure_size(
    site: Site, origin: Origin, work: Path, runs: tuple[int, int], cores: int, probe: Path
) -> dict[str, Any]:
    """Cold builds (runs[0], each from a fresh copy), then runs[1] rounds of no-op, icon, code."""
    icons = len(site.icon_names)
    records: dict[str, list[Measured]] = {s: [] for s in SCENARIOS}

    def one(scenario: str, site_dir: Path, *extra: str) -> None:
        m = run_build(site_dir, scenario, icons, origin, probe, list(extra))
        records[scenario].append(m)
        rss = f"{m.build_rss_mb:.0f}" if m.build_rss_mb is not None else "?"
        kids = f"{m.children_rss_mb:.0f}" if m.children_rss_mb is not None else "-"
        flag = "  !! " + "; ".join(m.problems) if m.problems else ""
        log(
            f"  {icons:5} {scenario:5} {m.wall_s:8.2f}s wall {m.cpu_s:8.2f}s cpu  rss build {rss} MB, "
            f"children {kids} MB  encoded={m.encoded} load {m.load_1m:.1f}{flag}"
        )

    paths = list(site.sources)
    site_dir = work / "run"
    for _ in range(runs[0]):
        for path, data in site.sources.items():
            origin.put(path, data)
        shutil.rmtree(site_dir, ignore_errors=True)
        shutil.copytree(site.seed, site_dir)
        one("cold", site_dir, "--jobs", str(cores))
    formats = release_bytes(site_dir)
    for repeat in range(runs[1]):
        one("noop", site_dir)
        changed = paths[(len(paths) // 2 + repeat) % len(paths)]  # a different icon each repeat
        origin.put(changed, mirrored(site.sources[changed]))
        one("icon", site_dir)
        add_code(site_dir, site.code_icons, repeat)
        one("code", site_dir)
    shutil.rmtree(site_dir, ignore_errors=True)
    return {
        "icons": icons,
        "site": site.name,
        "bytes_per_format": formats,
        "scenarios": {s: summarise(v) for s, v in records.items()},
        "runs": {s: [asdict(m) for m in v] for s, v in records.items()},
    }


def summarise(records: list[Measured]) -> dict[str, Any]:
    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return round(statistics.median(known), 4) if known else None

    return {
        "n": len(records),
        "wall_s": median([m.wall_s for m in records]),
        "cpu_s": median([m.cpu_s for m in records]),
        "build_rss_mb": median([m.build_rss_mb for m in records]),
        "children_rss_mb": median([m.children_rss_mb for m in records]),
        "tree_rss_mb": median([m.tree_rss_mb for m in records]),
        "load_1m": median([m.load_1m for m in records]),
        "problems": sorted({p for m in records for p in m.problems}),
    }


# ---- growth -------------------------------------------------------------------------------------


def growth(points: list[tuple[int, float]]) -> dict[str, Any]:
    """Least-squares line, marginal cost per icon at the small and the large end, and the log-log
    slope of the increase over the smallest size (1 = linear, 2 = quadratic)."""
    points = sorted(points)
    if len(points) < 2:
        return {"note": "fewer than two sizes"}
    ns, ts = [float(n) for n, _ in points], [t for _, t in points]
    mean_n, mean_t = statistics.fmean(ns), statistics.fmean(ts)
    b = sum((n - mean_n) * (t - mean_t) for n, t in zip(ns, ts)) / sum((n - mean_n) ** 2 for n in ns)
    out: dict[str, Any] = {"a_s": round(mean_t - b * mean_n, 4), "b_ms_per_icon": round(b * 1000, 4)}
    first = (ts[1] - ts[0]) / (ns[1] - ns[0])
    last = (ts[-1] - ts[-2]) / (ns[-1] - ns[-2])
    out["marginal_ms_per_icon"] = {"smallest": round(first * 1000, 4), "largest": round(last * 1000, 4)}
    out["marginal_ratio"] = round(last / first, 3) if first > 0 else None
    rises = [(n - ns[0], t - ts[0]) for n, t in zip(ns[1:], ts[1:]) if t > ts[0] * (1 + RISE_OVER_NOISE)]
    if len(rises) >= 2:
        xs, ys = [math.log(x) for x, _ in rises], [math.log(y) for _, y in rises]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        out["loglog_slope"] = round(slope, 3)
        out["superlinear"] = slope > SUPERLINEAR_SLOPE
    else:
        out["loglog_slope"] = None
        out["note"] = f"fewer than two sizes over {1 + RISE_OVER_NOISE:g}x the smallest one's time: no slope"
    return out


def evaluate(sizes: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of issue 14 against the medians; `pass` is None where the size was not measured."""
    verdicts = []
    for t in TARGETS:
        scenario = sizes.get(t.icons, {}).get("scenarios", {}).get(t.scenario, {})
        value = scenario.get(t.metric)
        verdicts.append(
            {
                **asdict(t),
                "value": value,
                "pass": None if value is None else value <= t.limit,
                "children_rss_mb": scenario.get("children_rss_mb") if t.metric.endswith("rss_mb") else None,
            }
        )
    return verdicts


# ---- report -------------------------------------------------------------------------------------


def print_report(results: dict[str, Any]) -> None:
    log(
        f"\n== scaling: median of {results['runs']} run(s) (cold: {results['cold_runs']}); wall includes process start =="
    )
    head = f"{'icons':>6} {'scenario':16} {'wall s':>8} {'cpu s':>8} {'build MB':>9} {'children MB':>11} {'load':>5}"
    log(head + "\n" + "-" * len(head))
    for size in results["sizes"].values():
        for key, s in size["scenarios"].items():
            flag = "  !! " + "; ".join(s["problems"]) if s["problems"] else ""
            log(
                f"{size['icons']:>6} {LABELS[key]:16} {s['wall_s']:8.2f} {s['cpu_s']:8.2f} {fmt(s['build_rss_mb']):>9} "
                f"{fmt(s['children_rss_mb']):>11} {s['load_1m']:5.1f}{flag}"
            )
    log(
        "\nrelease icon bytes after the cold build (KB per icon): "
        + "; ".join(
            f"{size['icons']}: "
            + ", ".join(f"{f} {b / 1000 / size['icons']:.2f}" for f, b in size["bytes_per_format"].items())
            for size in results["sizes"].values()
        )
    )
    log(
        f"\ngrowth: t = a + b*icons; marginal cost per icon, smallest -> largest sizes; log-log slope of "
        f"t - t_smallest (1 linear, 2 quadratic; > {SUPERLINEAR_SLOPE} flagged). Wall time follows the load, CPU less:"
    )
    for metric, unit in (("wall_s", "s"), ("cpu_s", "s CPU")):
        for key, g in results["growth"][metric].items():
            if "b_ms_per_icon" not in g:
                log(f"  {LABELS[key]:16} {metric:6} {g.get('note')}")
                continue
            m, slope, ratio = g["marginal_ms_per_icon"], g.get("loglog_slope"), g["marginal_ratio"]
            log(
                f"  {LABELS[key]:16} {metric:6} a {g['a_s']:.3f}{unit}, b {g['b_ms_per_icon']:.3f} ms/icon; marginal "
                f"{m['smallest']:.3f} -> {m['largest']:.3f} ms/icon (x{ratio if ratio is not None else '?'}); "
                f"slope {slope if slope is not None else '-'}"
                + ("  !! faster than linear" if g.get("superlinear") else "")
                + (f" ({g['note']})" if g.get("note") else "")
            )
    log("\ntargets (issue 14):")
    for v in results["verdicts"]:
        state = "not measured" if v["pass"] is None else ("PASS" if v["pass"] else "MISS")
        value = "" if v["value"] is None else f": {v['value']:.2f} {v['unit']}"
        extra = f" (largest child {v['children_rss_mb']:.0f} MB)" if v.get("children_rss_mb") else ""
        log(f"  [{state}] {v['label']}{value}{extra}")


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def write_charts(results: dict[str, Any], folder: Path) -> list[Path]:
    """Time and CPU (log-log, the linear fits of no-op and one icon changed dashed), peak RSS, and
    bytes per icon and format; written as scale_*.svg into `folder`."""
    sizes = list(results["sizes"].values())
    loads = [s["load_1m"] for size in sizes for s in size["scenarios"].values() if s["load_1m"] is not None]
    note = (
        f"{results['machine']['cpus']} cores, load average {min(loads):.1f}-{max(loads):.1f}; "
        f"median of {results['runs']} run(s)" + ("; --quick" if results["quick"] else "") + f"; {results['when'][:10]}"
    )
    icons = charts.Axis("icons", log=True)

    def series(metric: str, scenarios: tuple[str, ...] = SCENARIOS, suffix: str = "") -> list[charts.Series]:
        return [
            charts.Series(
                LABELS[key] + suffix,
                tuple(
                    (size["icons"], size["scenarios"][key][metric])
                    for size in sizes
                    if size["scenarios"][key][metric] is not None
                ),
                colour=COLOURS[key],
            )
            for key in scenarios
        ]

    low, high = math.log10(sizes[0]["icons"]), math.log10(sizes[-1]["icons"])
    along = [10 ** (low + (high - low) * i / 40) for i in range(41)]  # a straight line is a curve on log axes

    def fits(metric: str) -> list[charts.Series]:
        return [
            charts.Series(
                f"fit: {LABELS[key]}",
                tuple((n, g["a_s"] + g["b_ms_per_icon"] / 1000 * n) for n in along),
                dashed=True,
                colour=COLOURS[key],
            )
            for key in ("noop", "icon")
            if "b_ms_per_icon" in (g := results["growth"][metric][key])
        ]

    rss = [
        *series("build_rss_mb", ("cold", "noop"), " (build)"),
        charts.Series(
            "cold: largest child",
            tuple(
                (s["icons"], s["scenarios"]["cold"]["children_rss_mb"])
                for s in sizes
                if s["scenarios"]["cold"]["children_rss_mb"]
            ),
            dashed=True,
            colour=COLOURS["cold"],
        ),
    ]
    per_icon = [(label, [s["bytes_per_format"][f] / 1000 / s["icons"] for s in sizes]) for f, label in FORMATS.items()]
    drawn = {
        "time": charts.line_chart(
            "Build wall time against icons (the whole process)",
            icons,
            charts.Axis("seconds", log=True),
            series("wall_s") + fits("wall_s"),
            note,
        ),
        "cpu": charts.line_chart(
            "Build CPU (build + encode workers)",
            icons,
            charts.Axis("CPU seconds", log=True),
            series("cpu_s") + fits("cpu_s"),
            note,
        ),
        "rss": charts.line_chart("Peak RSS against icons", icons, charts.Axis("MB"), rss, note),
        "bytes": charts.bar_chart(
            "Release icon bytes per icon (all densities), per format",
            charts.Axis("icons in the site"),
            [f"{s['icons']:,}" for s in sizes],
            charts.Axis("KB per icon"),
            per_icon,
            note,
        ),
    }
    written = []
    for name, svg in drawn.items():
        path = folder / f"scale_{name}.svg"
        charts.write(path, svg)
        written.append(path)
    return written


# ---- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"sizes {','.join(map(str, QUICK_SIZES))}; 2 runs, 1 cold build each"
    )
    parser.add_argument("--sizes", help=f"icon counts, comma-separated (default {','.join(map(str, SIZES))})")
    parser.add_argument(
        "--runs", type=int, help="repeats of no-op/changed (and cold below 1,000 icons); default 3, 2 with --quick"
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help="the JSON results (default bench/results/scale.json)"
    )
    parser.add_argument(
        "--replot",
        action="store_true",
        help="only redo the fits, the targets and the charts from the --output JSON of an earlier run",
    )
    args = parser.parse_args(argv)
    output = args.output.resolve()
    folder = FIGURES if output == RESULTS else output.parent
    if args.replot:
        if not output.exists():
            parser.error(f"--replot: {shown(output)} does not exist; run the bench first (same --output)")
        earlier = json.loads(output.read_text(encoding="utf-8"))
        analyse(earlier)
        save(earlier, output, folder)
        log(f"wrote {shown(output)} and {', '.join(earlier.get('charts', []))}")
        return 0
    try:
        sizes = (
            sorted({int(x) for x in args.sizes.split(",")})
            if args.sizes
            else list(QUICK_SIZES if args.quick else SIZES)
        )
    except ValueError:
        parser.error(f"--sizes {args.sizes!r}: whole numbers separated by commas, e.g. 11,100,500")
    if min(sizes) < 1:
        parser.error("--sizes: every size must be at least 1")
    runs = args.runs or (2 if args.quick else 3)
    cores = os.cpu_count() or 1

    started = time.perf_counter()
    load_before = os.getloadavg()
    log(
        f"scale: sizes {', '.join(map(str, sizes))}, {runs} run(s), {cores} cores, "
        f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
    )
    results: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "runs": runs,
        "cold_runs": "1 from 1,000 icons" + (" (1 at every size with --quick)" if args.quick else ""),
        "machine": {"cpus": cores, "platform": platform.platform(), "python": platform.python_version()},
        "command": "python -m pipeline build --summary line --site S [--jobs N]; the whole process",
        "sizes": {},
    }
    status = 0
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        probe = work / "probe"
        probe.mkdir()
        (probe / "sitecustomize.py").write_text(PROBE, encoding="utf-8")
        if shadowed := importlib.util.find_spec("sitecustomize"):
            results["note"] = f"this Python's own sitecustomize ({shadowed.origin}) did not run in the builds"
            log(f"  note: {results['note']} (the peak RSS probe takes its place)")
        with Origin() as origin:
            for n in sizes:
                root = work / f"n{n}"
                site = make_default(root, origin) if n == DEFAULT_SITE_ICONS else make_large(root, origin, n)
                for path, data in site.sources.items():
                    origin.put(path, data)
                log(f"\n{n} icons ({site.name} site, {site.codes} codes)")
                cold_runs = 1 if args.quick or n >= 1000 else runs
                results["sizes"][str(n)] = measure_size(site, origin, root, (cold_runs, runs), cores, probe)
                shutil.rmtree(root, ignore_errors=True)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        log(f"scale: {error}")
        results["error"] = str(error)
        status = 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    analyse(results)
    results["load_average"] = {"before": load_before, "after": os.getloadavg()}
    results["seconds_total"] = round(time.perf_counter() - started, 1)
    save(results, output, folder)
    log(
        f"\nload average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (1 min); total "
        f"{results['seconds_total']:.0f}s; wrote {shown(output)}"
        + (f" and {', '.join(results.get('charts', []))}" if results.get("charts") else "")
    )
    problems = any(s["problems"] for size in results["sizes"].values() for s in size["scenarios"].values())
    return status or int(problems)


def analyse(results: dict[str, Any]) -> None:
    """The fits and the targets, from the medians per size (again on --replot: a change to the
    analysis applies to earlier results)."""
    measured = results["sizes"].values()
    results["growth"] = {
        metric: {key: growth([(s["icons"], s["scenarios"][key][metric]) for s in measured]) for key in SCENARIOS}
        for metric in ("wall_s", "cpu_s")
    }
    results["verdicts"] = evaluate({s["icons"]: s for s in measured})


def save(results: dict[str, Any], output: Path, folder: Path) -> None:
    """Prints the table, draws the charts into `folder`, writes the JSON."""
    if results["sizes"]:
        print_report(results)
        results["charts"] = [shown(p) for p in write_charts(results, folder)]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    sys.exit(main())
