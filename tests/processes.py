"""Processes a test or a bench started: the one stopper, and what /proc says about processes.

stop_process(*processes)    SIGTERM, a bounded wait, SIGKILL (the process, or the group it leads),
                            for Popens and for (pid, cmdline) of processes started indirectly
processes(), proc_info(pid), still_running(pid, cmdline), group_members(group), has_exited(pid)

No pytest here: tests/nginx_core.py and tests/seaweed.py use it, and the benches import those
with only the bench extra installed. tests/tools.py re-exports these names for the tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def stop_process(*processes: subprocess.Popen | tuple[int, str], group: bool = False, timeout: float = 5.0) -> None:
    """Stop processes a test started: SIGTERM, a wait of at most `timeout` for all of them together,
    SIGKILL to any still running, then reap (each reap bounded by `timeout` too). Never waits
    unboundedly; one that has already ended is left alone.

    Each is a Popen (a child of this process) or a (pid, cmdline) pair for one the test started
    indirectly (a builder's encode worker, a daemon's run), which is only signalled while /proc
    still shows that pid running with that command line, so never a reused pid.

    With `group` (each Popen was started with start_new_session, so it leads its own group) both
    signals go to that group, so a helper it forked does not outlive it, and the leader is reaped
    only after the SIGKILL: until then its PID, and so the group ID, cannot be reused. A leader
    already reaped (a poll() collected it) has its group signalled only while a member of the group
    still runs (which also keeps the group ID from being reused), e.g. nginx workers that outlived
    their master."""
    popens = [p for p in processes if isinstance(p, subprocess.Popen)]
    others = [p for p in processes if not isinstance(p, subprocess.Popen)]

    def leader_running(process: subprocess.Popen) -> bool:
        return process.returncode is None and not has_exited(process.pid)

    def signal_all(number: int) -> None:
        for process in popens:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if not group:
                    if leader_running(process):
                        os.kill(process.pid, number)
                elif process.returncode is None or group_members(process.pid):  # the group ID is still ours
                    os.killpg(process.pid, number)
        for pid, cmdline in others:
            if still_running(pid, cmdline):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, number)

    def any_running() -> bool:
        return (
            any(leader_running(p) for p in popens)
            or (group and any(p.returncode is not None and group_members(p.pid) for p in popens))
            or any(still_running(pid, cmdline) for pid, cmdline in others)
        )

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    signal_all(signal.SIGKILL)
    for process in popens:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)


def has_exited(pid: int) -> bool:
    """Whether the child `pid` has exited, without reaping it (it stays a zombie)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def proc_info(pid: int) -> tuple[int, int, str] | None:
    """(ppid, process group, cmdline) of a live process, None if it is gone (or a zombie: it has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    state, ppid, group = stat.rsplit(")", 1)[1].split()[:3]
    return None if state in "ZX" else (int(ppid), int(group), cmdline)


def processes() -> dict[int, tuple[int, int, str]]:
    """Every live process: pid -> (ppid, process group, cmdline)."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (info := proc_info(int(name))):
            table[int(name)] = info
    return table


def still_running(pid: int, cmdline: str) -> bool:
    """`pid` is live and still has `cmdline` (the same command line: not a reused pid)."""
    info = proc_info(pid)
    return info is not None and info[2] == cmdline


def group_members(group: int) -> list[int]:
    """The live processes of a process group."""
    return [pid for pid, (_ppid, pgid, _cmd) in processes().items() if pgid == group]
