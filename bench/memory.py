"""Memory of the refresh daemon (idle and peak RSS) and of one build (peak RSS).

    python bench/memory.py [--site DIR]

The daemon is `pipeline refresh --offline` on a temp copy of the site; its RSS is read from
/proc after its first run, while it waits for the next tick. A build's peak is the child's
ru_maxrss (the largest of the build process and its encode workers, each measured alone).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITE_FILES = ("icon_map.yaml", "site.toml", "codes.yaml", "icons", "templates")


def copy_site(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for name in SITE_FILES:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name)
        elif (source / name).exists():
            shutil.copy2(source / name, target / name)
    return target


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def daemon_rss(site: Path) -> dict[str, float]:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "refresh", "--offline", "--interval", "1h", "--site", str(site)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()  # the banner
        process.stdout.readline()  # the first run's log line: the run is over
        samples = []
        for _ in range(5):
            time.sleep(0.2)
            samples.append(status_kb(process.pid, "VmRSS"))
        return {"idle_rss_mb": statistics.median(samples) / 1024, "peak_rss_mb": status_kb(process.pid, "VmHWM") / 1024}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def build_peak(site: Path, *args: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(
        [sys.executable, "-m", "pipeline", "build", "--offline", "--site", str(site), *args],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(before, after) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=REPO, help="a site folder to copy (default: the repo's)")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "memory.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        site = copy_site(args.site, Path(temp) / "site")
        figures = daemon_rss(site)  # its first run is a cold build
        shutil.rmtree(site / ".cache" / "encode")
        figures["cold_build_peak_rss_mb"] = build_peak(site, "--jobs", "1")
    for name, value in figures.items():
        print(f"{name:24s} {value:7.1f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
