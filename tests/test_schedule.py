"""The refresh loop: no overlap, missed runs coalesced into one, late runs never skipped.

Semantics are tested with an injected clock; the daemon itself with real processes and signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.schedule import RunOutcome, Scheduler, ScheduleSettings

from .conftest import REPO


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def scheduler(
    clock: FakeClock, durations: list[float], pause_before: dict[int, float] | None = None, interval: float = 10.0
) -> tuple[Scheduler, list[tuple[float, float]]]:
    """A job that takes durations[i] seconds; pause_before[i] freezes the process (the clock
    jumps) while it waits for run i."""
    spans: list[tuple[float, float]] = []
    pauses = dict(pause_before or {})

    def job(number: int) -> RunOutcome:
        start = clock()
        clock.advance(durations[number - 1])
        spans.append((start, clock()))
        return RunOutcome(number, 0, durations[number - 1], "ok")

    def wait(seconds: float) -> None:
        if len(spans) + 1 in pauses:
            clock.advance(pauses.pop(len(spans) + 1))
        else:
            clock.advance(seconds)

    return Scheduler(job, ScheduleSettings(interval=interval), clock=clock, wait=wait), spans


def test_runs_on_the_grid() -> None:
    clock = FakeClock()
    sched, spans = scheduler(clock, [1, 1, 1, 1])
    sched.run(max_runs=4)
    assert [start for start, _ in spans] == [1000, 1010, 1020, 1030]


def test_a_long_run_never_overlaps_and_owes_one_catch_up() -> None:
    clock = FakeClock()
    sched, spans = scheduler(clock, [25, 1, 1, 1])  # run 1 spans the ticks at 1010 and 1020
    sched.run(max_runs=4)
    starts = [start for start, _ in spans]
    assert starts == [1000, 1025, 1030, 1040]  # one catch-up at once, then the grid again
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))  # no overlap


def test_a_pause_is_coalesced_into_exactly_one_late_run() -> None:
    clock = FakeClock()
    sched, spans = scheduler(clock, [1, 1, 1, 1], pause_before={2: 35})  # SIGSTOP for 35 s
    sched.run(max_runs=4)
    starts = [start for start, _ in spans]
    # Ticks 1010, 1020 and 1030 were missed while paused: one run at resume, not three, and
    # not zero (a 1 s misfire grace, APScheduler's default, would have skipped it).
    assert starts == [1000, 1036, 1040, 1050]


def test_jitter_delays_ticks_but_not_catch_ups() -> None:
    clock = FakeClock()
    spans: list[float] = []

    def job(number: int) -> RunOutcome:
        spans.append(clock())
        clock.advance(25 if number == 1 else 1)
        return RunOutcome(number, 0, 0, "ok")

    sched = Scheduler(
        job, ScheduleSettings(interval=10, jitter=3), clock=clock, wait=clock.advance, jitter=lambda most: most
    )
    sched.run(max_runs=3)
    assert spans == [1000, 1025, 1033]


def start_refresh(site: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "refresh", "--site", str(site), "--offline", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def test_daemon_coalesces_a_sigstop_and_stops_on_sigterm(site: Path) -> None:
    daemon = start_refresh(site, "--interval", "2")
    try:
        time.sleep(3.0)  # the first run (about 0.5 s) and maybe a second
        os.kill(daemon.pid, signal.SIGSTOP)
        time.sleep(7.0)  # three or four ticks pass while it is frozen
        os.kill(daemon.pid, signal.SIGCONT)
        time.sleep(1.2)  # the one catch-up run happens now
        os.kill(daemon.pid, signal.SIGTERM)
        out, err = daemon.communicate(timeout=20)
    finally:
        daemon.kill()
    assert daemon.returncode == 0, err
    runs = re.findall(r"^\S+ run (\d+) ok [\d.]+s: (.*)$", out, re.M)
    assert runs, out
    assert "published r000001" in runs[0][1]
    assert all("nothing changed" in summary for _, summary in runs[1:])
    assert 2 <= len(runs) <= 4, out  # with one catch-up per pause; 6+ would mean no coalescing
    assert out.rstrip().endswith("pipeline refresh: stopped")


def test_second_daemon_is_refused(site: Path) -> None:
    first = start_refresh(site, "--interval", "60")
    try:
        deadline = time.monotonic() + 10
        while not (site / ".cache" / "refresh.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        second = start_refresh(site, "--interval", "60")
        _, err = second.communicate(timeout=10)
        assert second.returncode == 75
        assert f"another refresh is running (pid {first.pid})" in err
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=20)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--interval", "0"),
        ("--interval", "-5"),
        ("--interval", "nan"),
        ("--interval", "inf"),
        ("--run-timeout", "0.5"),
        ("--jitter", "-1"),
    ],
)
def test_a_duration_out_of_range_is_a_usage_error_not_a_traceback(tmp_path: Path, flag: str, value: str) -> None:
    """`--interval 0` used to end in a ZeroDivisionError traceback inside the scheduler."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "refresh", "--site", str(tmp_path), flag, value],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"argument {flag}: {value!r} must be a duration of at least" in result.stderr
