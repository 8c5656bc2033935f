"""The atomic swap under load, kill -9 at every checkpoint, and two builds at once, all while the
real nginx serves the site and a probe (tests/probe.py) fetches pages and every asset they name;
and a check that the probe does count missing assets, torn pages and pages without a build id.

Numbers (swaps, probe requests, errors) are printed, so `pytest -s` shows them, and the swap test
writes them to test-artifacts/swap-under-load.json at the repo root.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from .conftest import REPO, run_cli
from .nginx import nginx_server  # noqa: F401 (fixture)
from .probe import Probe, asset_urls, build_id, is_complete, local_urls
from .tools import stop_process

pytestmark = pytest.mark.nginx

SWAPS = 50
ICON_EVERY = 5
CHECKPOINTS = (
    "after_config",
    "after_fetch",
    "after_encode",
    "after_render",
    "mid_write",
    "before_stage_rename",
    "after_stage_rename",
    "before_switch",
    "after_switch",
)
ARTIFACTS = REPO / "test-artifacts"
# Seconds each probe thread rests between rounds (a round is / + its ~30 assets + /codes.json):
# still hundreds of requests a second, and it leaves the builds most of a core on 2 cores.
PROBE_PAUSE = 0.02


# ---- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def served_site_dir(site: Path) -> Iterator[Path]:
    """The `site` copy moved to a private folder directly under the system temp dir.

    Not under pytest's tmp_path on purpose: tests/nginx.py opens the path to the nginx workers
    with o+x, but every pytest session that starts chmods /tmp/pytest-of-<user> back to 0700
    (pytest's tmp_path hardening), which cuts a running nginx off mid-test (403 on
    everything) whenever another pytest runs on the same machine."""
    private = Path(tempfile.mkdtemp(prefix="swap-site-"))
    try:
        target = private / "site"
        shutil.copytree(site, target, symlinks=True)
        yield target
    finally:
        shutil.rmtree(private, ignore_errors=True)


def with_code(original: str, code: str, amount: int) -> str:
    """codes.yaml with one extra code at the end of the list (the file ends inside `codes:`)."""
    return original.rstrip("\n") + (
        f"\n  - code: {code}\n"
        f"    added: 2026-11-26\n"
        f"    note: probe {code}\n"
        f"    rewards:\n"
        f"      - {{icon: Denny, amount: {amount}}}\n"
    )


def rotate_icon(path: Path) -> None:
    """Rotate a source icon by 90 degrees: new source bytes, so it is encoded again and every one
    of its hashed URLs changes."""
    before = path.read_bytes()
    with Image.open(path) as image:
        image.load()
        rotated = image.transpose(Image.Transpose.ROTATE_90)
    rotated.save(path, format="PNG")
    assert path.read_bytes() != before, f"rotating {path.name} did not change it"


def icon_urls(html: str, stem: str) -> set[str]:
    return {u for u in asset_urls(html) if u.startswith(f"/assets/icons/{stem}.")}


def release_problems(current: Path) -> list[str]:
    """What keeps `current` from being a complete release: its index.html and every local file
    that index.html names must exist as regular files inside it."""
    index = current / "index.html"
    if not index.is_file():
        return [f"{index} is missing"]
    html = index.read_text(encoding="utf-8")
    problems = [] if is_complete(html) else ["index.html does not end in </html>"]
    root = current.resolve()
    for url in local_urls(html):
        relative = url.lstrip("/") or "index.html"
        target = (root / relative).resolve()
        if root not in target.parents or not target.is_file():
            problems.append(f"index.html names {url}, which is not in {root.name}")
    return problems


def live(site: Path) -> str:
    return os.readlink(site / "dist" / "current")


def served(base: str, path: str = "/") -> httpx.Response:
    return httpx.get(base + path, timeout=5.0, trust_env=False)


def assert_probe_clean(probe: Probe, where: str) -> None:
    assert probe.clean, f"{where}: the probe saw errors: {json.dumps(probe.report(), indent=1)}"


def write_artifact(name: str, data: dict) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)  # gitignored
    path = ARTIFACTS / name
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


# ---- swap under load ---------------------------------------------------------------------------


def test_swap_under_load_no_errors_and_old_pages_keep_their_assets(served_site_dir: Path, nginx_server) -> None:  # noqa: F811
    site = served_site_dir
    started = time.monotonic()
    first = run_cli(site, "build", "--offline")
    assert first.returncode == 0 and "published r000001" in first.stdout, first.stderr
    base = nginx_server(site)

    page = served(base)
    assert page.status_code == 200
    first_html, first_build = page.text, build_id(page.text)
    first_assets = asset_urls(first_html)
    assert first_build and len(first_assets) > 10, first_html[:500]

    codes = site / "codes.yaml"
    original = codes.read_text(encoding="utf-8")
    icons = sorted((site / "icons").glob("*.png"))
    builds: list[dict] = []
    with Probe(base, threads=2, pause=PROBE_PAUSE) as probe:
        probe.wait_for_requests(50)
        for i in range(1, SWAPS + 1):
            code = f"SWAP{i:03d}"
            codes.write_text(with_code(original, code, 1000 + i), encoding="utf-8")
            icon = None
            if i % ICON_EVERY == 0:
                icon = icons[(i // ICON_EVERY - 1) % len(icons)]
                old_urls = icon_urls((site / "dist/current/index.html").read_text(), icon.stem)
                rotate_icon(icon)
            t0 = time.monotonic()
            result = run_cli(site, "build", "--offline")
            seconds = time.monotonic() - t0
            builds.append(
                {
                    "n": i,
                    "code": code,
                    "icon": icon.name if icon else None,
                    "returncode": result.returncode,
                    "seconds": round(seconds, 2),
                    "outcome": result.stdout.splitlines()[0] if result.stdout else "",
                }
            )
            assert result.returncode == 0, (i, result.stderr)
            assert "published" in result.stdout, (i, result.stdout)
            html = (site / "dist/current/index.html").read_text()
            assert code in html, i
            if icon is not None:
                assert "1 encoded, 10 reused from cache" in result.stdout, (i, icon.name, result.stdout)
                new_urls = icon_urls(html, icon.stem)
                assert new_urls and not (new_urls & old_urls), (icon.name, old_urls, new_urls)
        time.sleep(0.3)  # let the probe see the last release too
    report = probe.report()

    # Retention: the page from the first release, and every page the probe saw, still finds
    # every asset it names (all within 24 h, so every release is retained).
    with httpx.Client(base_url=base, timeout=5.0, trust_env=False) as client:
        first_missing = [u for u in first_assets if client.get(u).status_code != 200]
        seen_assets = {u for urls in probe.pages_seen.values() for u in urls}
        seen_missing = sorted(u for u in seen_assets if client.get(u).status_code != 200)
    final = served(base)

    figures = {
        "swaps": len(builds),
        "icon_changes": sum(1 for b in builds if b["icon"]),
        "build_seconds_median": sorted(b["seconds"] for b in builds)[len(builds) // 2],
        "build_seconds_max": max(b["seconds"] for b in builds),
        "probe": {k: v for k, v in report.items() if k != "examples"},
        "probe_examples": report["examples"],
        "first_release": {"build": first_build, "assets": len(first_assets), "missing_after_swaps": first_missing},
        "retention": {
            "distinct_pages": len(probe.pages_seen),
            "assets_checked": len(seen_assets),
            "missing": seen_missing,
        },
        "final_release": live(site),
        "test_seconds": round(time.monotonic() - started, 1),
        "builds": builds,
    }
    path = write_artifact("swap-under-load.json", figures)
    print(
        f"\nswap under load: {figures['swaps']} swaps ({figures['icon_changes']} with a new icon), "
        f"build median {figures['build_seconds_median']}s; probe {report['requests']} requests "
        f"({report['requests_per_second']}/s, {report['pages']} pages, {report['distinct_pages']} distinct builds seen), "
        f"errors {report['errors']} (non-200 {report['non_200']}, torn {report['torn']}, "
        f"no build meta {report['no_build_meta']}, missing assets {report['missing_assets']}, "
        f"transport {report['transport_errors']}); first-release assets {len(first_assets)} checked, "
        f"{len(first_missing)} missing; all seen pages: {len(seen_assets)} assets checked, "
        f"{len(seen_missing)} missing -> {path.relative_to(REPO)}"
    )

    assert len(builds) == SWAPS
    assert report["requests"] > 20 * SWAPS, report
    assert report["distinct_pages"] >= SWAPS // 2, report  # the probe really saw the swaps
    assert_probe_clean(probe, "swap under load")
    assert not first_missing, first_missing
    assert not seen_missing, seen_missing
    assert final.status_code == 200 and f"SWAP{SWAPS:03d}" in final.text
    assert live(site) == f"releases/r{SWAPS + 1:06d}"


# ---- kill -9 at every checkpoint ---------------------------------------------------------------


def test_kill_9_at_each_checkpoint_keeps_serving_and_converges(served_site_dir: Path, nginx_server) -> None:  # noqa: F811
    site = served_site_dir
    assert run_cli(site, "build", "--offline").returncode == 0
    base = nginx_server(site)
    dist = site / "dist"
    codes = site / "codes.yaml"
    original = codes.read_text(encoding="utf-8")
    outcomes = []
    with Probe(base, threads=2, pause=PROBE_PAUSE) as probe:
        probe.wait_for_requests(50)
        for n, point in enumerate(CHECKPOINTS, 1):
            code = f"KILL{n:02d}"
            codes.write_text(with_code(original, code, n), encoding="utf-8")
            before = live(site)
            t0 = time.monotonic()
            killed = run_cli(site, "build", "--offline", env={"BUILDER_CRASH_AT": point})
            assert killed.returncode == -9, (point, killed.returncode, killed.stdout, killed.stderr)
            assert release_problems(dist / "current") == [], point
            if point == "after_switch":
                assert live(site) != before, "killed after the switch: the new release is live"
                assert code in (dist / "current/index.html").read_text()
            else:
                assert live(site) == before, f"killed at {point}: current must not move"
            time.sleep(0.1)  # give the probe a round against the state the kill left
            assert_probe_clean(probe, f"after kill -9 at {point}")

            again = run_cli(site, "build", "--offline")
            assert again.returncode == 0, (point, again.stderr)
            if point == "after_switch":
                assert "published" in again.stdout or "nothing changed" in again.stdout, again.stdout
            else:
                assert "published" in again.stdout, (point, again.stdout)
            assert release_problems(dist / "current") == [], point
            assert code in (dist / "current/index.html").read_text(), point
            assert code in served(base).text, point
            assert not list(dist.glob(".staging-*")), (point, list(dist.glob(".staging-*")))
            assert not list(dist.glob(".current.*.tmp")), point
            outcomes.append(
                f"{point}: killed, then {again.stdout.splitlines()[0].removeprefix('pipeline: ')} "
                f"({time.monotonic() - t0:.1f}s for both)"
            )
        time.sleep(0.2)
    report = probe.report()
    print(
        f"\nkill -9 at {len(CHECKPOINTS)} checkpoints: probe {report['requests']} requests, "
        f"{report['distinct_pages']} distinct builds seen, errors {report['errors']}"
    )
    for line in outcomes:
        print(f"  {line}")
    assert_probe_clean(probe, "kill -9 at each checkpoint")
    assert report["requests"] > 100, report


# ---- two builds at once ------------------------------------------------------------------------


def test_two_builds_at_once_one_runs_the_other_exits_75_naming_its_pid(served_site_dir: Path, nginx_server) -> None:  # noqa: F811
    site = served_site_dir
    assert run_cli(site, "build", "--offline").returncode == 0
    base = nginx_server(site)
    codes = site / "codes.yaml"
    codes.write_text(with_code(codes.read_text(encoding="utf-8"), "TWOBUILDS", 2), encoding="utf-8")
    # The first build is slow (a cold encode cache, one encode process: seconds of encoding) and
    # the second starts once the lock file names the first, while the first is paused: it must
    # lose, every time, and name the first one's pid.
    shutil.rmtree(site / ".cache" / "encode")
    lock = site / ".cache" / "pipeline.lock"
    command = [sys.executable, "-m", "pipeline", "build", "--offline", "--site", str(site)]
    popen = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    with Probe(base, threads=2, pause=PROBE_PAUSE) as probe:
        first = subprocess.Popen([*command, "--jobs", "1"], **popen)
        second = None
        try:
            deadline = time.monotonic() + 20
            while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
                assert first.poll() is None, ("the first build ended before taking the lock", first.communicate())
                assert time.monotonic() < deadline, "the first build did not take the lock within 20 s"
                time.sleep(0.005)
            # The first holds the lock now. Pause it (SIGSTOP keeps the lock: the open file stays)
            # so that it cannot finish before the second one has tried, however slow the machine.
            os.kill(first.pid, signal.SIGSTOP)
            try:
                second = subprocess.Popen(command, **popen)
                out2, err2 = second.communicate(timeout=60)
                first_still_running = first.poll() is None
            finally:
                os.kill(first.pid, signal.SIGCONT)
            out1, err1 = first.communicate(timeout=120)
        finally:
            stop_process(*(process for process in (first, second) if process is not None))
    report = probe.report()
    print(
        f"\ntwo builds: first pid {first.pid} -> {first.returncode}; second pid {second.pid} -> "
        f"{second.returncode}: {err2.strip()}; probe {report['requests']} requests, errors {report['errors']}"
    )
    assert first_still_running, "the second build must have ended while the first held the lock"
    assert first.returncode == 0 and "published r000002" in out1, (out1, err1)
    assert "11 encoded, 0 reused from cache" in out1, out1
    assert second.returncode == 75, (second.returncode, out2, err2)
    assert f"another build is running (pid {first.pid})" in err2, err2
    assert out2 == "" and "Traceback" not in err2
    assert "TWOBUILDS" in served(base).text
    assert_probe_clean(probe, "two builds at once")


# ---- the probe itself --------------------------------------------------------------------------


def test_probe_reports_missing_assets_torn_pages_and_missing_build_ids(served_site_dir: Path, nginx_server) -> None:  # noqa: F811
    """The checks above are only as good as the probe: break a live release by hand and see it
    count every kind of error (both the gzip and the identity thread read the broken files)."""
    site = served_site_dir
    assert run_cli(site, "build", "--offline").returncode == 0
    base = nginx_server(site)
    current = site / "dist" / "current"
    html = (current / "index.html").read_text(encoding="utf-8")
    gone = asset_urls(html)[0]
    (current / gone.lstrip("/")).unlink()
    for name in ("index.html.gz", "codes.json.gz"):
        (current / name).unlink(missing_ok=True)
    cut = html.index('<meta name="build"')
    torn = html[:cut] + html[html.index(">", cut) + 1 :]  # no build id ...
    (current / "index.html").write_text(torn[: len(torn) * 3 // 4], encoding="utf-8")  # ... and cut short
    codes_json = (current / "codes.json").read_bytes()
    (current / "codes.json").write_bytes(codes_json[: len(codes_json) // 2])
    with Probe(base, threads=2) as probe:
        probe.wait_for_requests(200)
    report = probe.report()
    print(
        f"\nprobe self-check: {report['requests']} requests, missing {report['missing_assets']}, "
        f"torn {report['torn']}, no build meta {report['no_build_meta']}, non-200 {report['non_200']}"
    )
    assert report["missing_assets"] > 0 and any(gone in m for m in report["examples"]["missing_assets"]), report
    assert report["torn"] > 0 and report["no_build_meta"] > 0, report
    assert any(t.startswith("/codes.json") for t in report["examples"]["torn"]), report
    assert any(t.startswith("/:") for t in report["examples"]["torn"]), report
    assert report["transport_errors"] == 0 and not probe.clean
