"""argv -> config -> one call into build or schedule -> summary + exit code. Nothing else.

stdout gets the run summary; stderr gets warnings and errors. Exit codes: see pipeline/errors.py.
The heavy stage modules are imported only by the commands that build, so `pipeline refresh`
(a long-lived daemon) stays small.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from . import crashpoints
from .errors import ConfigError, Interrupted, PipelineError, describe_os_error

if TYPE_CHECKING:
    from .build import BuildRequest
    from .model import RunReport

EX_IOERR = 74  # sysexits: an I/O error outside publishing (icons/, .cache/)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _log_to_stderr(getattr(args, "verbose", 0))
    if args.command == "refresh":
        return _refresh(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "report":
        return _report(args)
    if args.command in ("init", "check"):
        return _init(args) if args.command == "init" else _check(args)
    started = time.perf_counter()
    stop = _StopOnSignal()
    live = _LiveLine(sys.stderr) if sys.stderr.isatty() and not args.quiet else None
    try:
        report = _build(args, stop, live)
    except PipelineError as error:
        _clear(live)
        print(f"pipeline: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # outside publish: icons/ or .cache/ could not be written
        _clear(live)
        print(f"pipeline: error: nothing was published: {describe_os_error(error)}", file=sys.stderr)
        return EX_IOERR
    except BaseException:
        _clear(live)
        if not stop.requested:
            raise
        print("pipeline: error: stopped by a signal; nothing was switched: the live site is unchanged", file=sys.stderr)
        return Interrupted.exit_code
    _clear(live)
    if args.quiet:
        return 0
    for line in warnings(report):
        print(f"pipeline: warning: {line}", file=sys.stderr)
    seconds = time.perf_counter() - started
    print(summary_line(report, seconds) if args.summary == "line" else summary(report, seconds))
    return 0


class _LiveLine:
    """Progress on a terminal: one line rewritten in place, at most ten times a second:
    "encode 23/60  Denny  8.1s, ~13s left". Off a terminal (systemd, cron, a pipe) there is none."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.clock = stream, clock
        self.started: dict[str, float] = {}
        self.shown_at = 0.0
        self.shown = False

    def __call__(self, stage: str, done: int, total: int, item: str) -> None:
        now = self.clock()
        started = self.started.setdefault(stage, now)
        if now - self.shown_at < 0.1 and done < total:
            return
        elapsed = now - started
        left = f", ~{elapsed / done * (total - done):.0f}s left" if 0 < done < total else ""
        self.stream.write(f"\r\x1b[K{stage} {done}/{total}  {item[:40]}  {elapsed:.1f}s{left}")
        self.stream.flush()
        self.shown_at, self.shown = now, True


def _clear(live: _LiveLine | None) -> None:
    if live is not None and live.shown:
        live.stream.write("\r\x1b[K")
        live.stream.flush()


def _log_to_stderr(verbosity: int) -> None:
    """-v: the decisions (quality chosen per icon, sources refreshed or stale, releases removed);
    -vv: also every cache hit and every source's answer. Default: the summary only."""
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="pipeline: %(message)s")


def _build(args: argparse.Namespace, stop: _StopOnSignal, live: _LiveLine | None) -> RunReport:
    from . import build, config

    site = config.load_site(Path(args.site))
    request = build.BuildRequest(
        site, today=dt.date.today(), now=time.time(), offline=args.offline, jobs=args.jobs, checkpoint=stop.checkpoint
    )
    if live is not None:
        request = replace(request, progress=live)
    if args.command == "icons":
        request = _icons_request(request, args.names, args.force)
    return build.run(request)


def _refresh(args: argparse.Namespace) -> int:
    from .lock import exclusive
    from .schedule import ScheduleSettings, refresh

    settings = ScheduleSettings(args.interval, args.jitter, args.run_timeout)
    site = Path(args.site).resolve()
    extra = ["--offline"] if args.offline else []
    try:
        with exclusive(site / ".cache" / "refresh.lock"):
            print(
                f"pipeline refresh: {site}: every {settings.interval:g}s (jitter {settings.jitter:g}s, "
                f"run timeout {settings.run_timeout:g}s); pid {os.getpid()}",
                flush=True,
            )
            refresh(site, settings, lambda line: print(line, flush=True), args.max_runs, extra)
    except PipelineError as error:
        print(f"pipeline: error: {error}".replace("another build", "another refresh"), file=sys.stderr)
        return error.exit_code
    print("pipeline refresh: stopped", flush=True)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .serve import serve

    try:
        serve(Path(args.site), args.port, lambda line: print(line, file=sys.stderr, flush=True))
    except PipelineError as error:
        print(f"pipeline: error: {error}", file=sys.stderr)
        return error.exit_code
    print("pipeline serve: stopped", file=sys.stderr, flush=True)
    return 0


def _report(args: argparse.Namespace) -> int:
    from . import config
    from .report import write_report

    try:
        site = config.load_site(Path(args.site))
        done = write_report(site, Path(args.out) if args.out else site.cache_dir / "report.html")
    except PipelineError as error:
        print(f"pipeline: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        print(f"pipeline: error: the report was not written: {describe_os_error(error)}", file=sys.stderr)
        return EX_IOERR
    missing = f"; {done.missing} not encoded yet: run pipeline build" if done.missing else ""
    print(f"pipeline report: {done.icons} icons{missing}", file=sys.stderr)
    print(done.path)
    return 0


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number from 0 to 65535 (0: any free port)")
    return int(text)


def _init(args: argparse.Namespace) -> int:
    import shlex

    from .init import init_site

    try:
        done = init_site(Path(args.dir))
    except PipelineError as error:
        print(f"pipeline: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # whatever it had written is removed again
        print(f"pipeline: error: nothing was written: {describe_os_error(error)}", file=sys.stderr)
        return EX_IOERR
    site = "" if done.root == Path.cwd().absolute() else f" --site {shlex.quote(args.dir)}"
    print(f"pipeline init: a starter site in {done.root}: {', '.join(done.files)}")
    print(f"next: pipeline check{site} && pipeline build --offline{site}; nginx then serves dist/current")
    return 0


def _check(args: argparse.Namespace) -> int:
    from .check import check_site

    try:
        checked = check_site(Path(args.site))
    except OSError as error:  # a file that exists but cannot be read
        print(f"pipeline: error: {describe_os_error(error)}", file=sys.stderr)
        return EX_IOERR
    for problem in checked.errors:
        print(f"pipeline: error: {problem}", file=sys.stderr)
    if checked.errors:
        return checked.exit_code
    for note in checked.notes:
        print(f"pipeline: note: {note}", file=sys.stderr)
    codes = "codes from a feed (not fetched)" if checked.codes is None else f"{checked.codes} codes"
    print(f"ok: {checked.icons} icons, {codes}, {checked.templates} templates")
    return 0


USAGE = """\
Build a static site ahead of time: fetch the reward icons in icon_map.yaml, encode them for every
screen, render the templates, and publish the whole site atomically into dist/ for nginx to serve.
Run it in a site folder (or pass --site DIR); `pipeline COMMAND --help` for a command's options."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--site", default=".", metavar="DIR", help="the site folder (default: the current one)")
    runs = argparse.ArgumentParser(add_help=False)
    runs.add_argument("--jobs", type=int, default=0, metavar="N", help="encode processes (default: one per core)")
    runs.add_argument(
        "--summary", choices=("full", "line"), default="full", help="the run summary as a table or one line"
    )
    runs.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log each decision to stderr (-vv: also cache hits and every source's answer)",
    )
    runs.add_argument("-q", "--quiet", action="store_true", help="print errors only: no progress, summary or warnings")
    commands = parser.add_subparsers(dest="command", required=True)
    init_cmd = commands.add_parser(
        "init", help="start a site: write a working starter site into DIR (never overwrites; exit 73 if it would)"
    )
    init_cmd.add_argument("dir", nargs="?", default=".", metavar="DIR", help="created if missing (default: here)")
    commands.add_parser(
        "check", parents=[common], help="validate every input as build would; no fetch, encode or publish"
    )
    build_cmd = commands.add_parser("build", parents=[common, runs], help="fetch, encode, render and publish the site")
    build_cmd.add_argument("--offline", action="store_true", help="use the sources in icons/ only; no network")
    icons = commands.add_parser(
        "icons",
        parents=[common, runs],
        help="re-optimise icons from icons/ with the current settings, rebuild, publish",
    )
    icons.add_argument("names", nargs="*", metavar="NAME", help="icon names as in icon_map.yaml (default: all)")
    icons.add_argument("--force", action="store_true", help="encode even where the cache holds these settings")
    icons.set_defaults(offline=True)
    refresh_cmd = commands.add_parser(
        "refresh", parents=[common], help="build now and then every interval until stopped (SIGTERM)"
    )
    refresh_cmd.add_argument(
        "--interval", type=_interval, default=3600.0, metavar="T", help="e.g. 3600, 60m, 1h (default 1h)"
    )
    refresh_cmd.add_argument("--jitter", type=_jitter, default=0.0, metavar="T", help="random delay added to each tick")
    refresh_cmd.add_argument(
        "--run-timeout", type=_interval, default=900.0, metavar="T", help="kill a run after this (default 15m)"
    )
    refresh_cmd.add_argument("--offline", action="store_true", help="pass --offline to every build")
    refresh_cmd.add_argument("--max-runs", type=int, default=None, metavar="N", help=argparse.SUPPRESS)
    serve_cmd = commands.add_parser(
        "serve", parents=[common], help="preview on 127.0.0.1 while you edit: rebuilds and reloads the page (not dist/)"
    )
    serve_cmd.add_argument("--port", type=_port, default=8000, metavar="N", help="default 8000; 0: any free port")
    report_cmd = commands.add_parser(
        "report", parents=[common], help="an HTML page: each icon's source beside its encoded files (no encoding)"
    )
    report_cmd.add_argument("--out", metavar="FILE", help="where to write it (default: .cache/report.html in the site)")
    return parser


class _Version(argparse.Action):
    """--version, looked up only when asked (importlib.metadata costs ~15 ms a run otherwise)."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kwargs: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("pipeline")
        except PackageNotFoundError:
            found = "unknown (not installed: pip install -e .)"
        print(f"pipeline {found}")
        parser.exit()


def _duration(text: str, least: float) -> float:
    """ "90", "15m", "1h" -> seconds, at least `least`; NaN and infinity are not durations."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        value = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90, 15m or 1h") from None
    if not math.isfinite(value) or value < least:
        raise argparse.ArgumentTypeError(f"{text!r} must be a duration of at least {least:g}s, like 90, 15m or 1h")
    return value


def _interval(text: str) -> float:
    return _duration(text, 1.0)


def _jitter(text: str) -> float:
    return _duration(text, 0.0)


def _icons_request(request: BuildRequest, names: list[str], force: bool) -> BuildRequest:
    known = {spec.name for spec in request.site.icons}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown icon(s): {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
    chosen = frozenset(names or known)
    return replace(request, offline=True, reencode=chosen if force else frozenset())


class _StopOnSignal:
    """SIGTERM/SIGINT ask the run to stop at its next checkpoint; none is honoured after the
    switch has begun, so a signal never leaves a half-made switch or a switch after the signal."""

    def __init__(self) -> None:
        self.requested = False
        self.committed = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self.requested = True

    def checkpoint(self, name: str) -> None:
        """Called by the build at each named point of the run."""
        crashpoints.kill_at(name)
        if name == "before_switch":
            if self.requested:
                raise Interrupted(
                    "stopped by a signal before publishing; nothing was switched: the live site is unchanged"
                )
            self.committed = True
        elif self.requested and not self.committed:
            raise Interrupted("stopped by a signal; nothing was switched: the live site is unchanged")


def warnings(report: RunReport) -> list[str]:
    from .model import Origin

    stale = [
        f"icon {s.spec.name!r} is stale: {s.reason}; using the last good copy in icons/"
        for s in report.sources
        if s.origin is Origin.STALE
    ]
    if report.content and report.content.origin is Origin.STALE:
        stale.append(f"content feed is stale: {report.content.reason}; using its last good copy")
    return stale + ([report.indexnow.problem] if report.indexnow and report.indexnow.problem else [])


def summary(report: RunReport, seconds: float) -> str:
    from .model import Origin

    origins = {o: sum(1 for s in report.sources if s.origin is o) for o in Origin}
    encoded = sum(1 for e in report.encoded if not e.reused)
    result = report.publish
    lines = [
        f"pipeline: {_outcome(report)} in {seconds:.2f}s",
        "  icons     " + (", ".join(f"{n} {o.value}" for o, n in origins.items() if n) or "none"),
        f"  encode    {encoded} encoded, {len(report.encoded) - encoded} reused from cache",
        "  bytes     " + "; ".join(_format_bytes(report)),
        f"  pages     HTML {_delta(report.minified_before, report.minified_after)}; "
        f"CSS+JS {_delta(report.css_before, report.css_after)}",
        f"  publish   {result.files_written} files, {result.bytes_written:,} bytes written"
        + (f"; changed: {', '.join(report.changed_pages)}" if report.changed_pages else ""),
        "  time      " + "  ".join(f"{stage} {secs:.2f}s" for stage, secs in report.timings.items()),
    ]
    if report.indexnow:
        lines.insert(-1, f"  indexnow  {len(report.indexnow.sent)} URL(s) sent, {report.indexnow.pending} queued")
    return "\n".join(lines)


def summary_line(report: RunReport, seconds: float) -> str:
    """One log line per run: outcome, what changed, timings."""
    result = report.publish
    stale = sum(1 for s in report.sources if s.origin.value == "stale")
    encoded = sum(1 for e in report.encoded if not e.reused)
    changed = ",".join(report.changed_pages) or "-"
    stages = " ".join(f"{stage}={secs:.2f}" for stage, secs in report.timings.items())
    pinged = f" indexnow={len(report.indexnow.sent)}/{report.indexnow.pending}q;" if report.indexnow else ""
    return (
        f"{_outcome(report)}; changed={changed}; encoded={encoded} stale={stale};{pinged} "
        f"written={result.files_written} files/{result.bytes_written}B; {seconds:.2f}s [{stages}]"
    )


def _outcome(report: RunReport) -> str:
    result = report.publish
    if result.switched:
        return f"published {result.release}" + (
            "" if report.changed_pages else " (assets only: no page content changed)"
        )
    return f"nothing changed; {result.release or 'no release'} stays live"


def _format_bytes(report: RunReport) -> list[str]:
    """Per format: the icons served in it and what their first-density files weigh against the
    sources (what a 1x screen downloads), with the count of files at every density."""
    out = []
    for fmt in ("avif", "webp", "png"):
        served = [(e, [v for r in e.renditions for v in r.variants if v.format == fmt]) for e in report.encoded]
        served = [(e, files) for e, files in served if files]
        if served:
            source, first = sum(e.source_bytes for e, _ in served), sum(files[0].size for _, files in served)
            count = sum(len(files) for _, files in served)
            out.append(f"{fmt} {len(served)} icons ({count} files), 1x {_delta(source, first)}")
    return out or ["no icons"]


def _delta(before: int, after: int) -> str:
    saved = f" ({(after - before) / before:+.0%})" if before else ""
    return f"{before:,} -> {after:,}{saved}"


if __name__ == "__main__":
    sys.exit(main())
