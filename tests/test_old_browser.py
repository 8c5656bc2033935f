"""A real old browser on the built default site: Dillo 3.0 (Debian's dillo) under Xvfb.

Dillo knows neither WebP, AVIF, <picture>/<source> nor srcset, so it must fetch exactly the PNG
each <img src> names and draw it. The site is built once and served once by the real nginx with
deploy/nginx.conf (tests/nginx.py); Dillo runs once for the module, with a throwaway HOME (a fresh
~/.dillo whose dillorc starts on about:blank and whose domainrc refuses every other host) on an
Xvfb display that Xvfb picks itself (-displayfd). What Dillo asked for is read from nginx's access
log (Dillo's User-Agent only). Once every icon was requested, the screen is read from Xvfb's
framebuffer file (-fbdir writes it as XWD, which numpy reads), saved as test-artifacts/dillo.png,
and searched for the icons: multi-coloured areas of about the icon size, which text (drawn in one
colour anti-aliased against one background) and form controls never are. Both processes are
stopped by PID, in finally blocks, with bounded waits.

Dillo and Xvfb are installed by .ci/run; when either is missing these tests skip locally and
fail under CI.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import numpy as np
import pytest
from PIL import Image

from pipeline.gate import urls_in

from .nginx import require_nginx, served_site
from .tools import (
    ARTIFACTS,
    Hit,
    access_log,
    built_default_site,
    has_exited,
    img_srcs,
    nginx_prefix,
    require,
    stop_process,
)

pytestmark = pytest.mark.nginx

SCREEN = (1280, 4000)  # tall enough for the whole default page in Dillo (~2,500 px today)
XVFB_START_TIMEOUT = 10.0  # s until Xvfb reports its display
REQUESTS_TIMEOUT = 20.0  # s until every icon was requested
PAINT_TIMEOUT = 10.0  # s after that until every icon is on the screen
STABLE = 3.0  # s without change on a screen with icons that end that wait early
POLL = 0.2
SCREENSHOT = ARTIFACTS / "dillo.png"
MODERN_FORMATS = (".webp", ".avif")
MIN_ICON_COLOURS = 20  # distinct colours an icon area must hold (a blank or broken one has 1-3)

DILLORC = """\
# written by tests/test_old_browser.py: no start page, no home page, nothing but the test URL
geometry={width}x{height}+0+0
fullwindow_start=YES
start_page="about:blank"
home="about:blank"
load_images=YES
load_stylesheets=YES
parse_embedded_css=YES
load_background_images=NO
http_referer=none
no_proxy="localhost 127.0.0.1"
show_msg=NO
show_quit_dialog=NO
show_tooltip=NO
"""
DOMAINRC = "# written by tests/test_old_browser.py: no request to any other host\ndefault deny\n"


def require_old_browser() -> tuple[str, str]:
    dillo, xvfb = shutil.which("dillo"), shutil.which("Xvfb")
    require(dillo is not None, "dillo is not installed (apt-get install dillo)")
    require(xvfb is not None, "Xvfb is not installed (apt-get install xvfb)")
    return str(dillo), str(xvfb)


# ---- Xvfb --------------------------------------------------------------------------------------


@contextlib.contextmanager
def xvfb(binary: str, workdir: Path) -> Iterator[tuple[int, Path]]:
    """Xvfb on a display it picks itself; yields (display number, its framebuffer file)."""
    fbdir = workdir / "fb"
    fbdir.mkdir()
    log = workdir / "xvfb.log"
    read_end, write_end = os.pipe()
    try:
        with open(log, "wb") as stderr:
            process = subprocess.Popen(
                [
                    binary,
                    "-displayfd",
                    str(write_end),
                    "-screen",
                    "0",
                    f"{SCREEN[0]}x{SCREEN[1]}x24",
                    "-nolisten",
                    "tcp",
                    "-nocursor",
                    "-fbdir",
                    str(fbdir),
                ],
                pass_fds=(write_end,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
    finally:
        os.close(write_end)
    try:
        display = _read_display(read_end, process, log)
        socket_path = Path(f"/tmp/.X11-unix/X{display}")
        with socket.socket(socket.AF_UNIX) as probe:  # it is up: its socket takes a connection
            probe.settimeout(2)
            probe.connect(str(socket_path))
        framebuffer = fbdir / "Xvfb_screen0"
        assert framebuffer.is_file(), f"Xvfb wrote no framebuffer file in {fbdir}"
        yield display, framebuffer
    finally:
        os.close(read_end)
        stop_process(process)


def _read_display(fd: int, process: subprocess.Popen, log: Path) -> int:
    deadline = time.monotonic() + XVFB_START_TIMEOUT
    text = b""
    while not text.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or process.poll() is not None:
            raise AssertionError(
                f"Xvfb reported no display within {XVFB_START_TIMEOUT}s (exit {process.poll()}):\n"
                + log.read_text(errors="replace")[-2000:]
            )
        ready, _, _ = select.select([fd], [], [], min(left, POLL))
        if ready:
            chunk = os.read(fd, 64)
            if not chunk:
                raise AssertionError(
                    "Xvfb closed -displayfd without a display:\n" + log.read_text(errors="replace")[-2000:]
                )
            text += chunk
    return int(text.strip())


def read_xwd(path: Path) -> Image.Image:
    """The screen from Xvfb's -fbdir file: an XWD dump (big-endian header, then the pixels in the
    server's byte order), TrueColor at 32 bits per pixel."""
    data = path.read_bytes()
    fields = struct.unpack(">25I", data[:100])
    (
        header_size,
        version,
        _format,
        depth,
        width,
        height,
        _xoffset,
        byte_order,
        _unit,
        _bit_order,
        _pad,
        bits_per_pixel,
        bytes_per_line,
        _visual,
        red,
        green,
        blue,
        _bits_rgb,
        _entries,
        ncolours,
    ) = fields[:20]
    assert version == 7 and bits_per_pixel == 32 and (red, green, blue) == (0xFF0000, 0xFF00, 0xFF), fields
    start = header_size + 12 * ncolours
    pixels = data[start : start + bytes_per_line * height]
    return Image.frombuffer(
        "RGB", (width, height), pixels, "raw", "BGRX" if byte_order == 0 else "XRGB", bytes_per_line, 1
    ).copy()


# ---- Dillo -------------------------------------------------------------------------------------


@contextlib.contextmanager
def dillo(binary: str, display: int, url: str, workdir: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    home = workdir / "home"
    (home / ".dillo").mkdir(parents=True)
    (home / ".dillo" / "dillorc").write_text(DILLORC.format(width=SCREEN[0], height=SCREEN[1]), encoding="utf-8")
    (home / ".dillo" / "domainrc").write_text(DOMAINRC, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if not key.lower().endswith("_proxy")}
    env.update(
        HOME=str(home),
        DISPLAY=f":{display}",
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        no_proxy="127.0.0.1,localhost",
    )
    log = workdir / "dillo.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [binary, url],
            env=env,
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process, log
    finally:
        stop_process(process, group=True)  # and any dpi helper it forked into its group


# ---- finding the icons on the screen -----------------------------------------------------------

DILATE = 2  # px: joins the pieces of one icon, not two icons (Dillo puts 6+ px between)
CHROMA = 25.0  # distance from the black..background line that counts as "coloured"
SECOND_COLOUR = 5.0  # RMS spread across a second colour axis: text anti-aliasing has ~0.3


@dataclass(frozen=True)
class Area:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1
    colours: int

    def __str__(self) -> str:
        x0, y0, x1, y1 = self.box
        return f"{x1 - x0}x{y1 - y0}+{x0}+{y0} ({self.colours} colours)"


def icon_areas(image: Image.Image, icon_size: int) -> tuple[list[Area], list[Area]]:
    """(icon areas, other coloured areas) of a screenshot. A coloured area is a connected group of
    pixels off the line from black to the background colour (so not black or grey text on it),
    joined over DILATE px. It is an icon area when it is at most 1.5x the icon size each way and its
    colours spread along at least two independent directions, which anti-aliased text (one ink
    over one background) never does."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2].astype(np.int32)
    values, counts = np.unique(packed, return_counts=True)
    background = np.array([(values[counts.argmax()] >> shift) & 255 for shift in (16, 8, 0)], dtype=np.float32)
    along = rgb @ background / max(float(background @ background), 1.0)
    coloured = np.linalg.norm(rgb - along[..., None] * background, axis=-1) > CHROMA
    padded = np.pad(coloured, DILATE)
    grown = np.zeros_like(coloured)
    for dy in range(2 * DILATE + 1):
        for dx in range(2 * DILATE + 1):
            grown |= padded[dy : dy + coloured.shape[0], dx : dx + coloured.shape[1]]

    limit = int(icon_size * 1.5) + 2 * DILATE
    icons, others = [], []
    for x0, y0, x1, y1 in _components(grown):
        crop = rgb[y0:y1, x0:x1].reshape(-1, 3)
        area = Area((x0, y0, x1, y1), int(np.unique(packed[y0:y1, x0:x1]).size))
        inked = crop[(crop != background).any(axis=1)]
        spread = (
            np.linalg.svd(inked - inked.mean(axis=0), compute_uv=False) / np.sqrt(len(inked))
            if len(inked) > 2
            else [0, 0]
        )
        if x1 - x0 <= limit and y1 - y0 <= limit and spread[1] >= SECOND_COLOUR:
            icons.append(area)
        else:
            others.append(area)
    return icons, others


def _components(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes of the 4-connected components of `mask`, top to bottom (union-find over
    the horizontal runs of each row)."""
    parent: list[int] = []

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    runs: list[tuple[int, int, int]] = []  # (y, x0, x1)
    previous: list[tuple[int, int, int]] = []  # (x0, x1, run index) on the row above
    last_row = -2
    for y in np.flatnonzero(mask.any(axis=1)).tolist():
        if y != last_row + 1:
            previous = []
        last_row = y
        edges = np.diff(np.concatenate(([0], mask[y].astype(np.int8), [0])))
        current = []
        for x0, x1 in zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()):
            index = len(runs)
            runs.append((y, x0, x1))
            parent.append(index)
            current.append((x0, x1, index))
            for px0, px1, other in previous:
                if px0 < x1 and x0 < px1:
                    a, b = find(index), find(other)
                    if a != b:
                        parent[a] = b
        previous = current
    boxes: dict[int, list[int]] = {}
    for index, (y, x0, x1) in enumerate(runs):
        box = boxes.setdefault(find(index), [x0, y, x1, y + 1])
        box[0], box[1], box[2], box[3] = min(box[0], x0), min(box[1], y), max(box[2], x1), max(box[3], y + 1)
    return sorted((tuple(box) for box in boxes.values()), key=lambda b: (b[1], b[0]))


# ---- the page ----------------------------------------------------------------------------------


class _ImgSizes(HTMLParser):
    """Every <img>'s width/height (its URLs come from srcset_candidates / tools.img_srcs)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sizes: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.sizes += [int(values[key]) for key in ("width", "height") if (values.get(key) or "").isdigit()]


def srcset_candidates(html: str) -> list[str]:
    """Every srcset candidate URL of <img> and <source>, in document order (pipeline.gate.urls_in)."""
    return [url for tag, attribute, url in urls_in(html) if tag in ("img", "source") and attribute == "srcset"]


@dataclass
class DilloRun:
    html: str
    srcs: list[str | None]  # what each <img src> names, in page order
    candidates: set[str]  # every srcset URL of the page (img and source)
    icon_size: int
    hits: list[Hit] = field(default_factory=list)  # Dillo's requests, from nginx's access log
    areas: list[Area] = field(default_factory=list)
    others: list[Area] = field(default_factory=list)
    waited: float = 0.0
    log: str = ""
    screen: Image.Image | None = None

    def requested(self, path: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.path == path]

    def describe(self) -> str:
        lines = [f"Dillo's requests ({len(self.hits)}):"] + [f"  {h.status} {h.method} {h.path}" for h in self.hits]
        lines += [
            f"icon areas ({len(self.areas)}): " + ", ".join(map(str, self.areas)),
            f"other coloured areas ({len(self.others)}): " + ", ".join(map(str, self.others)),
        ]
        if self.log.strip():
            lines.append("dillo output:\n" + self.log[-1500:])
        return "\n".join(lines)


# ---- fixtures ----------------------------------------------------------------------------------


def visit_with_dillo(site: Path, root: Path | None = None) -> DilloRun:
    """Serve `site` (or the release at `root`) with nginx, let Dillo load / on a fresh Xvfb, and
    return what it asked for and what it drew. Every process is stopped before this returns."""
    dillo_binary, xvfb_binary = require_old_browser()
    require_nginx()
    html = ((root or site / "dist" / "current") / "index.html").read_text(encoding="utf-8")
    markup = _ImgSizes()
    markup.feed(html)
    result = DilloRun(
        html=html,
        srcs=img_srcs(html),
        icon_size=max(markup.sizes, default=64),
        candidates={urlsplit(urljoin("/", url)).path for url in srcset_candidates(html)},
    )
    wanted = {src for src in result.srcs if src}
    assert wanted, "the page names no <img src>"

    workdir = Path(tempfile.mkdtemp(prefix="test-old-browser-run-"))
    try:
        with served_site(site, root=root) as base:
            prefix = nginx_prefix(base)
            with (
                xvfb(xvfb_binary, workdir) as (display, framebuffer),
                dillo(dillo_binary, display, base + "/", workdir) as (process, log),
            ):
                started = time.monotonic()
                deadline = started + REQUESTS_TIMEOUT
                while True:
                    result.hits = [hit for hit in access_log(prefix) if hit.agent.startswith("Dillo")]
                    if wanted <= {hit.path for hit in result.hits}:
                        break
                    if has_exited(process.pid) or time.monotonic() > deadline:  # not reaped: see stop_process
                        result.log = log.read_text(errors="replace")
                        state = "exited" if has_exited(process.pid) else "was still running"
                        raise AssertionError(
                            f"Dillo {state} without requesting every icon within {REQUESTS_TIMEOUT}s; never requested: "
                            f"{sorted(wanted - {hit.path for hit in result.hits})}\n{result.describe()}"
                        )
                    time.sleep(POLL)
                # Every icon was asked for. Wait (bounded) until every <img> is drawn, or until
                # icons are drawn and the screen has stopped changing for STABLE s (a broken page never gets there).
                deadline = time.monotonic() + PAINT_TIMEOUT
                last, since = None, time.monotonic()
                while True:
                    screen = read_xwd(framebuffer)
                    result.areas, result.others = icon_areas(screen, result.icon_size)
                    now = time.monotonic()
                    if result.areas != last:
                        last, since = result.areas, now
                    settled = bool(result.areas) and now - since >= STABLE
                    if len(result.areas) >= len(result.srcs) or settled or now > deadline:
                        break
                    time.sleep(POLL)
                result.waited = time.monotonic() - started
                result.hits = [hit for hit in access_log(prefix) if hit.agent.startswith("Dillo")]
                result.log = log.read_text(errors="replace")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.screen = screen
    return result


@pytest.fixture(scope="module")
def built_site(request: pytest.FixtureRequest) -> Iterator[Path]:
    require_old_browser()  # before any build: nothing to build for when the tools are missing
    require_nginx()
    with built_default_site(request.getfixturevalue("warm_cache"), "test-old-browser-") as root:
        yield root


@pytest.fixture(scope="module")
def run(built_site: Path) -> DilloRun:
    """Dillo loads the default site's / from nginx once; its screen goes to test-artifacts/."""
    result = visit_with_dillo(built_site)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    result.screen.save(SCREENSHOT)
    return result


# ---- tests -------------------------------------------------------------------------------------


def test_dillo_requests_every_icon_as_the_png_its_img_src_names(
    run: DilloRun, record_figure: Callable[[str, Any], None]
) -> None:
    assert all(run.srcs), f"an <img> has no src: {run.srcs}"
    not_png = sorted({src for src in run.srcs if not src.endswith(".png")})
    assert not not_png, f"<img src> should name the PNG fallback: {not_png}"
    missing = sorted({src for src in run.srcs if not run.requested(src)})
    assert not missing, f"Dillo never requested {missing}\n{run.describe()}"
    bad = [f"{hit.status} {hit.path}" for src in set(run.srcs) for hit in run.requested(src) if hit.status != 200]
    assert not bad, f"icon requests not answered 200: {bad}\n{run.describe()}"
    pngs = {hit.path for hit in run.hits if hit.path.endswith(".png")}
    record_figure(
        "Dillo 3.0 (old browser)",
        f"{len(run.hits)} requests, {len(pngs)} distinct PNGs for {len(run.srcs)} <img> "
        f"({len(set(run.srcs))} distinct src), 0 WebP/AVIF expected; "
        f"{len(run.areas)} icon areas on screen after {run.waited:.1f}s",
    )


def test_dillo_requests_no_webp_avif_and_no_srcset_candidate(run: DilloRun) -> None:
    modern = [hit.path for hit in run.hits if hit.path.endswith(MODERN_FORMATS)]
    assert not modern, f"Dillo requested modern formats: {modern}\n{run.describe()}"
    # Dillo ignores srcset: a URL named only by a srcset (a 2x PNG, a <source>) is never fetched.
    srcset_only = run.candidates - set(run.srcs)
    fetched = sorted({hit.path for hit in run.hits} & srcset_only)
    assert not fetched, f"Dillo requested srcset candidates that no <img src> names: {fetched}\n{run.describe()}"


def test_every_request_dillo_makes_is_answered_200(run: DilloRun) -> None:
    assert run.requested("/"), run.describe()
    bad = [f"{hit.status} {hit.method} {hit.path}" for hit in run.hits if hit.status != 200]
    assert not bad, f"requests Dillo made that did not get 200: {bad}\n{run.describe()}"


def test_dillo_screenshot_shows_every_icon(run: DilloRun) -> None:
    assert SCREENSHOT.is_file()
    with Image.open(SCREENSHOT) as shot:
        colours = len(shot.convert("RGB").getcolors(maxcolors=1 << 24) or ())
    assert colours > MIN_ICON_COLOURS * len(set(run.srcs)), f"the screenshot has only {colours} colours"
    assert len(run.areas) == len(run.srcs), (
        f"{len(run.srcs)} <img> on the page but {len(run.areas)} icon-like areas on Dillo's screen "
        f"(see {SCREENSHOT})\n{run.describe()}"
    )
    dull = [str(area) for area in run.areas if area.colours < MIN_ICON_COLOURS]
    assert not dull, f"icon areas with fewer than {MIN_ICON_COLOURS} colours: {dull}\n{run.describe()}"


def test_the_checks_catch_a_missing_png(built_site: Path) -> None:
    """The checks above can fail: in a release copy without the first icon's PNG, Dillo gets a
    404 for it and the screen shows every <img> but the ones naming it."""
    parent = built_site / "doctored"
    parent.mkdir(exist_ok=True)
    parent.chmod(0o755)  # the nginx workers (nobody when root) must traverse it
    copy = parent / "missing-png"
    shutil.copytree((built_site / "dist" / "current").resolve(), copy)  # regular files, not links
    html = (copy / "index.html").read_text(encoding="utf-8")
    missing = img_srcs(html)[0]
    assert missing
    (copy / missing.lstrip("/")).unlink()

    broken = visit_with_dillo(built_site, root=copy)
    assert broken.requested(missing) and {hit.status for hit in broken.requested(missing)} == {404}, broken.describe()
    assert len(broken.areas) == len(broken.srcs) - broken.srcs.count(missing), broken.describe()
