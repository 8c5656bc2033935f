"""Every benchmark, one after the other, and one summary of the headline figures.

    python bench/run.py                      # all of them, full size (about 1.5 h on 2 idle cores,
                                             # an hour of it the scaling curve up to 5,000 icons)
    python bench/run.py --quick              # all of them, small and fast (about 10 min idle)
    python bench/run.py --only build_times,memory

Runs, each as its own subprocess (so one that fails or hangs does not hide the others; a failure
is reported with the end of its output, and a bench past its time limit is stopped, its whole
process group, by PID):

  encode_settings  icon bytes vs source and SSIM per strategy        -> bench/results/encode_settings.json
  search_cost      the per-icon quality search: CPU per icon, encoder v3 (git) vs today, bytes, floor, vs fixed q80 -> bench/results/search_cost.json
  build_times      cold / no-op / changed builds, 1 -> all cores     -> bench/results/build_times.json
  serve            nginx requests/s, gzip_static vs plain             -> bench/results/serve.json
  memory           refresh daemon idle/peak RSS, build peak RSS       -> bench/results/memory.json
  icon_sizes       icon bytes per DPR, resizing off/on; page before/after; cold encode -> bench/results/icon_sizes.json
  publish_bucket   publishing to an S3-compatible bucket (SeaweedFS)                  -> bench/results/publish_bucket.json
  scale            cold / no-op / changed builds at 11 .. 5,000 icons: time, CPU, peak RSS, bytes per format,
                   growth fits and the issue 14 targets                               -> bench/results/scale.json

then prints one table of the headline figures with the machine's core count and load average, and
writes bench/results/summary.json. A results file missing shows as "not run"; one not rewritten by
this invocation (a failed bench, or left out by --only) is shown with its date, marked "old".
--quick is passed to encode_settings, build_times and icon_sizes, and to the others where their --help
offers it (serve otherwise gets --duration 2s --repeat 1); with --quick, every bench that takes an
output path (--output / --json) writes to bench/results/quick/ instead, so a quick run never
overwrites the full results. Each bench's output is also kept in bench/results/logs/NAME.log.

Charts (SVG, bench/charts.py): scale and encode_settings draw theirs into bench/figures/ (committed,
shown in the README) on a full run, and next to their JSON in bench/results/quick/ with --quick.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
QUICK = RESULTS / "quick"  # where --quick puts the results of benches that take an output path
LOGS = RESULTS / "logs"
BENCHES = ("encode_settings", "search_cost", "build_times", "serve", "memory", "icon_sizes", "publish_bucket", "scale")
TIME_LIMIT = {  # seconds per bench: (quick, full)
    "encode_settings": (600, 3600),
    "search_cost": (600, 1800),
    "build_times": (900, 7200),
    "serve": (600, 1200),
    "memory": (600, 1200),
    "icon_sizes": (600, 1800),
    "publish_bucket": (900, 3600),
    "scale": (1800, 4 * 3600),  # the 5,000-icon cold build alone takes 15-30 min on 2 busy cores
}


# ---- running the benches ----------------------------------------------------------------------


def help_text(script: Path) -> str:
    """A bench's --help (the benches are edited independently: ask them what they offer)."""
    try:
        done = subprocess.run(
            [sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


def arguments(name: str, quick: bool) -> tuple[list[str], Path]:
    """The bench's arguments and where its results will be. With --quick, a bench that takes an
    output path writes to bench/results/quick/, so a quick run never overwrites full results."""
    script = HERE / f"{name}.py"
    if not quick:
        return [], RESULTS / f"{name}.json"
    text = help_text(script)
    args = ["--quick"] if name in ("encode_settings", "build_times", "icon_sizes") or "--quick" in text else []
    if name == "serve" and not args:
        args = ["--duration", "2s", "--repeat", "1"]
    target = RESULTS / f"{name}.json"
    for flag in ("--output", "--json"):
        if re.search(rf"(^|\s){flag}\b", text):
            target = QUICK / f"{name}.json"
            args += [flag, str(target.relative_to(ROOT))]  # the benches run in the repo root
            break
    return args, target


def run_bench(name: str, args: list[str], limit: float) -> dict[str, Any]:
    """One bench as a subprocess in its own session; its output is echoed with a prefix and kept in
    bench/results/logs/NAME.log. Past `limit` seconds its process group gets SIGTERM, then SIGKILL."""
    script = HERE / f"{name}.py"
    command = [sys.executable, str(script), *args]
    shown = ["python", str(script.relative_to(ROOT)), *args]  # as a user types it: no paths of this machine
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{name}.log"
    print(f"\n=== {name}: {' '.join(shown)} (limit {limit:.0f}s) ===", flush=True)
    if not script.exists():
        return {
            "status": "missing",
            "exit_code": None,
            "seconds": 0.0,
            "command": shown,
            "tail": [f"{shown[1]} does not exist"],
        }
    started = time.perf_counter()
    tail: deque[str] = deque(maxlen=25)
    timed_out = threading.Event()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
        errors="replace",
    )

    def stop() -> None:
        timed_out.set()
        stop_group(process)

    watchdog = threading.Timer(limit, stop)
    watchdog.daemon = True
    watchdog.start()
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                tail.append(line.rstrip("\n"))
                print(f"[{name}] {line}", end="", flush=True)
        process.wait()
    except KeyboardInterrupt:
        stop_group(process)
        raise
    finally:
        watchdog.cancel()
    seconds = time.perf_counter() - started
    status = "timeout" if timed_out.is_set() else ("ok" if process.returncode == 0 else "failed")
    return {
        "status": status,
        "exit_code": process.returncode,
        "seconds": round(seconds, 1),
        "command": shown,
        "log": str(log_path.relative_to(ROOT)),
        "tail": list(tail) if status != "ok" else [],
    }


def stop_group(process: subprocess.Popen[str]) -> None:
    """SIGTERM to the bench's own process group (it was started in a new session), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(15)
            return
        except subprocess.TimeoutExpired:
            continue


# ---- reading the results ------------------------------------------------------------------------


def load(path: Path, since: float) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(results, where they came from). `since`: this invocation's start, to tell fresh from old."""
    if not path.exists():
        return None, {"file": str(path.relative_to(ROOT)), "state": "not run"}
    mtime = path.stat().st_mtime
    info = {
        "file": str(path.relative_to(ROOT)),
        "state": "fresh" if mtime >= since else "old",
        "written": dt.datetime.fromtimestamp(mtime).isoformat(timespec="seconds"),
    }
    try:
        return json.loads(path.read_text(encoding="utf-8")), info
    except (OSError, ValueError) as error:
        return None, {**info, "state": f"unreadable ({error})"}


def dig(data: Any, *keys: Any, default: Any = None) -> Any:
    for key in keys:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return default
    return data


def headline_encode(data: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for corpus in ("default", "npm"):
        summary = dig(data, "corpora", corpus, "summary")
        if not summary:
            continue
        n = dig(data, "corpora", corpus, "n", default="?")
        parts = []
        for key, label in (("pipe_best", "best"), ("pipe_webp", "WebP"), ("pipe_png", "PNG")):
            ratio = dig(summary, key, "ratio")
            if ratio is not None:
                parts.append(f"{label} {ratio:.1%}")
        rows.append((f"icon bytes / source, {corpus} ({n} icons)", ", ".join(parts) or "-"))
        ssims = [dig(summary, k, "min_ssim") for k in ("pipe_best", "pipe_webp", "pipe_png")]
        ssims = [s for s in ssims if s is not None]
        below = sum(dig(summary, k, "below_floor", default=0) for k in ("pipe_best", "pipe_webp", "pipe_png"))
        if ssims:
            rows.append(
                (
                    f"min SSIM, {corpus} (floor {data.get('floor', 0.98)})",
                    f"{min(ssims):.4f}; {below} variant(s) below the floor",
                )
            )
    return rows


def headline_build(data: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    runs = data.get("runs", "?")
    for site, info in dig(data, "sites", default={}).items():
        if "skipped" in info:
            rows.append((f"build, {site} site", f"skipped: {info['skipped']}"))
            continue
        scenarios = info.get("scenarios", {})
        parts = [
            f"{label} {dig(scenarios, key, 'median_wall_s'):.2f}s"
            for key, label in (
                ("cold", "cold"),
                ("noop", "no-op"),
                ("icon", "1 icon changed"),
                ("code", "1 code added"),
                ("cold-j1", "cold --jobs 1"),
            )
            if dig(scenarios, key, "median_wall_s") is not None
        ]
        problems = sorted({p for s in scenarios.values() for p in s.get("problems", [])})
        rows.append(
            (
                f"build wall, {site} site ({info.get('icons', '?')} icons, median of {runs})",
                ", ".join(parts) + (f"  !! {'; '.join(problems)}" if problems else ""),
            )
        )
    speedup = data.get("speedup")
    if speedup:
        capacity = speedup.get("cpu_capacity_median")
        rows.append(
            (
                f"cold speed-up, --jobs 1 -> {speedup.get('cores', '?')}",
                f"{speedup['ratio']:.2f}x"
                + (f" (machine gave {capacity:.2f} cores to a CPU loop)" if capacity else ""),
            )
        )
    for v in data.get("verdicts", []):
        unit = v.get("unit", "")
        rows.append(
            (
                f"target: {v.get('label')}",
                f"{'PASS' if v.get('pass') else 'MISS'} {v['value']:.2f}{unit} "
                f"(target {v.get('op')} {v.get('limit')}{unit}){v.get('note', '')}",
            )
        )
    return rows


def headline_serve(data: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []

    def figures(median: dict[str, Any]) -> str:
        rps = median["requests_per_second"]
        text = f"{rps:,.0f} req/s, {median.get('transfer_bytes_per_second', 0) / 1024**2:,.1f} MiB/s"
        cpu = median.get("server_cpu_us_per_request")
        return text + (f", {cpu:,.1f} us server CPU/req" if isinstance(cpu, (int, float)) else "")

    path = dig(data, "wrk", "path", default="/")
    stacks = data.get("stacks")
    if isinstance(stacks, dict) and stacks:  # several stacks: ours, baseline, ...
        for key, stack in stacks.items():
            for variant, median in (stack.get("median") or {}).items():
                if isinstance(median, dict) and median.get("requests_per_second") is not None:
                    rows.append((f"{stack.get('label', key)}, {variant} {path}", figures(median)))
    else:  # one stack: the nginx medians
        for variant, median in (data.get("median") or {}).items():
            if isinstance(median, dict) and median.get("requests_per_second") is not None:
                rows.append((f"nginx {variant} {path}", figures(median)))
    ratios = data.get("ratios") or {"gzip_over_plain": data.get("ratio_gzip_over_plain")}
    for name, ratio in ratios.items():
        if isinstance(ratio, dict) and ratio.get("requests_per_second") is not None:
            extra = ratio.get("server_cpu_per_request")
            rows.append(
                (
                    f"ratio {name.replace('_', ' ')}",
                    f"req/s {ratio['requests_per_second']:.2f}x, bytes/s {ratio.get('transfer_bytes_per_second', 0):.2f}x"
                    + (f", CPU/req (inverse) {extra:.2f}x" if isinstance(extra, (int, float)) else ""),
                )
            )
    target = data.get("target")
    if isinstance(target, dict) and "met" in target:
        goal = {k: v for k, v in target.items() if k != "met"}
        rows.append(
            (
                "target: " + ", ".join(f"{k} >= {v:g}" for k, v in goal.items() if isinstance(v, (int, float))),
                "PASS" if target["met"] else "MISS",
            )
        )
    wrk = data.get("wrk")
    if wrk:
        rows.append(
            (
                "wrk settings",
                f"-t{wrk.get('threads')} -c{wrk.get('connections')} -d{wrk.get('duration')}, "
                f"{wrk.get('repeat')} run(s), {data.get('nginx_workers', '?')} nginx worker(s); "
                f"errors {data.get('errors', '?')}",
            )
        )
    return rows


def headline_memory(data: dict[str, Any]) -> list[tuple[str, str]]:
    labels = {
        "idle_rss_mb": "daemon idle RSS",
        "peak_rss_mb": "daemon peak RSS",
        "cold_build_peak_rss_mb": "cold build peak RSS (--jobs 1)",
    }
    rows = [(label, f"{data[key]:.1f} MB") for key, label in labels.items() if isinstance(data.get(key), (int, float))]
    rows += [
        (key, f"{value:.1f}") for key, value in data.items() if key not in labels and isinstance(value, (int, float))
    ]
    return rows


def headline_icon_sizes(data: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    corpus = dig(data, "corpus_b", default={})
    labels = {"a": "(a) default site", "b": f"(b) {corpus.get('corpus', '?')} {corpus.get('used', '?')} x 256 px"}
    for site in ("a", "b"):
        for mode in ("off", "on"):
            cells = dig(data, "icon_bytes", f"{site}-{mode}", default={})
            parts = [
                f"DPR {d} {cells[f'dpr{d}']['body_bytes']:,} B ({cells[f'dpr{d}']['body_share_of_source']:.1%})"
                for d in (1, 2, 3)
                if dig(cells, f"dpr{d}", "body_share_of_source") is not None
            ]
            if parts:
                rows.append((f"icon bytes / source PNG, {labels[site]}, resizing {mode}", ", ".join(parts)))
    variants = dig(data, "variants_b", "on")
    if variants and variants.get("min_ssim") is not None:
        rows.append(
            (
                "(b) resized variants: min SSIM; below floor; upscaled",
                f"{variants['min_ssim']:.4f}; {variants['below_floor']} of {variants['files']} below {variants['floor']}; "
                f"{variants['upscaled']} upscaled",
            )
        )
    for dpr in (1, 2):
        before, after = dig(data, "whole_page", "before", f"dpr{dpr}"), dig(data, "whole_page", "after", f"dpr{dpr}")
        if before and after:
            rows.append(
                (
                    f"default page, whole transfer at DPR {dpr}, before -> after",
                    f"{before['bytes_sent']:,} -> {after['bytes_sent']:,} B ({after['bytes_sent'] / before['bytes_sent']:.2f}x)",
                )
            )
    cold = data.get("cold_encode_b")
    if cold:
        rows.append(
            (
                f"(b) cold build, display 0 -> 40 (median of {data.get('runs', '?')})",
                f"wall {cold['off']['median_wall_s']:.1f}s -> {cold['on']['median_wall_s']:.1f}s "
                f"({cold['ratio_on_off_wall']:.2f}x), CPU {cold['off']['median_cpu_s']:.1f}s -> "
                f"{cold['on']['median_cpu_s']:.1f}s ({cold['ratio_on_off_cpu']:.2f}x)",
            )
        )
    for v in data.get("verdicts", []):
        value = (
            f"{v['value']:.1%}"
            if v.get("unit") == "of source PNG bytes"
            else (f"{v['value']:.2f}x" if v.get("unit") == "x" else f"{v['value']}")
        )
        limit = (
            f"{v['limit']:.0%}"
            if v.get("unit") == "of source PNG bytes"
            else (f"{v['limit']:.2f}x" if v.get("unit") == "x" else f"{v['limit']}")
        )
        rows.append(
            (
                f"target: {v.get('label')}",
                f"{'PASS' if v.get('pass') else 'MISS'} {value} (target {v.get('op')} {limit})",
            )
        )
    if data.get("error"):
        rows.append(("error", str(data["error"])[:200]))
    return rows


def headline_publish_bucket(data: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        (
            f"{r['scenario']} ({data.get('icons')} icons) to SeaweedFS",
            f"wall {r['wall_s']:.2f}s, upload {r['upload_s']}s, requests {r['requests']}",
        )
        for r in data.get("scenarios", [])
    ]
    return rows + [(f"target: {k}", "PASS" if v else "MISS") for k, v in data.get("targets", {}).items()]


def headline_scale(data: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    labels = (("cold", "cold"), ("noop", "no-op"), ("icon", "1 icon"), ("code", "1 code"))
    for size in dig(data, "sizes", default={}).values():
        scenarios = size.get("scenarios", {})
        times = ", ".join(
            f"{label} {scenarios[key]['wall_s']:.2f}s" for key, label in labels if dig(scenarios, key, "wall_s")
        )
        rss = dig(scenarios, "cold", "build_rss_mb")
        rows.append(
            (
                f"scale, {size.get('icons')} icons (median of {data.get('runs', '?')})",
                times + (f"; cold peak RSS {rss:.0f} MB" if isinstance(rss, (int, float)) else ""),
            )
        )
    for key, name in (("noop", "no-op"), ("icon", "one icon changed")):
        parts = []
        for metric, label in (("wall_s", "wall"), ("cpu_s", "CPU")):
            growth = dig(data, "growth", metric, key, default={})
            if growth.get("b_ms_per_icon") is not None:
                slope = growth.get("loglog_slope")
                parts.append(
                    f"{label} {growth['b_ms_per_icon']:.2f} ms/icon, log-log slope {slope if slope is not None else '-'}"
                    + (" (faster than linear)" if growth.get("superlinear") else "")
                )
        if parts:
            rows.append((f"growth with the icon count, {name}", "; ".join(parts)))
    for v in data.get("verdicts", []):
        state = "not measured" if v.get("pass") is None else ("PASS" if v["pass"] else "MISS")
        value = f" {v['value']:.2f} {v.get('unit', '')}" if isinstance(v.get("value"), (int, float)) else ""
        rows.append((f"target: {v.get('label')}", state + value))
    return rows


def headline_search_cost(data: dict[str, Any]) -> list[tuple[str, str]]:
    s = data.get("summary", {})
    rows = []
    if s:
        old, new = s["cpu_ms_median"]["old"], s["cpu_ms_median"]["new"]
        rows.append(
            ("encode search CPU/icon (median, v3 -> today)", f"{old:.0f} -> {new:.0f} ms, {s['cpu_ratio_median']:.2f}x")
        )
    for v in s.get("verdicts", []):
        rows.append((f"target: {v['label']}", ("PASS" if v["pass"] else "MISS") + f" {v['value']:.2f} {v['unit']}"))
    return rows


HEADLINES = {
    "scale": headline_scale,
    "search_cost": headline_search_cost,
    "publish_bucket": headline_publish_bucket,
    "encode_settings": headline_encode,
    "build_times": headline_build,
    "serve": headline_serve,
    "memory": headline_memory,
    "icon_sizes": headline_icon_sizes,
}


# ---- main ---------------------------------------------------------------------------------------


def select(only: str | None, parser: argparse.ArgumentParser) -> list[str]:
    if not only:
        return list(BENCHES)
    chosen = []
    for word in (w.strip() for w in only.split(",") if w.strip()):
        matches = [b for b in BENCHES if b == word] or [b for b in BENCHES if b.startswith(word)]
        if len(matches) != 1:
            parser.error(f"--only {word!r}: choose from {', '.join(BENCHES)}")
        chosen.append(matches[0])
    return [b for b in BENCHES if b in chosen]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small and fast: a few minutes in all")
    parser.add_argument(
        "--only", metavar="NAME,...", help=f"run only these ({', '.join(BENCHES)}; a unique prefix will do)"
    )
    args = parser.parse_args(argv)
    chosen = select(args.only, parser)

    since = time.time()
    started = time.perf_counter()
    load_before = os.getloadavg()
    cores = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    print(
        f"bench/run.py: {', '.join(chosen)}{' (quick)' if args.quick else ''}; {cores} cores ({usable} usable); "
        f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}",
        flush=True,
    )
    runs: dict[str, dict[str, Any]] = {}
    paths: dict[str, Path] = {}
    for name in chosen:
        limit = TIME_LIMIT[name][0 if args.quick else 1]
        bench_args, paths[name] = arguments(name, args.quick)
        try:
            runs[name] = run_bench(name, bench_args, limit)
        except OSError as error:
            runs[name] = {"status": "failed", "exit_code": None, "seconds": 0.0, "tail": [str(error)]}
    load_after = os.getloadavg()

    summary: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "only": chosen,
        "machine": {
            "cpus": cores,
            "usable_cpus": usable,
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "load_average": {"before": load_before, "after": load_after},
        "seconds_total": round(time.perf_counter() - started, 1),
        "benches": {},
    }
    print(
        f"\n{'=' * 100}\nsummary: {cores} cores ({usable} usable), load average before {load_before[0]:.2f}, "
        f"after {load_after[0]:.2f} (1 min){'; --quick: small samples, indicative only' if args.quick else ''}"
    )
    width = 58
    for name in BENCHES:
        run = runs.get(name)
        path = paths.get(name)
        if path is None:  # left out by --only: the latest results there are, quick ones only for --quick
            quick_path = QUICK / f"{name}.json"
            path = quick_path if args.quick and quick_path.exists() else RESULTS / f"{name}.json"
        data, source = load(path, since)
        state = run["status"] if run else "skipped (--only)"
        if run and run["status"] != "ok":
            state += f" (exit {run['exit_code']})" if run.get("exit_code") is not None else ""
        when = (
            ""
            if source["state"] in ("fresh", "not run")
            else f"; results {source['state']}" + (f" from {source['written']}" if "written" in source else "")
        )
        took = f", {run['seconds']:.0f}s" if run else ""
        print(f"\n{name} [{state}{took}{when}]")
        rows: list[tuple[str, str]] = []
        if data is None:
            print(f"  {'not run' if source['state'] == 'not run' else source['state']}: no {source['file']}")
        else:
            try:
                rows = HEADLINES[name](data)
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
                rows = [("(could not read the results)", f"{type(error).__name__}: {error}")]
            for label, value in rows:
                print(f"  {label:<{width}} {value}")
            if isinstance(data.get("load_average"), dict) and data["load_average"].get("before"):
                la = data["load_average"]
                print(
                    f"  {'load average during it (1 min, before/after)':<{width}} "
                    f"{la['before'][0]:.2f} / {la.get('after', [float('nan')])[0]:.2f}"
                )
            elif isinstance(data.get("load_average_1_5_15") or dig(data, "machine", "loadavg"), dict):
                la = data.get("load_average_1_5_15") or dig(data, "machine", "loadavg")
                print(
                    f"  {'load average during it (1 min, before/after)':<{width}} "
                    f"{la['before'][0]:.2f} / {la['after'][0]:.2f}"
                )
        if run and run["status"] != "ok":
            print(f"  !! {name} {run['status']}; last lines of its output (full log: {run.get('log', '-')}):")
            for line in run["tail"][-12:]:
                print(f"     | {line}")
        summary["benches"][name] = {"run": run, "results": source, "headline": dict(rows)}
    failed = [n for n, r in runs.items() if r["status"] != "ok"]
    print(
        f"\n{len(runs) - len(failed)}/{len(runs)} bench(es) ok"
        + (f"; failed: {', '.join(failed)}" if failed else "")
        + f"; total {summary['seconds_total']:.0f}s"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {(RESULTS / 'summary.json').relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
