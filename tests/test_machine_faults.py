"""The machine rows of ../shared/faults.md: disk full (#37), inodes exhausted at the state write
(#38), read-only output (#39), kill -9 of the lock holder (#42) and of the encode workers' parent
(#43, from the shell and under the daemon), a hung run under the daemon (#44), wall-clock jumps
back and forward (#45, #46), a random kill -9 storm (#36, light: 15 kills) and where staging
lives (#54). Builders run as subprocesses of a cloned site whose `current` is r000001.

Everything runs on loopback and local disk. Needs root (tmpfs and read-only bind mounts in this
process's mount namespace, always unmounted again) and the Debian packages `faketime` (#45, #46)
and `strace` (#38); `mount` and `util-linux` are always there. Without root, or on a machine that
refuses the mounts, rows 37-39 skip locally and fail when CI is set (tools.require): no fault row
drops out of CI silently. Every process a test started is stopped with tools.stop_process.
Rows 35, 40, 41 and 47 are covered elsewhere (test_swap.py, test_nginx.py,
test_build.py/test_swap.py, test_schedule.py).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from pipeline.gate import urls_in

from .conftest import REPO, copy_default_site, run_cli
from .test_build import snapshot
from .tools import proc_info, processes, require, still_running, stop_process

ORPHAN_GRACE = 3.0  # seconds an encode worker may outlive its killed parent (#43)


# ---- helpers -----------------------------------------------------------------------------------


def build(
    site: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return run_cli(site, "build", "--offline", *args, env=env, timeout=timeout)


def builder(
    site: Path, *args: str, env: dict[str, str] | None = None, output: int = subprocess.PIPE
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *(args or ("build", "--offline")), "--site", str(site)],
        stdout=output,
        stderr=output,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def set_code(site: Path, tag: str) -> None:
    """A content change: the code HDDTAPES becomes HDDTAPES<tag> (index.html and codes.json change)."""
    codes = site / "codes.yaml"
    text, count = re.subn(r"HDDTAPES\w*", f"HDDTAPES{tag}", codes.read_text(encoding="utf-8"))
    assert count == 1, "codes.yaml no longer has the code HDDTAPES this test edits"
    codes.write_text(text, encoding="utf-8")


def configure(site: Path, section: str, **values: object) -> None:
    """Set keys of one [section] of site.toml, replacing the line of a key that is there."""

    def toml(value: object) -> str:
        return ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)

    path = site / "site.toml"
    pending, out, current = dict(values), [], None

    def flush() -> None:
        if current == section:
            out.extend(f"{key} = {toml(value)}" for key, value in pending.items())
            pending.clear()

    for line in path.read_text(encoding="utf-8").splitlines():
        if header := re.match(r"\s*\[([^\]]+)\]", line):
            flush()
            current = header.group(1).strip()
        elif current == section and (key := re.match(r"\s*([A-Za-z_]+)\s*=", line)) and key.group(1) in pending:
            line = f"{key.group(1)} = {toml(pending.pop(key.group(1)))}"
        out.append(line)
    flush()
    if pending:
        out += [f"[{section}]", *(f"{key} = {toml(value)}" for key, value in pending.items())]
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def live(dist: Path) -> str:
    return Path(os.readlink(dist / "current")).name


def release_dirs(dist: Path) -> set[str]:
    return {p.name for p in (dist / "releases").iterdir() if p.is_dir() and re.fullmatch(r"r\d{6}", p.name)}


def records(dist: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in (dist / "releases").glob("r*.json")}


def leftovers(dist: Path) -> list[str]:
    return sorted(p.name for p in [*dist.glob(".staging-*"), *dist.glob(".current.*")])


def assert_complete(dist: Path) -> str:
    """dist/current names one whole release: index.html is there and ends, and every local URL in
    every page (src, href, each srcset candidate) is a file in that release. Returns its name."""
    target = os.readlink(dist / "current")
    assert re.fullmatch(r"releases/r\d{6}", target), target
    root = dist / target
    assert (root / "index.html").is_file(), f"{target} has no index.html"
    for page in sorted(root.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        assert text.rstrip().endswith("</html>"), f"{target}/{page.name} is torn"
        for _tag, _key, url in urls_in(text):
            if not url.startswith("/") or url.startswith("//"):
                continue
            path = url.split("#")[0].split("?")[0].lstrip("/")
            path = path + "index.html" if not path or path.endswith("/") else path
            assert (root / path).is_file(), f"{target}/{page.name} names {url}, which is not in the release"
    return Path(target).name


def used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def used_inodes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_files - st.f_ffree


def clean_error(result: subprocess.CompletedProcess[str], code: int | None, words: str) -> None:
    """A failed run: the exit code, one `pipeline: error:` naming the problem, no traceback."""
    assert result.returncode != 0 and (code is None or result.returncode == code), (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "pipeline: error:" in result.stderr and words in result.stderr, result.stderr


# ---- processes (what /proc says, and stopping them: tests/tools.py) ------------------------------


def descendants(pid: int) -> dict[int, str]:
    table, found, frontier = processes(), {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _group, cmdline) in table.items():
            if ppid == parent and child not in found:
                found[child] = cmdline
                frontier.append(child)
    return found


def processes_naming(text: str) -> dict[int, str]:
    return {pid: cmd for pid, (_ppid, _group, cmd) in processes().items() if text in cmd and pid != os.getpid()}


def in_groups(groups: set[int]) -> dict[int, str]:
    return {pid: cmd for pid, (_ppid, group, cmd) in processes().items() if group in groups}


# ---- mounts --------------------------------------------------------------------------------------


class Mounts:
    """tmpfs and read-only bind mounts under the test's tmp_path, all unmounted at the end."""

    def __init__(self) -> None:
        self.targets: list[Path] = []

    def _mount(self, *args: str) -> None:
        result = subprocess.run(["mount", *args], capture_output=True, text=True)
        if result.returncode != 0:
            if not self.targets:  # skips locally; under CI the row must not drop out silently
                require(False, f"this machine refuses mounts even as root: {result.stderr.strip()}")
            raise AssertionError(f"mount {' '.join(args)}: {result.stderr.strip()}")

    def tmpfs(self, target: Path, **options: object) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        self._mount("-t", "tmpfs", "-o", ",".join(f"{k}={v}" for k, v in options.items()), "tmpfs", str(target))
        self.targets.append(target)
        return target

    def remount(self, target: Path, **options: object) -> None:
        self._mount("-o", ",".join(["remount", *(f"{k}={v}" for k, v in options.items())]), str(target))

    def read_only(self, target: Path) -> None:
        self._mount("--bind", str(target), str(target))
        self.targets.append(target)
        self._mount("-o", "remount,bind,ro", str(target))

    def unmount(self, target: Path) -> None:
        subprocess.run(["umount", str(target)], check=True, capture_output=True)
        self.targets.remove(target)

    def close(self) -> None:
        for target in reversed(self.targets):
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def mounts():
    require(os.geteuid() == 0, "needs root to mount a tmpfs or a read-only bind mount (CI runs as root)")
    done = Mounts()
    yield done
    done.close()


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: apt-get install -y {package}")
    return path


# ---- the site ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, warm_cache: Path) -> Path:
    """The default site with a warm encode cache and one live release, r000001; tests clone it."""
    site = copy_default_site(tmp_path_factory.mktemp("machine") / "site")
    shutil.copytree(warm_cache, site / ".cache")
    first = build(site)
    assert first.returncode == 0 and "published r000001" in first.stdout, first.stderr
    return site


def clone(template: Path, target: Path) -> Path:
    """`cp -a`: hard links between releases and the `current` symlink stay what they are."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(template), str(target)], check=True)
    return target


# ---- #37 disk full ---------------------------------------------------------------------------------


def test_37_disk_full_fails_cleanly_keeps_current_and_recovers(template: Path, tmp_path: Path, mounts: Mounts) -> None:
    """The whole site (dist/, its staging, .cache/) on a tmpfs with room for the live release plus
    128 KiB; a change needing ~1 MB more (a big stylesheet) fails with ENOSPC as a clean error
    (exit 73, no traceback), leaves no staging and `current` byte-identical; with room again the
    next run publishes."""
    mnt = mounts.tmpfs(tmp_path / "small", size="16m")
    site = clone(template, mnt / "site")
    dist = site / "dist"
    rng = random.Random(37)
    (site / "templates" / "pad.css").write_text(
        "".join(f".p{rng.getrandbits(64):016x}{{color:#{rng.getrandbits(24):06x}}}\n" for _ in range(20000))
    )
    before = snapshot(dist)
    mounts.remount(mnt, size=used_bytes(mnt) + 128 * 1024)

    full = build(site)
    clean_error(full, 73, "No space left on device")
    assert "out of space or of inodes" in full.stderr
    assert leftovers(dist) == []
    assert snapshot(dist) == before

    mounts.remount(mnt, size="16m")  # space freed
    again = build(site)
    assert again.returncode == 0, again.stderr
    assert "published r000002" in again.stdout
    assert assert_complete(dist) == "r000002" and list((dist / "current" / "assets").glob("pad.*.css"))
    assert leftovers(dist) == []


# ---- #38 inodes exhausted / the state write fails --------------------------------------------------


def test_38_inodes_exhausted_at_the_state_write_keep_the_old_state(
    template: Path, tmp_path: Path, mounts: Mounts
) -> None:
    """tmpfs nr_inodes: first exactly one inode short of a release, so the staging tree fits and
    the release record (releases/rNNNNNN.json, the state write) is what fails, shown by strace;
    then a couple of inodes only, so staging itself fails. Each time: a clean ENOSPC error (73),
    the old records and `current` byte-identical, no half-written JSON, no staging. With inodes
    again the next run publishes."""
    strace = need("strace", "strace")
    mnt = mounts.tmpfs(tmp_path / "small", size="64m", nr_inodes=100000)
    site = clone(template, mnt / "site")
    dist = site / "dist"
    set_code(site, "1")
    assert "published r000002" in build(site).stdout  # first run here also fills .cache/ (templates, favicon)
    set_code(site, "2")
    start = used_inodes(mnt)
    assert "published r000003" in build(site).stdout
    per_release = used_inodes(mnt) - start  # staging tree (files, links, dirs) + its record
    set_code(site, "3")  # the same files change again, so the next release needs as many inodes
    before = snapshot(dist)

    mounts.remount(mnt, nr_inodes=used_inodes(mnt) + per_release - 1)
    trace = tmp_path / "strace.txt"
    short = subprocess.run(
        [
            strace,
            "-f",
            "-qq",
            "-e",
            "trace=%file",
            "-e",
            "status=failed",
            "-o",
            str(trace),
            sys.executable,
            "-m",
            "pipeline",
            "build",
            "--offline",
            "--site",
            str(site),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    failed = [line for line in trace.read_text().splitlines() if "ENOSPC" in line]
    assert failed and re.search(r"r000004\.json", failed[0]), f"the state write was not what failed: {failed}"
    clean_error(short, 73, "No space left on device")
    assert snapshot(dist) == before  # no r000003.json, no .tmp of it, old records untouched
    assert all(isinstance(record, dict) for record in records(dist).values())
    assert leftovers(dist) == []

    mounts.remount(mnt, nr_inodes=used_inodes(mnt) + 2)
    starved = build(site)
    clean_error(starved, 73, "No space left on device")
    assert snapshot(dist) == before and leftovers(dist) == []

    mounts.remount(mnt, nr_inodes=100000)
    again = build(site)
    assert again.returncode == 0, again.stderr
    assert "published r000004" in again.stdout and assert_complete(dist) == "r000004"
    assert "HDDTAPES3" in (dist / "current" / "index.html").read_text(encoding="utf-8")


# ---- #39 read-only output --------------------------------------------------------------------------


def test_39_read_only_output_is_a_clean_error_and_nothing_switches(
    template: Path, tmp_path: Path, mounts: Mounts
) -> None:
    """dist/ on a read-only bind mount: exit 73 naming EROFS, nothing switched. The whole site
    folder read-only (the lock in .cache/ cannot even be opened): a clean error too. Writable
    again: the change publishes."""
    site = clone(template, tmp_path / "site")
    dist = site / "dist"
    set_code(site, "1")
    before = snapshot(dist)

    mounts.read_only(dist)
    clean_error(build(site), 73, "Read-only file system")
    assert "remount it read-write" in build(site).stderr
    assert snapshot(dist) == before
    mounts.unmount(dist)

    mounts.read_only(site)
    clean_error(build(site), None, "Read-only file system")
    assert snapshot(dist) == before
    mounts.unmount(site)

    again = build(site)
    assert again.returncode == 0, again.stderr
    assert "published r000002" in again.stdout and assert_complete(dist) == "r000002"


# ---- #42 / #43 kill -9 of the lock holder mid-encode ------------------------------------------------


@dataclass
class KilledMidEncode:
    site: Path
    stale_staging: list[str]  # left by an earlier run killed at mid_write
    workers: dict[int, str]  # the killed run's children (encode workers, resource tracker): pid -> cmdline
    worker_files: dict[int, list[str]]  # what each of them had open, right after the kill
    next_run: subprocess.CompletedProcess[str]  # `build` started at once after the kill
    survivors: dict[int, str]  # of `workers`, those still running ORPHAN_GRACE s after the kill


@pytest.fixture(scope="module")
def killed_mid_encode(template: Path, tmp_path_factory: pytest.TempPathFactory) -> KilledMidEncode:
    """One scenario for rows 42 and 43. A run killed at mid_write leaves staging behind; then a
    slow run holding the lock (`icons --force --jobs 1`: every icon encoded again, ~7 s) is
    SIGKILLed (the parent only) while its worker encodes, and `build` is started at once."""
    site = clone(template, tmp_path_factory.mktemp("kill9") / "site")
    dist = site / "dist"
    set_code(site, "42")
    crashed = build(site, env={"BUILDER_CRASH_AT": "mid_write"})
    assert crashed.returncode == -9, crashed.stderr
    stale = sorted(p.name for p in dist.glob(".staging-*"))
    # No pipes: an orphaned worker inherits the parent's stdout/stderr, so reading them to EOF would
    # wait for the orphans as well.
    slow = builder(site, "icons", "--force", "--jobs", "1", output=subprocess.DEVNULL)
    seen: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 30
        while slow.poll() is None and time.monotonic() < deadline:
            seen.update(descendants(slow.pid))
            if any("spawn_main" in cmd for cmd in seen.values()):
                break
            time.sleep(0.05)
        assert any("spawn_main" in cmd for cmd in seen.values()), f"no encode worker started: {seen}"
        time.sleep(0.5)  # the worker is encoding, the parent waits for it
        assert slow.poll() is None, "the slow run ended before it could be killed"
        workers = descendants(slow.pid)
        seen.update(workers)
        slow.send_signal(signal.SIGKILL)
        slow.wait(timeout=10)
        killed_at = time.monotonic()
        files = {}
        for pid in workers:
            try:
                files[pid] = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            except OSError:
                files[pid] = []
        next_run = build(site)
        while time.monotonic() < killed_at + ORPHAN_GRACE and any(still_running(p, c) for p, c in workers.items()):
            time.sleep(0.1)
        survivors = {pid: cmd for pid, cmd in workers.items() if still_running(pid, cmd)}
    finally:
        stop_process(slow, *seen.items())  # the run, if still running, and every worker it left
    return KilledMidEncode(site, stale, workers, files, next_run, survivors)


def test_42_lock_holder_killed_mid_encode_next_build_gets_the_lock_at_once(killed_mid_encode: KilledMidEncode) -> None:
    """The flock died with its holder: the very next build runs (no exit 75), removes the staging
    an earlier killed run left, and publishes the pending change."""
    k = killed_mid_encode
    dist = k.site / "dist"
    assert k.stale_staging, "the mid_write crash left no staging to clean"
    assert k.next_run.returncode == 0, k.next_run.stderr
    assert "another build is running" not in k.next_run.stderr
    assert "published r000002" in k.next_run.stdout
    assert leftovers(dist) == []
    assert assert_complete(dist) == "r000002"
    assert "HDDTAPES42" in (dist / "current" / "index.html").read_text(encoding="utf-8")


def test_43_orphaned_encode_workers_hold_nothing_of_the_site(killed_mid_encode: KilledMidEncode) -> None:
    """Spawned (not forked) workers: an orphan holds neither the lock nor any file of the site,
    so it can neither block the next run nor touch the live tree."""
    k = killed_mid_encode
    assert any("spawn_main" in cmd for cmd in k.workers.values()), k.workers
    site = str(k.site.resolve())
    held = {pid: [f for f in files if f.startswith(site)] for pid, files in k.worker_files.items()}
    assert not any(held.values()), f"orphaned workers hold files of the site: {held}"
    assert k.next_run.returncode == 0, k.next_run.stderr


def test_43_orphaned_encode_workers_exit_by_themselves(killed_mid_encode: KilledMidEncode) -> None:
    """kill -9 of the parent only: every worker it started is gone within ORPHAN_GRACE seconds."""
    k = killed_mid_encode
    assert k.workers
    assert not k.survivors, f"still running {ORPHAN_GRACE:g}s after the parent was killed: {k.survivors}"


def test_43_daemon_goes_on_when_a_run_dies_and_leaves_its_workers(template: Path, tmp_path: Path) -> None:
    """The same orphan under the daemon: a run's parent is SIGKILLed mid-encode (BUILDER_CRASH_AT=
    mid_encode; in production the OOM killer) while its encode worker lives on. The daemon must
    still log that run and go on (here: stop after --max-runs 1) at the latest 3 s after the run
    timeout counted from the run's death."""
    run_timeout = 6.0  # well above the ~1.5 s the run takes to reach mid_encode, even on a busy box
    site = clone(template, tmp_path / "site")
    denny = site / "icons" / "denny.png"
    ImageOps.mirror(Image.open(denny)).save(denny)  # one icon to encode, so a worker is running
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "refresh",
            "--offline",
            "--site",
            str(site),
            "--interval",
            "60",
            "--run-timeout",
            f"{run_timeout:g}",
            "--max-runs",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "BUILDER_CRASH_AT": "mid_encode"},
    )
    runs: set[int] = set()  # the daemon's children; each leads its own process group, its workers are in it
    started, died = time.monotonic(), None
    try:
        while daemon.poll() is None and time.monotonic() < started + 30:
            runs |= {pid for pid, (ppid, _group, _cmd) in processes().items() if ppid == daemon.pid}
            if died is None and runs and not any(proc_info(pid) for pid in runs):
                died = time.monotonic()
            if died is not None and time.monotonic() > died + run_timeout + 3:
                break
            time.sleep(0.05)
        finished = daemon.poll() is not None
        if died is None and runs and not any(proc_info(pid) for pid in runs):
            died = time.monotonic()  # the daemon was quicker than this loop
    finally:
        stop_process(daemon, *in_groups(runs).items())  # the daemon, if still running, and its runs' groups
        out, err = daemon.communicate(timeout=10)
    assert runs and died is not None, "the daemon never started a run, or it never ended"
    assert died - started < run_timeout, "the run was not the one that died by itself at mid_encode"
    assert finished, f"the daemon hung after its run died: no log line, no next tick ({out!r})"
    assert re.search(r" run 1 exit (-9|124) ", out), out


# ---- #44 a hung run under the daemon ---------------------------------------------------------------


class Tarpit:
    """TCP on 127.0.0.1: the first connection is accepted and never answered (nor read); every
    later one is closed at once, a source that fails fast (the run then uses icons/)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self.accepted == 1:
                self.held.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in [*self.held, self.server]:
            conn.close()


def test_44_hung_run_is_killed_at_the_run_timeout_and_the_next_tick_runs(template: Path, tmp_path: Path) -> None:
    """`pipeline refresh --run-timeout 4 --interval 3`: run 1 hangs in the fetch (a source that
    never answers; [fetch] timeout 30 s and deadline 60 s outlive the run timeout), is killed and
    logged "killed after the run timeout"; the next tick is not skipped: run 2 starts right away
    and succeeds (which also proves run 1 no longer held the lock), and no builder is left.
    (4 s, not 2: run 2 takes ~1.5 s and must finish inside the same timeout on a busy machine.
    Run 1 takes 4 s + the daemon's 10 s SIGTERM grace: the hung fetch does not reach a
    checkpoint where the builder would honour SIGTERM.)"""
    site = clone(template, tmp_path / "site")
    tarpit = Tarpit()
    icon_map = site / "icon_map.yaml"
    icon_map.write_text(
        icon_map.read_text(encoding="utf-8").replace("https://cdn.jsdelivr.net", f"http://127.0.0.1:{tarpit.port}")
    )
    configure(site, "fetch", timeout=30.0, deadline=60.0, allow_private=True, concurrency=1)
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "refresh",
            "--site",
            str(site),
            "--interval",
            "3",
            "--run-timeout",
            "4",
            "--max-runs",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        out, err = daemon.communicate(timeout=60)
        left = processes_naming(str(site))
    finally:
        if daemon.poll() is None:
            stop_process(daemon)
            daemon.communicate()
        stop_process(*processes_naming(str(site)).items())
        tarpit.close()
    assert daemon.returncode == 0, err
    runs = [line for line in out.splitlines() if re.search(r" run \d+ ", line)]
    assert len(runs) == 2, out
    assert " run 1 exit 124 " in runs[0] and "killed after the run timeout" in runs[0], runs[0]
    assert " run 2 ok " in runs[1], out
    assert tarpit.accepted >= 2, "run 2 never asked the source"
    assert left == {}, f"builders left behind: {left}"
    assert leftovers(site / "dist") == [] and live(site / "dist") == "r000001"


# ---- #45 / #46 the wall clock jumps ----------------------------------------------------------------


def faketime_build(site: Path, offset: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            need("faketime", "faketime"),
            "-f",
            offset,
            sys.executable,
            "-m",
            "pipeline",
            "build",
            "--offline",
            "--site",
            str(site),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def assert_retained_assets_present(dist: Path, names: set[str]) -> None:
    """A retained release's hashed assets are carried by the live one (old pages keep working)."""
    current = dist / "current"
    for name in names:
        for asset in records(dist)[name]["assets"]:
            assert (current / asset).is_file(), f"{asset} of retained {name} is missing from the live release"


def test_45_clock_two_days_back_orders_by_sequence_and_deletes_nothing_live(template: Path, tmp_path: Path) -> None:
    """keep_releases = 2. r2 normal; r3 under `faketime -2d` (its record says two days ago);
    r4 normal again. The skewed release still goes live as the newest (sequence, not time),
    the next one is r4, and r3 stays as `previous` with its assets although its timestamp is
    outside the 24 h window: it is one of the last K by sequence. GC removes nothing."""
    site = clone(template, tmp_path / "site")
    dist = site / "dist"
    configure(site, "publish", keep_releases=2)
    set_code(site, "1")
    assert "published r000002" in build(site).stdout

    set_code(site, "2")
    back = faketime_build(site, "-2d")
    assert back.returncode == 0, back.stderr
    assert "published r000003" in back.stdout
    skew = records(dist)["r000003"]["created"] - time.time()
    assert abs(skew + 2 * 86400) < 3600, f"faketime did not move the builder's time.time() (skew {skew:.0f}s)"
    assert assert_complete(dist) == "r000003"
    assert release_dirs(dist) == {"r000001", "r000002", "r000003"}  # the others look newer, not older

    set_code(site, "3")
    normal = build(site)
    assert normal.returncode == 0, normal.stderr
    assert "published r000004" in normal.stdout
    assert assert_complete(dist) == "r000004"
    assert release_dirs(dist) == {"r000001", "r000002", "r000003", "r000004"}
    assert {name: r["seq"] for name, r in records(dist).items()} == {f"r{n:06d}": n for n in range(1, 5)}
    assert_retained_assets_present(dist, {"r000003"})
    assert leftovers(dist) == []


def test_46_clock_a_year_ahead_then_back_keeps_current_previous_and_last_k(template: Path, tmp_path: Path) -> None:
    """keep_releases = 2. r2 normal; r3 under `faketime +365d`: to that clock r1 is a year old and
    beyond the last K, so only it may go; r2 (previous) stays. Back to the real clock, r4: current,
    previous (r3, stamped a year ahead) and the last K stay, with their assets; r2 too (real 24 h).
    (An IndexNow backoff set by a clock far ahead: test_indexnow.py.)"""
    site = clone(template, tmp_path / "site")
    dist = site / "dist"
    configure(site, "publish", keep_releases=2)
    set_code(site, "1")
    assert "published r000002" in build(site).stdout

    set_code(site, "2")
    ahead = faketime_build(site, "+365d")
    assert ahead.returncode == 0, ahead.stderr
    assert "published r000003" in ahead.stdout
    skew = records(dist)["r000003"]["created"] - time.time()
    assert abs(skew - 365 * 86400) < 3600, f"faketime did not move the builder's time.time() (skew {skew:.0f}s)"
    assert assert_complete(dist) == "r000003"
    assert {"r000002", "r000003"} <= release_dirs(dist)
    assert_retained_assets_present(dist, {"r000002"})

    set_code(site, "3")
    normal = build(site)
    assert normal.returncode == 0, normal.stderr
    assert "published r000004" in normal.stdout
    assert assert_complete(dist) == "r000004"
    assert {"r000002", "r000003", "r000004"} <= release_dirs(dist)
    assert_retained_assets_present(dist, {"r000002", "r000003"})
    assert set(records(dist)) == release_dirs(dist)
    assert leftovers(dist) == []


# ---- #36 kill -9 storm (light) ---------------------------------------------------------------------


def test_36_kill_9_storm_keeps_current_whole_and_converges(template: Path, tmp_path: Path, record_figure) -> None:
    """15 builds, the content alternating, each SIGKILLed after a seeded random 0-1.5 s (at most
    the time a whole publishing run takes here, so nearly every run is killed somewhere). After
    each: `current` is a whole release (every URL its pages name exists), at most one staging.
    Then a normal build converges on the last content and leaves no staging; one more change
    publishes and collects: with retention_hours = 0, at most keep_releases (+ live) stay."""
    site = clone(template, tmp_path / "site")
    dist = site / "dist"
    configure(site, "publish", keep_releases=3, retention_hours=0.0)
    set_code(site, "0")
    started = time.monotonic()
    assert "published r000002" in build(site).stdout
    longest = min(1.5, time.monotonic() - started)
    rng = random.Random(36)
    killed = 0
    for i in range(15):
        set_code(site, str(1 + i % 2))
        run = builder(site)
        try:
            time.sleep(rng.uniform(0, longest))
            if run.poll() is None:
                run.send_signal(signal.SIGKILL)
                killed += 1
            _, err = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                stop_process(run)
                run.communicate()
        assert run.returncode in (0, -9), (i, err)
        assert_complete(dist)
        assert len(list(dist.glob(".staging-*"))) <= 1, leftovers(dist)
    record_figure("kill -9 storm: builds killed", f"{killed}/15 (delays 0-{longest:.2f}s)")
    assert killed >= 3, f"only {killed} of 15 builds were killed: the storm did not storm"

    final = build(site)
    assert final.returncode == 0, final.stderr
    assert assert_complete(dist) and "HDDTAPES1" in (dist / "current" / "index.html").read_text(encoding="utf-8")
    assert leftovers(dist) == []

    set_code(site, "3")
    collect = build(site)
    assert collect.returncode == 0 and "published" in collect.stdout, collect.stderr
    assert len(release_dirs(dist)) <= 3 + 1, sorted(release_dirs(dist))
    assert set(records(dist)) == release_dirs(dist)
    assert leftovers(dist) == []


# ---- #54 staging location -------------------------------------------------------------------------


def test_54_staging_is_inside_dist_on_the_same_filesystem(template: Path, tmp_path: Path) -> None:
    """Row 54 cannot happen by construction: staging is always `dist/.staging-PID`, a sibling of
    dist/releases/, so the rename into releases/ can never cross filesystems (EXDEV), and no
    setting can move it (an unknown [publish] key is refused at start-up, exit 78)."""
    site = clone(template, tmp_path / "site")
    dist = site / "dist"
    set_code(site, "54")
    run = builder(site, env={"BUILDER_CRASH_AT": "mid_write"})
    _, err = run.communicate(timeout=60)
    assert run.returncode == -9, err
    staging = sorted(dist.glob(".staging-*"))
    assert [p.name for p in staging] == [f".staging-{run.pid}"]
    assert staging[0].parent == dist and staging[0].is_dir()
    assert os.stat(staging[0]).st_dev == os.stat(dist / "releases").st_dev == os.stat(dist).st_dev

    configure(site, "publish", staging=str(tmp_path / "elsewhere"))
    refused = build(site)
    assert refused.returncode == 78 and "staging" in refused.stderr, refused.stderr
    assert not (tmp_path / "elsewhere").exists()
