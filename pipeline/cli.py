"""argv -> config -> one call into build -> summary + exit code. Nothing else.

stdout gets the run summary; stderr gets warnings and errors. Exit codes: see pipeline/errors.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import build, config
from .errors import ConfigError, PipelineError
from .model import Origin, RunReport

CRASH_ENV = "BUILDER_CRASH_AT"  # test-only: kill -9 ourselves at a named checkpoint


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    try:
        site = config.load_site(Path(args.site))
        request = build.BuildRequest(site, today=dt.date.today(), now=time.time(), offline=args.offline,
                                     jobs=args.jobs, checkpoint=_crash_point())
        if args.command == "icons":
            request = _icons_request(request, args.names, args.force)
        report = build.run(request)
    except PipelineError as error:
        print(f"pipeline: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("pipeline: interrupted; nothing was switched", file=sys.stderr)
        return 130
    for line in warnings(report):
        print(f"pipeline: warning: {line}", file=sys.stderr)
    print(summary(report, time.perf_counter() - started))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--site", default=".", metavar="DIR", help="the site folder (default: the current one)")
    common.add_argument("--jobs", type=int, default=0, metavar="N", help="encode processes (default: one per core)")
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", parents=[common], help="fetch, encode, render and publish the site")
    build_cmd.add_argument("--offline", action="store_true", help="use the sources in icons/ only; no network")
    icons = commands.add_parser("icons", parents=[common],
                                help="re-optimise icons from icons/ with the current settings, rebuild, publish")
    icons.add_argument("names", nargs="*", metavar="NAME", help="icon names as in icon_map.yaml (default: all)")
    icons.add_argument("--force", action="store_true", help="encode even where the cache holds these settings")
    icons.set_defaults(offline=True)
    return parser


def _icons_request(request: build.BuildRequest, names: list[str], force: bool) -> build.BuildRequest:
    known = {spec.name for spec in request.site.icons}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown icon(s): {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
    chosen = frozenset(names or known)
    return build.BuildRequest(request.site, request.today, request.now, offline=True,
                              reencode=chosen if force else frozenset(), jobs=request.jobs,
                              checkpoint=request.checkpoint)


def _crash_point():  # -> Checkpoint
    import os
    import signal

    target = os.environ.get(CRASH_ENV)

    def checkpoint(name: str) -> None:
        if name == target:
            os.kill(os.getpid(), signal.SIGKILL)

    return checkpoint


def warnings(report: RunReport) -> list[str]:
    return [f"icon {s.spec.name!r} is stale: {s.reason}; using the last good copy in icons/"
            for s in report.sources if s.origin is Origin.STALE]


def summary(report: RunReport, seconds: float) -> str:
    origins = {o: sum(1 for s in report.sources if s.origin is o) for o in Origin}
    encoded = sum(1 for e in report.encoded if not e.reused)
    result = report.publish
    outcome = f"published {result.release}" if result.switched else f"nothing changed; {result.release or 'no release'} stays live"
    lines = [
        f"pipeline: {outcome} in {seconds:.2f}s",
        "  icons     " + ", ".join(f"{n} {o.value}" for o, n in origins.items() if n) or "  icons     none",
        f"  encode    {encoded} encoded, {len(report.encoded) - encoded} reused from cache",
        "  bytes     " + "; ".join(_format_bytes(report)),
        f"  pages     HTML {_delta(report.minified_before, report.minified_after)}; "
        f"CSS {_delta(report.css_before, report.css_after)}",
        f"  publish   {result.files_written} files, {result.bytes_written:,} bytes written"
        + (f"; changed: {', '.join(result.changed_pages)}" if result.changed_pages else ""),
        "  time      " + "  ".join(f"{stage} {secs:.2f}s" for stage, secs in report.timings.items()),
    ]
    return "\n".join(lines)


def _format_bytes(report: RunReport) -> list[str]:
    out = []
    for fmt in ("avif", "webp", "png"):
        pairs = [(e.source_bytes, len(v.data)) for e in report.encoded for v in e.variants if v.format == fmt]
        if pairs:
            source, output = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
            out.append(f"{fmt} {len(pairs)} icons {_delta(source, output)}")
    return out or ["no icons"]


def _delta(before: int, after: int) -> str:
    saved = f" ({(after - before) / before:+.0%})" if before else ""
    return f"{before:,} -> {after:,}{saved}"


if __name__ == "__main__":
    sys.exit(main())
