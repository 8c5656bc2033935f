"""The hourly loop: never two runs at once, missed runs coalesced, a hung run killed.

Each run is a child process (`python -m pipeline build`), so the daemon itself stays small (it
never imports Pillow, numpy or Jinja2) and a run that hangs is killed by its timeout without
taking the schedule down. Runs are sequential in one loop, so they cannot overlap here; across
processes the build lock (see lock.py) keeps a manual `pipeline build` and a scheduled run apart.

Timekeeping uses CLOCK_BOOTTIME, which keeps counting while the machine is suspended (monotonic
does not), and waits in short slices, so a resume after a suspend or a SIGSTOP is noticed within
a slice. Missed ticks collapse into one catch-up run, then the grid resumes; there is no
"misfire grace" that could skip a late run (APScheduler's default of 1 s does exactly that).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

WAIT_SLICE = 5.0  # seconds; the longest the loop sleeps before looking at the clock again


@dataclass(frozen=True)
class ScheduleSettings:
    interval: float = 3600.0
    jitter: float = 0.0  # up to this many seconds added to each tick, so many sites don't align
    run_timeout: float = 900.0  # a run still going after this is killed; the schedule goes on
    kill_grace: float = 10.0  # between SIGTERM and SIGKILL for a run being stopped


@dataclass(frozen=True)
class RunOutcome:
    number: int
    exit_code: int  # the child's; -9 when killed; 124 when the run timed out
    seconds: float
    summary: str  # the child's one-line summary, or why it failed
    warnings: tuple[str, ...] = ()


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def latest_tick(base: float, now: float, interval: float) -> float:
    """The last tick of the grid `base + k*interval` at or before `now`."""
    return base + math.floor((now - base) / interval) * interval


class Scheduler:
    """Runs `job` at start and on every tick of the grid `start + k*interval` until `stop` is set.

    A run serves every tick up to its start. Ticks that pass while a run is going, or while the
    process is paused, are owed exactly one catch-up run, started as soon as it can be; then
    the grid resumes. Runs never overlap: the loop waits for each one."""

    def __init__(
        self,
        job: Callable[[int], RunOutcome],
        settings: ScheduleSettings,
        clock: Callable[[], float] = boottime,
        stop: threading.Event | None = None,
        wait: Callable[[float], object] | None = None,
        jitter: Callable[[float], float] = lambda most: random.uniform(0, most),
    ) -> None:
        self.job, self.settings, self.clock = job, settings, clock
        self.stop = stop or threading.Event()
        self.wait = wait or self.stop.wait
        self.jitter = jitter

    def run(self, max_runs: int | None = None) -> list[RunOutcome]:
        outcomes: list[RunOutcome] = []
        interval = self.settings.interval
        base = due = self.clock()
        while not self.stop.is_set() and (max_runs is None or len(outcomes) < max_runs):
            now = self.clock()
            if now < due:
                self.wait(min(due - now, WAIT_SLICE))
                continue
            served = latest_tick(base, now, interval)
            outcomes.append(self.job(len(outcomes) + 1))
            following = served + interval
            if following <= self.clock():
                due = self.clock()  # ticks passed during the run: one catch-up, now
            else:
                due = following + (self.jitter(self.settings.jitter) if self.settings.jitter > 0 else 0.0)
        return outcomes


class BuildProcess:
    """One run = `python -m pipeline build --summary line ...` in its own process group."""

    def __init__(self, site: Path, settings: ScheduleSettings, extra: Sequence[str] = ()) -> None:
        self.site, self.settings, self.extra = site, settings, tuple(extra)
        self.child: subprocess.Popen[str] | None = None

    def __call__(self, number: int) -> RunOutcome:
        command = [
            sys.executable,
            "-m",
            "pipeline",
            "build",
            "--site",
            str(self.site),
            "--summary",
            "line",
            *self.extra,
        ]
        started = time.monotonic()
        self.child = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            out, err = self.child.communicate(timeout=self.settings.run_timeout)
            code = self.child.returncode
            summary = (out.strip().splitlines() or [""])[-1]
        except subprocess.TimeoutExpired:
            self.terminate()
            try:
                out, err = self.child.communicate(timeout=self.settings.kill_grace)
            except subprocess.TimeoutExpired:  # something still holds its pipes: stop reading them
                out, err = "", ""
            code, summary = (
                124,
                f"killed after the run timeout of {self.settings.run_timeout:g}s; nothing was switched by it",
            )
        finally:
            self.child = None
        lines = tuple(line for line in err.splitlines() if line.strip())
        if code != 0 and code != 124:
            # "pipeline: error: ..." for an expected failure; a crash's last traceback line otherwise
            fallback = f"exit {code}: {lines[-1]}" if lines else summary or f"exit {code}"
            summary = next((line for line in reversed(lines) if "error" in line.lower()), fallback)
        return RunOutcome(number, code, time.monotonic() - started, summary, lines if code == 0 else ())

    def terminate(self) -> None:
        """SIGTERM the run's process group (the build stops before any switch), then SIGKILL."""
        child = self.child
        if child is None:
            return
        if child.poll() is not None:  # the leader is gone; anything left in its group goes now
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            return
        for sig, grace in ((signal.SIGTERM, self.settings.kill_grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(child.pid, sig)
            except ProcessLookupError:
                return
            try:
                child.wait(grace)
                return
            except subprocess.TimeoutExpired:
                continue


def log_line(outcome: RunOutcome, now: dt.datetime | None = None) -> str:
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = "ok" if outcome.exit_code == 0 else f"exit {outcome.exit_code}"
    return f"{stamp} run {outcome.number} {status} {outcome.seconds:.2f}s: {outcome.summary}"


def refresh(
    site: Path,
    settings: ScheduleSettings,
    emit: Callable[[str], None],
    max_runs: int | None = None,
    extra: Sequence[str] = (),
) -> int:
    """The daemon: build now, then every interval, until SIGTERM/SIGINT. Returns runs done."""
    stop = threading.Event()
    process = BuildProcess(site, settings, extra)

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        process.terminate()  # the current run stops cleanly: no switch after this point

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def job(number: int) -> RunOutcome:
        outcome = process(number)
        for warning in outcome.warnings:
            emit(f"  {warning}")
        emit(log_line(outcome))
        return outcome

    try:
        return len(Scheduler(job, settings, stop=stop).run(max_runs))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
