"""Progress: a live line on a terminal during fetch/encode, nothing of it off a terminal."""

from __future__ import annotations

import os
import pty
import random
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from .conftest import REPO, copy_default_site

ICONS = 60


def site_with_many_icons(root: Path) -> Path:
    """The default site's templates and codes, plus 60 small distinct generated icons."""
    site = copy_default_site(root)
    rng = random.Random(7)
    lines = [(site / "icon_map.yaml").read_text()]
    for n in range(ICONS):
        image = Image.new("RGBA", (24, 24), (0, 0, 0, 0))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            box = sorted(rng.sample(range(24), 2)) + sorted(rng.sample(range(24), 2))
            draw.ellipse((box[0], box[2], box[1], box[3]), fill=tuple(rng.randrange(256) for _ in range(3)) + (255,))
        image.save(site / "icons" / f"extra-{n}.png")
        lines.append(f"Extra {n}: https://example.org/extra-{n}.png\n")
    (site / "icon_map.yaml").write_text("".join(lines))
    return site


def run_on_a_terminal(site: Path) -> tuple[int, str, str]:
    """The build with stderr on a pseudo-terminal (stdout a pipe): what a person at a shell sees."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "build", "--offline", "--jobs", "2", "--site", str(site)],
        stdout=subprocess.PIPE,
        stderr=terminal,
        cwd=REPO,
    )
    os.close(terminal)
    seen = bytearray()
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the build closed its end
            break
        if not chunk:
            break
        seen += chunk
    out = process.communicate(timeout=120)[0]
    os.close(controller)
    return process.returncode, out.decode(), seen.decode(errors="replace")


def test_a_terminal_gets_a_live_line_and_a_pipe_gets_the_summary_only(tmp_path: Path) -> None:
    code, out, terminal = run_on_a_terminal(site_with_many_icons(tmp_path / "tty"))
    assert code == 0, terminal
    updates = re.findall(r"\r\x1b\[Kencode (\d+)/(\d+) ", terminal)
    assert len(updates) >= 3, terminal
    assert {total for _, total in updates} == {str(ICONS + 11)}
    assert [int(done) for done, _ in updates] == sorted(int(done) for done, _ in updates)
    assert terminal.endswith("\r\x1b[K") or "pipeline: warning" in terminal  # the line is cleared before the summary
    assert "published r000001" in out and "71 encoded" in out
    piped = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "build",
            "--offline",
            "--jobs",
            "2",
            "--site",
            str(site_with_many_icons(tmp_path / "pipe")),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == "" and "\r" not in piped.stdout and "published r000001" in piped.stdout


def test_quiet_prints_errors_only(tmp_path: Path) -> None:
    site = copy_default_site(tmp_path / "site")
    quiet = subprocess.run(
        [sys.executable, "-m", "pipeline", "build", "--offline", "-q", "--site", str(site)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    (site / "icon_map.yaml").write_text("Broken: ftp://x.org/a.png\n")
    broken = subprocess.run(
        [sys.executable, "-m", "pipeline", "build", "--offline", "-q", "--site", str(site)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert broken.returncode == 78 and "icon_map.yaml:1" in broken.stderr and broken.stdout == ""
