"""Shared fixtures: a copy of the default site in a temp folder, and a way to run the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .sites import REPO, copy_default_site  # pytest-free (the benches use it); the tests import both from here


@pytest.fixture(scope="session")
def warm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The encode cache after one offline build of the default site, built once per session."""
    site = copy_default_site(tmp_path_factory.mktemp("warm") / "site")
    result = run_cli(site, "build", "--offline")
    assert result.returncode == 0, result.stderr
    return site / ".cache"


@pytest.fixture
def site(tmp_path: Path, warm_cache: Path) -> Path:
    """A fresh copy of the default site whose encode cache is already warm (no dist/)."""
    root = copy_default_site(tmp_path / "site")
    shutil.copytree(warm_cache, root / ".cache")
    return root


@pytest.fixture
def cold_site(tmp_path: Path) -> Path:
    """A fresh copy of the default site with an empty encode cache."""
    return copy_default_site(tmp_path / "cold-site")


@contextmanager
def local_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A ThreadingHTTPServer on 127.0.0.1 (port chosen by the kernel) for the block; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def run_cli(
    site: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline ARGS --site SITE` in a subprocess, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args, "--site", str(site)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


# ---- figures in the terminal summary ----------------------------------------------------------
# A test records a figure with the `record_figure(label, value)` fixture; it is stored in the test
# report's user_properties (so it also reaches JUnit XML and survives pytest-xdist) and printed at
# the end of the run, also under -q.

FIGURE_PREFIX = "figure: "


@pytest.fixture
def record_figure(request: pytest.FixtureRequest):
    def record(label: str, value: object) -> None:
        request.node.user_properties.append((FIGURE_PREFIX + label, value))

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    figures: dict[tuple[str, str], object] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            for name, value in getattr(report, "user_properties", ()):
                if isinstance(name, str) and name.startswith(FIGURE_PREFIX):
                    figures[(report.nodeid, name[len(FIGURE_PREFIX) :])] = value
    if figures:
        terminalreporter.write_sep("-", "recorded figures")
        for (nodeid, label), value in figures.items():
            terminalreporter.write_line(f"{label}: {value}  [{nodeid.split('::')[-1]}]")
