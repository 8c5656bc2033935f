"""The built default site, served by the real nginx (tests/nginx.py + deploy/nginx.conf), in
headless Chromium driven by Playwright (sync API).

Every page load goes through one function, `visit()`, which returns what it saw and a list of
`Problem`s (kind, subject, detail); the tests assert that list is empty for the real release and
that it names exactly the injected fault for a doctored copy of it. Chromium is Debian's
(/usr/bin/chromium, never downloaded); one browser and one nginx serve the whole module, and every
page gets its own context (fresh cache, closed in a finally). Artifacts (a full-page screenshot,
page-weight.json) go to test-artifacts/ at the repo root; the weights are also printed in the
terminal summary.

Visits:
  modern    as loaded: every icon must show its best format (AVIF where the <picture> has an AVIF
            <source>, else WebP), with no failed request, no console error, no layout shift, and
            every URL in ICON_MAP answering 200 with its Content-Type.
  old       a browser with neither WebP, AVIF nor <picture>: the document is fulfilled without its
            <source> elements and every .webp/.avif request is aborted; every icon must show its
            PNG at the same place and size as in the modern run.
  held      modern, but every image response is held back until the page has been laid out and
            scrolled through: the icons' boxes before any image arrived are recorded, then the
            images are let through, and the same checks as `modern` apply (layout shift included).
            (Aborting the images instead would not do: Chromium draws a broken image with alt
            text as an inline box the size of that text, whatever the CSS says.)
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from .conftest import REPO, copy_default_site, run_cli
from .nginx import nginx_server, require_nginx, served_site  # noqa: F401 (nginx_server is a fixture)

pytestmark = [pytest.mark.browser, pytest.mark.nginx]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
ARTIFACTS = REPO / "test-artifacts"
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 10_000  # every Playwright wait (navigation, wait_for_function, screenshot)
LAUNCH_TIMEOUT_MS = 30_000
HTTP_TIMEOUT = 5.0  # httpx, per request
WEIGHT_BUDGET = 64_000  # bytes on the wire for the whole page; it is ~20 kB today
MEDIA_TYPES = {
    ".avif": "image/avif",
    ".webp": "image/webp",
    ".png": "image/png",
    ".css": "text/css",
    ".html": "text/html",
    "/": "text/html",
}
SOURCE_TAG = re.compile(r"<source\b[^>]*>", re.IGNORECASE)
# Chromium asks for the site icon by itself: the <link rel=icon> PNG the pages name, or
# /favicon.ico. It is not part of what the page draws, so it is kept out of the page weight and
# the image checks; anything odd about it is reported as a note (and in the terminal summary).
FAVICON = "/favicon.ico"


def is_site_icon(path: str) -> bool:
    return path == FAVICON or path.startswith(("/assets/favicon.", "/assets/apple-touch-icon."))


# ---- finding Chromium ------------------------------------------------------------------------


def chromium_available() -> tuple[bool, str]:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False, "the playwright Python package is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return False, f"{CHROMIUM} is missing (apt-get install chromium)"
    return True, ""


def require_chromium() -> None:
    """Skip when Chromium or Playwright is missing, except under CI (CI set), where it fails."""
    from .tools import require  # here: only this function's body is this change's to touch

    require(*chromium_available())


@contextlib.contextmanager
def launched_chromium() -> Iterator[Any]:
    """Debian's Chromium under Playwright for the block (skipped, or failed under CI, if missing).
    launch() gives it a fresh temporary profile (user-data-dir) and removes it on close."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=LAUNCH_TIMEOUT_MS
        )
        try:
            yield chromium
        finally:
            chromium.close()


# ---- what a visit returns --------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Problem:
    kind: str  # http, network, console, script, image, markup, layout, icon_map, old_browser
    subject: str  # the URL path at fault (or "" when there is none)
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.subject}: {self.detail}"


@dataclass
class Visit:
    mode: str
    javascript: bool
    dpr: float = 1.0  # the emulated device scale factor
    base: str = ""
    problems: list[Problem] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)  # one per <img>, in page order
    resources: list[dict[str, Any]] = field(default_factory=list)  # navigation + resource timing
    requested: list[str] = field(default_factory=list)  # every request path, in order
    accept_encoding: str = ""
    layout_shift: float | None = None  # None: not measurable (no JS)
    shifted_near: list[str] = field(default_factory=list)  # images next to what moved
    boxes_before: list[list[float]] | None = None  # held: boxes before any image
    loaded_before: int | None = None  # held: images loaded by then
    notes: list[str] = field(default_factory=list)

    def problem(self, kind: str, subject: str, detail: str) -> None:
        self.problems.append(Problem(kind, subject, detail))

    def report(self) -> str:
        return "\n".join(map(str, self.problems)) or "no problems"


def path_of(url: str) -> str:
    return urlsplit(url).path if url else ""


def media_type_for(path: str) -> str | None:
    if path.endswith("/"):
        return MEDIA_TYPES["/"]
    return MEDIA_TYPES.get(Path(path).suffix)


# ---- in-page scripts -------------------------------------------------------------------------

# Sums layout-shift entries (buffered, so shifts before the observer count too) and notes, for
# each element that moved, the image it sits next to (the first <img> in its parent), so that a
# shift can be blamed on an icon.
LAYOUT_SHIFT_OBSERVER = """
window.__layoutShift = 0;
window.__shiftedNear = [];
try {
  new PerformanceObserver(function (list) {
    for (const entry of list.getEntries()) {
      if (entry.hadRecentInput) continue;
      window.__layoutShift += entry.value;
      for (const source of entry.sources || []) {
        const node = source.node && (source.node.nodeType === 1 ? source.node : source.node.parentElement);
        if (!node) continue;
        const img = node.localName === "img" ? node : node.parentElement && node.parentElement.querySelector("img");
        window.__shiftedNear.push(img ? img.currentSrc || img.src : "");
      }
    }
  }).observe({type: "layout-shift", buffered: true});
} catch (e) { window.__layoutShift = -1; }
"""

# Two animation frames, or 200 ms if frames do not come. Only with JavaScript on: with it off,
# timers and frame callbacks in the page never run, so a promise waiting on them never settles.
NEXT_FRAMES = "() => new Promise(r => { requestAnimationFrame(() => requestAnimationFrame(r)); setTimeout(r, 200); })"

# Polled by wait_for_function: true once every image has settled (loaded or failed). Each poll
# also scrolls the first unsettled one into view, so a lazy icon the scroll pass stepped over
# still gets requested rather than waiting out the timeout.
ALL_IMAGES_SETTLED = """() => {
  const pending = [...document.images].filter(img => !img.complete);
  if (pending.length) pending[0].scrollIntoView({block: "center"});
  return pending.length === 0;
}"""
SCROLL_STEP_PAUSE_MS = 40

DESCRIBE_IMAGES = """() => [...document.images].map((img, index) => {
  const box = img.getBoundingClientRect();
  const parent = img.parentElement;
  return {
    index, alt: img.alt, src: img.getAttribute("src"), srcset: img.getAttribute("srcset"), currentSrc: img.currentSrc,
    complete: img.complete, naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
    width: img.getAttribute("width"), height: img.getAttribute("height"),
    box: [box.x + scrollX, box.y + scrollY, box.width, box.height],
    inPicture: parent !== null && parent.localName === "picture",
    sources: parent && parent.localName === "picture"
      ? [...parent.querySelectorAll("source")].map(s => ({type: s.type, srcset: s.getAttribute("srcset")}))
      : [],
  };
})"""

TIMING_ENTRIES = """() => [...performance.getEntriesByType("navigation"), ...performance.getEntriesByType("resource")]
  .map(e => ({url: e.name, type: e.entryType === "navigation" ? "document" : e.initiatorType,
              transferSize: e.transferSize, encodedBodySize: e.encodedBodySize, decodedBodySize: e.decodedBodySize}))"""


# ---- the check -------------------------------------------------------------------------------


def strip_sources(html: str) -> str:
    """The page as a browser without <picture> support uses it: no <source> elements."""
    return SOURCE_TAG.sub("", html)


def candidates(srcset: str) -> list[tuple[str, float]]:
    """ "a 1x, b 1.6x" -> [("a", 1.0), ("b", 1.6)] (density descriptors only: that is what we write)."""
    out = []
    for part in filter(None, (p.strip() for p in srcset.split(","))):
        url, _, descriptor = part.partition(" ")
        out.append((url, float(descriptor.strip().rstrip("x") or 1)))
    return out


def pick(options: list[tuple[str, float]], dpr: float) -> tuple[str, float]:
    """The candidate Chromium takes for a screen of `dpr` (HTMLSrcsetParser's PickCandidate): the
    first whose density reaches the screen's, else the densest; the one below it instead when the
    screen's density is under the geometric mean of the two."""
    ordered = sorted(options, key=lambda c: c[1])
    index = next((i for i, c in enumerate(ordered) if c[1] >= dpr), len(ordered) - 1)
    if index > 0 and (ordered[index - 1][1] * ordered[index][1]) ** 0.5 > dpr:
        index -= 1
    return ordered[index]


def img_candidates(image: dict[str, Any]) -> list[tuple[str, float]]:
    """The <img>'s own choice: src as 1x, plus its srcset."""
    extra = candidates(image.get("srcset") or "")
    return ([] if any(d == 1.0 for _u, d in extra) else [(image["src"], 1.0)]) + extra


def best_source(image: dict[str, Any], dpr: float = 1.0) -> str:
    """The URL a modern browser should show: from the AVIF <source>, else the WebP one, else the
    <img>, the density that suits the screen."""
    by_type = {source["type"]: source["srcset"] for source in image["sources"]}
    srcset = by_type.get("image/avif") or by_type.get("image/webp")
    return pick(candidates(srcset) if srcset else img_candidates(image), dpr)[0]


def expected_density(image: dict[str, Any], dpr: float, old: bool) -> float:
    by_type = {source["type"]: source["srcset"] for source in image["sources"]}
    srcset = None if old else (by_type.get("image/avif") or by_type.get("image/webp"))
    return pick(candidates(srcset) if srcset else img_candidates(image), dpr)[1]


def visit(
    browser: Any,
    base: str,
    *,
    mode: str = "modern",
    javascript: bool = True,
    check_icon_map: bool = True,
    screenshot: Path | None = None,
    dpr: float = 1.0,
) -> Visit:
    """Load `base`/ in a fresh context as `mode` ("modern", "old" or "held") on a screen of
    device scale factor `dpr`, scroll the whole page so every lazy icon loads, and return what
    was seen plus every Problem found."""
    result = Visit(mode, javascript, dpr, base)
    held: list[Any] = []
    releasing = False

    def hold_images(route: Any) -> None:
        if route.request.resource_type == "image" and not releasing:
            held.append(route)
        else:
            route.continue_()

    context = browser.new_context(
        viewport=VIEWPORT, device_scale_factor=dpr, java_script_enabled=javascript, service_workers="block"
    )
    try:
        context.set_default_timeout(TIMEOUT_MS)
        context.set_default_navigation_timeout(TIMEOUT_MS)
        context.add_init_script(LAYOUT_SHIFT_OBSERVER)
        page = context.new_page()
        _listen(page, result)
        if mode == "old":
            page.route("**/*", _old_browser_route(result))
        elif mode == "held":
            page.route("**/*", hold_images)
        elif mode != "modern":
            raise ValueError(mode)

        response = page.goto(
            base + "/", wait_until="domcontentloaded" if mode == "held" else "load", timeout=TIMEOUT_MS
        )
        if mode == "held":
            scroll_through(page)  # every lazy icon is requested now, and held
            before = page.evaluate(DESCRIBE_IMAGES)
            result.boxes_before = [image["box"] for image in before]
            result.loaded_before = sum(1 for image in before if image["naturalWidth"] > 0)
            releasing = True
            for route in held:
                route.continue_()
            page.wait_for_load_state("load", timeout=TIMEOUT_MS)
        if response is None or response.status != 200:
            result.problem("http", "/", f"the page answered {response.status if response else 'nothing'}")
        result.accept_encoding = response.request.all_headers().get("accept-encoding", "") if response else ""
        scroll_through(page)
        try:
            page.wait_for_function(ALL_IMAGES_SETTLED, timeout=TIMEOUT_MS, polling=50)
        except Exception as error:  # noqa: BLE001 - a timeout here is a finding, not a crash
            result.problem("image", "", f"images still loading after {TIMEOUT_MS} ms: {type(error).__name__}")
        page.evaluate("() => scrollTo(0, 0)")
        if javascript:
            page.evaluate(NEXT_FRAMES)  # let the layout-shift observer deliver its entries

        result.images = page.evaluate(DESCRIBE_IMAGES)
        result.resources = [{**entry, "path": path_of(entry["url"])} for entry in page.evaluate(TIMING_ENTRIES)]
        shift = page.evaluate("() => window.__layoutShift === undefined ? null : window.__layoutShift")
        result.layout_shift = None if shift is None or shift < 0 else shift
        result.shifted_near = sorted({path_of(url) for url in page.evaluate("() => window.__shiftedNear || []")})
        icon_map = page.evaluate("() => typeof ICON_MAP === 'undefined' ? null : ICON_MAP") if javascript else None
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True, timeout=TIMEOUT_MS)
    finally:
        context.close()

    _check_images(result, icon_map)
    if javascript and mode in ("modern", "held"):
        if result.layout_shift is None:
            result.problem("layout", "", "layout-shift entries could not be observed")
        elif result.layout_shift > 0:
            result.problem(
                "layout",
                " ".join(p for p in result.shifted_near if p),
                f"cumulative layout shift {result.layout_shift:.4f}, expected 0",
            )
    if check_icon_map and javascript and mode == "modern":
        _check_icon_map(result, base, icon_map)
    result.problems.sort()
    return result


def scroll_through(page: Any) -> None:
    """Scroll from top to bottom a step at a time (so every loading="lazy" icon comes into view),
    then back to the top. Synchronous scrollTo calls and Playwright-side pauses only, so it works
    with JavaScript off too."""
    height = page.evaluate("() => document.documentElement.scrollHeight")
    step = max(200, VIEWPORT["height"] * 3 // 4)
    for y in [*range(0, height, step), height]:
        page.evaluate("y => scrollTo(0, y)", y)
        page.wait_for_timeout(SCROLL_STEP_PAUSE_MS)
    page.evaluate("() => scrollTo(0, 0)")


def _listen(page: Any, result: Visit) -> None:
    def on_response(response: Any) -> None:
        path = path_of(response.url)
        if response.status >= 400:
            if is_site_icon(path):
                result.notes.append(f"{path} answered {response.status}")
            else:
                result.problem("http", path, f"answered {response.status}")
            return
        expected = "text/html" if response.request.resource_type == "document" else media_type_for(path)
        actual = (response.headers.get("content-type") or "").split(";")[0].strip()
        if expected and actual != expected:
            result.problem("http", path, f"Content-Type {actual!r}, expected {expected!r}")

    def on_request_failed(request: Any) -> None:
        path = path_of(request.url)
        if result.mode == "old" and path.endswith((".webp", ".avif")):
            result.problem("old_browser", path, "a modern format was requested")
        else:
            result.problem("network", path, f"request failed: {request.failure}")

    def on_console(message: Any) -> None:
        if message.type != "error":
            return
        path = path_of((message.location or {}).get("url", ""))
        if is_site_icon(path):
            result.notes.append(f"{path}: {message.text}")
        else:
            result.problem("console", path, message.text)

    page.on("request", lambda request: result.requested.append(path_of(request.url)))
    page.on("response", on_response)
    page.on("requestfailed", on_request_failed)
    page.on("console", on_console)
    page.on("pageerror", lambda error: result.problem("script", "", str(error)))


def _old_browser_route(result: Visit) -> Callable[[Any], None]:
    def handle(route: Any) -> None:
        request = route.request
        if request.resource_type == "document":
            upstream = route.fetch(timeout=TIMEOUT_MS)
            headers = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
            }
            route.fulfill(status=upstream.status, headers=headers, body=strip_sources(upstream.text()))
        elif path_of(request.url).endswith((".webp", ".avif")):
            route.abort()
        else:
            route.continue_()

    return handle


def _check_images(result: Visit, icon_map: dict[str, Any] | None) -> None:
    by_png = {entry.get("png"): (name, entry) for name, entry in (icon_map or {}).items()}
    if not result.images:
        result.problem("markup", "/", "the page has no <img>")
    for image in result.images:
        label = f"img #{image['index']} ({image['alt']!r})"
        shown = path_of(image["currentSrc"])
        if result.mode == "old":
            expected = pick(img_candidates(image), result.dpr)[0]
            if image["sources"]:
                result.problem(
                    "old_browser", image["sources"][0]["srcset"], f"{label}: <source> left in the old-browser page"
                )
        else:
            expected = best_source(image, result.dpr)
            if not image["inPicture"]:
                result.problem("markup", image["src"] or "", f"{label} is not inside a <picture>")
            elif not any(s["type"] == "image/webp" for s in image["sources"]):
                result.problem("markup", image["src"] or "", f"{label}: its <picture> has no WebP <source>")
        if not (image["complete"] and image["naturalWidth"] > 0):
            result.problem("image", shown or expected or "", f"{label} did not load (currentSrc {shown or 'empty'!r})")
        elif shown != expected:
            result.problem("image", shown, f"{label} shows {shown}, expected {expected}")
        if result.mode == "old" and not shown.endswith(".png"):
            result.problem("old_browser", shown, f"{label} does not show a PNG")
        width, height = image["width"], image["height"]
        if not (width and height and width.isdigit() and height.isdigit()):
            result.problem(
                "markup", image["src"] or "", f"{label} lacks numeric width/height attributes ({width!r}, {height!r})"
            )
        elif image["naturalWidth"] > 0:
            # naturalWidth is density-corrected (a 64 px file picked as 1.6x reports 40): it must be
            # the box; the file itself must have the pixels of the box at that density.
            density = expected_density(image, result.dpr, result.mode == "old")
            wanted = (round(int(width) * density), round(int(height) * density))
            pixels = image_pixels(result.base, shown)
            if (image["naturalWidth"], image["naturalHeight"]) != (int(width), int(height)) or pixels != wanted:
                result.problem(
                    "image",
                    shown,
                    f"{label} is a {pixels[0]}x{pixels[1]} file shown at "
                    f"{image['naturalWidth']}x{image['naturalHeight']}, but {width}x{height} "
                    f"at {density:g}x wants a {wanted[0]}x{wanted[1]} file",
                )
        if icon_map is not None and result.mode != "old":
            _check_against_icon_map(result, image, label, by_png)
    if icon_map is not None and result.mode != "old":
        drawn = {image["src"] for image in result.images}
        for name, entry in icon_map.items():
            if entry.get("png") not in drawn:
                result.problem("markup", entry.get("png") or "", f"ICON_MAP[{name!r}] is drawn nowhere on the page")


@functools.lru_cache(maxsize=512)
def image_pixels(base: str, path: str) -> tuple[int, int]:
    """The pixel size of the file at `path`, fetched again (hashed names: the same bytes)."""
    reply = httpx.get(base + path, timeout=HTTP_TIMEOUT)
    with Image.open(io.BytesIO(reply.content)) as decoded:
        return decoded.size


def _check_against_icon_map(
    result: Visit, image: dict[str, Any], label: str, by_png: dict[str | None, tuple[str, dict[str, Any]]]
) -> None:
    """The <picture> offers exactly the files ICON_MAP lists for that icon, at its size."""
    if image["src"] not in by_png:
        result.problem("markup", image["src"] or "", f"{label}: its PNG is in no ICON_MAP entry")
        return
    name, entry = by_png[image["src"]]
    offered = {source["type"]: source["srcset"] for source in image["sources"]}
    listed = entry.get("srcset") or {}
    for fmt in ("avif", "webp"):
        if offered.get(f"image/{fmt}") != listed.get(fmt):
            strays = [
                url
                for url, _d in candidates(offered.get(f"image/{fmt}") or "")
                if url not in {u for u, _d in candidates(listed.get(fmt) or "")}
            ]
            result.problem(
                "markup",
                (strays or [listed.get(fmt) or ""])[0],
                f"{label}: {fmt} <source> is {offered.get(f'image/{fmt}')!r}, ICON_MAP[{name!r}] says {listed.get(fmt)!r}",
            )
    if (image["width"], image["height"]) != (str(entry.get("width")), str(entry.get("height"))):
        result.problem(
            "markup",
            image["src"],
            f"{label}: {image['width']}x{image['height']} but ICON_MAP[{name!r}] says {entry.get('width')}x{entry.get('height')}",
        )


def _check_icon_map(result: Visit, base: str, icon_map: dict[str, Any] | None) -> None:
    """ICON_MAP exists; every URL in every entry answers 200, with the right Content-Type, and
    decodes to the entry's width x height."""
    if not icon_map:
        result.problem("icon_map", "", "the page defines no ICON_MAP (or an empty one)")
        return
    with httpx.Client(base_url=base, timeout=HTTP_TIMEOUT, follow_redirects=False) as client:
        for name, entry in icon_map.items():
            for key in ("png", "webp", "width", "height", "alt", "srcset"):
                if key not in entry:
                    result.problem("icon_map", "", f"ICON_MAP[{name!r}] has no {key!r}")
            files = [
                (fmt, url, density)
                for fmt in ("avif", "webp", "png")
                for url, density in candidates((entry.get("srcset") or {}).get(fmt) or "")
            ]
            if entry.get("png") and (("png", entry["png"], 1.0) not in files):
                result.problem("icon_map", entry["png"], f"ICON_MAP[{name!r}].png is not its srcset's 1x")
            for fmt, url, density in files:
                reply = client.get(url)
                media = reply.headers.get("content-type", "").split(";")[0].strip()
                if reply.status_code != 200:
                    result.problem("icon_map", url, f"ICON_MAP[{name!r}].{fmt} answered {reply.status_code}")
                    continue
                if media != f"image/{fmt}":
                    result.problem("icon_map", url, f"ICON_MAP[{name!r}].{fmt} has Content-Type {media!r}")
                try:
                    with Image.open(io.BytesIO(reply.content)) as decoded:
                        size = decoded.size
                except Exception as error:  # noqa: BLE001 - any decode failure is the finding
                    result.problem("icon_map", url, f"ICON_MAP[{name!r}].{fmt} does not decode: {error}")
                    continue
                box = (entry.get("width") or 0, entry.get("height") or 0)
                if size != (round(box[0] * density), round(box[1] * density)):
                    result.problem(
                        "icon_map",
                        url,
                        f"ICON_MAP[{name!r}].{fmt} at {density:g}x is {size[0]}x{size[1]}, "
                        f"the entry's box is {box[0]}x{box[1]}",
                    )


# ---- page weight -----------------------------------------------------------------------------


def kind_of(entry: dict[str, Any]) -> str:
    if entry["type"] == "document":
        return "html"
    suffix = Path(entry["path"]).suffix.lstrip(".")
    return suffix or entry["type"]


def weight(result: Visit, only: set[str] | None = None) -> dict[str, Any]:
    """Requests and bytes, from Resource Timing. `body` is encodedBodySize (the bytes of the body as
    sent: gzip for HTML and CSS); `transfer` is transferSize, which Chromium reports as the body
    plus a flat 300 bytes for the headers."""
    entries = [
        e
        for e in result.resources
        if not is_site_icon(e["path"]) and (only is None or e["path"] in only or e["type"] == "document")
    ]
    by_kind: dict[str, dict[str, int]] = {}
    for entry in entries:
        slot = by_kind.setdefault(kind_of(entry), {"requests": 0, "transfer": 0, "body": 0, "decoded": 0})
        slot["requests"] += 1
        slot["transfer"] += entry["transferSize"]
        slot["body"] += entry["encodedBodySize"]
        slot["decoded"] += entry["decodedBodySize"]
    return {
        "requests": len(entries),
        "transfer_bytes": sum(e["transferSize"] for e in entries),
        "body_bytes": sum(e["encodedBodySize"] for e in entries),
        "decoded_bytes": sum(e["decodedBodySize"] for e in entries),
        "by_kind": dict(sorted(by_kind.items())),
    }


def above_the_fold_paths(result: Visit) -> set[str]:
    """The CSS and the icons whose box starts inside the first 1280x800 viewport. (Chromium
    fetches lazy images well before they scroll into view, so a real first view at this size
    usually fetches every icon anyway: that is the full-page figure.)"""
    icons = {path_of(i["currentSrc"]) for i in result.images if i["box"][1] < VIEWPORT["height"]}
    return icons | {e["path"] for e in result.resources if e["type"] == "link" or e["path"].endswith(".css")}


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_site(warm_cache: Path) -> Iterator[Path]:
    """The default site, built once for this module (offline, warm encode cache).

    It lives in its own folder directly under the system temp dir, not under pytest's
    /tmp/pytest-of-USER: every pytest session that starts on the machine chmods that folder back
    to 0700, which would cut the unprivileged nginx workers off mid-run (403 on every request)
    whenever another session starts while this module runs."""
    require_nginx()
    require_chromium()
    holder = Path(tempfile.mkdtemp(prefix="test-browser-"))
    try:
        root = copy_default_site(holder / "site")
        shutil.copytree(warm_cache, root / ".cache")
        result = run_cli(root, "build", "--offline")
        assert result.returncode == 0, result.stderr
        yield root
    finally:
        shutil.rmtree(holder, ignore_errors=True)


@pytest.fixture(scope="module")
def server(built_site: Path) -> Iterator[str]:
    with served_site(built_site) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched_chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def modern(browser: Any, server: str) -> Visit:
    return visit(browser, server, mode="modern", screenshot=ARTIFACTS / "default-site.png")


@pytest.fixture(scope="module")
def old(browser: Any, server: str) -> Visit:
    return visit(browser, server, mode="old")


def served_html(site: Path) -> str:
    return (site / "dist" / "current" / "index.html").read_text(encoding="utf-8")


def doctored_release(site: Path, name: str) -> Path:
    """A private copy of the live release (regular files, not links into it), to break."""
    parent = site / "doctored"
    parent.mkdir(exist_ok=True)
    parent.chmod(0o755)  # the nginx workers (nobody when root) must traverse it
    copy = parent / name
    shutil.copytree((site / "dist" / "current").resolve(), copy)
    return copy


def rewrite_page(release: Path, html: str) -> None:
    """Replace index.html and its precompressed twins (gzip_static and brotli_static would serve
    the old .gz and .br)."""
    (release / "index.html").write_text(html, encoding="utf-8")
    (release / "index.html.gz").write_bytes(gzip.compress(html.encode("utf-8"), 9, mtime=0))
    (release / "index.html.br").unlink(missing_ok=True)


# ---- tests -----------------------------------------------------------------------------------


def test_modern_browser_shows_every_icon_in_its_best_format(modern: Visit, built_site: Path) -> None:
    assert modern.problems == [], modern.report()
    pictures = served_html(built_site).count("<picture>")
    assert len(modern.images) == pictures > 0
    shown = [path_of(image["currentSrc"]) for image in modern.images]
    assert all(image["complete"] and image["naturalWidth"] > 0 for image in modern.images)
    assert [s.rsplit(".", 1)[-1] for s in shown] == [best_source(i).rsplit(".", 1)[-1] for i in modern.images]
    assert all(s.endswith((".avif", ".webp")) for s in shown)  # AVIF where an icon kept it, else WebP
    assert not any(p.endswith(".png") and p.startswith("/assets/icons/") for p in modern.requested), (
        "a modern browser fetched a PNG fallback"
    )
    assert "gzip" in modern.accept_encoding


def test_layout_does_not_shift_while_icons_load(modern: Visit, browser: Any, server: str) -> None:
    assert modern.layout_shift == 0
    assert all(image["width"] and image["height"] for image in modern.images)
    held = visit(browser, server, mode="held", check_icon_map=False)  # images arrive only after layout
    assert held.problems == [], held.report()
    assert held.loaded_before == 0 and held.boxes_before
    assert held.boxes_before == [image["box"] for image in held.images] == [image["box"] for image in modern.images]
    assert held.layout_shift == 0


def test_old_browser_shows_every_icon_from_its_png_at_the_same_size(old: Visit, modern: Visit) -> None:
    assert old.problems == [], old.report()
    assert len(old.images) == len(modern.images)
    for before, after in zip(modern.images, old.images):
        assert path_of(after["currentSrc"]).endswith(".png") and after["naturalWidth"] > 0, after
        assert after["sources"] == []
        assert after["box"] == before["box"], (after["alt"], before["box"], after["box"])
    assert not any(p.endswith((".webp", ".avif")) for p in old.requested)


def test_every_icon_loads_without_javascript(browser: Any, server: str, modern: Visit) -> None:
    plain = visit(browser, server, mode="modern", javascript=False)
    assert plain.problems == [], plain.report()
    assert [path_of(i["currentSrc"]) for i in plain.images] == [path_of(i["currentSrc"]) for i in modern.images]
    assert [i["box"] for i in plain.images] == [i["box"] for i in modern.images]


def test_full_page_screenshot_is_not_blank(modern: Visit) -> None:
    shot = ARTIFACTS / "default-site.png"
    assert shot.is_file()
    with Image.open(shot) as image:
        picture = image.convert("RGB")
    assert picture.width == VIEWPORT["width"]
    assert picture.height >= max(i["box"][1] + i["box"][3] for i in modern.images)
    legend = {image["src"]: image for image in modern.images}  # the last of each: the reward guide
    assert len(legend) >= 5
    for alt, image in legend.items():
        x, y, w, h = (round(v) for v in image["box"])
        crop = picture.crop((x, y, x + w, y + h))
        colours = len(crop.getcolors(maxcolors=crop.width * crop.height) or ())
        assert colours > 20, f"the {alt!r} icon at {image['box']} has only {colours} colours in the screenshot"


def test_page_weight(modern: Visit, old: Visit, record_figure: Callable[[str, Any], None]) -> None:
    full = weight(modern)
    first = weight(modern, only=above_the_fold_paths(modern))
    legacy = weight(old)
    report = {
        "url": "/",
        "viewport": VIEWPORT,
        "accept_encoding": modern.accept_encoding,
        "note": "transfer = body + Chromium's flat 300-byte header estimate per response; "
        "body = encodedBodySize (gzip for HTML/CSS via gzip_static); no caches (fresh context)",
        "modern_above_the_fold": first,
        "modern_full_page": full,
        "old_browser_full_page": {
            **legacy,
            "note": "HTML fulfilled by the test without <source>s, uncompressed; icons are the PNGs",
        },
        "not_counted": {
            "favicon": sorted(set(modern.notes)),
            "favicon_timing": [e for e in modern.resources if is_site_icon(e["path"])],
        },
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "page-weight.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    icons = full["by_kind"].get("avif", {}).get("body", 0) + full["by_kind"].get("webp", {}).get("body", 0)
    record_figure(
        "page weight, modern, full page",
        f"{full['requests']} requests, {full['transfer_bytes']:,} B transferred "
        f"(bodies {full['body_bytes']:,} B: HTML {full['by_kind']['html']['body']:,} gz, "
        f"CSS {full['by_kind']['css']['body']:,} gz, icons {icons:,})",
    )
    record_figure(
        "page weight, modern, above the fold at 1280x800",
        f"{first['requests']} requests, {first['transfer_bytes']:,} B transferred (bodies {first['body_bytes']:,} B)",
    )
    png = legacy["by_kind"].get("png", {})
    record_figure(
        "page weight, old browser (PNG)",
        f"{legacy['requests']} requests, icons {png.get('body', 0):,} B in {png.get('requests', 0)} PNGs",
    )
    for note in sorted(set(modern.notes)):
        record_figure("note", note)

    kinds = full["by_kind"]
    assert set(kinds) <= {"html", "css", "js", "avif", "webp"}, kinds
    assert kinds["html"]["requests"] == 1 and kinds["css"]["requests"] == 1
    for kind in ("html", "css"):
        assert 0 < kinds[kind]["body"] < kinds[kind]["decoded"], f"{kind} was not served compressed: {kinds[kind]}"
    distinct_icons = {path_of(i["currentSrc"]) for i in modern.images}
    assert full["requests"] == 3 + len(distinct_icons)  # the page, style.css, site.js and the icons
    assert first["requests"] <= full["requests"]
    assert full["transfer_bytes"] < WEIGHT_BUDGET
    assert png.get("body", 0) > icons, "the PNG fallbacks should weigh more than the AVIF/WebP the page serves"


def test_checker_reports_a_missing_fallback_png(
    browser: Any, built_site: Path, nginx_server: Callable[..., str]
) -> None:
    release = doctored_release(built_site, "missing-png")
    png = re.search(r'<img src="(/assets/icons/boopon\.[0-9a-f]+\.png)"', served_html(built_site)).group(1)
    (release / png.lstrip("/")).unlink()
    base = nginx_server(built_site, root=release)

    modern = visit(browser, base, mode="modern")
    assert {(p.kind, p.subject) for p in modern.problems} == {("icon_map", png)}, modern.report()

    old = visit(browser, base, mode="old")
    assert {(p.kind, p.subject) for p in old.problems} == {("http", png), ("console", png), ("image", png)}, (
        old.report()
    )
    broken = [p for p in old.problems if p.kind == "image"]
    assert len(broken) == sum(1 for i in old.images if i["src"] == png) >= 1


def test_checker_reports_a_source_pointing_at_a_missing_file(
    browser: Any, built_site: Path, nginx_server: Callable[..., str]
) -> None:
    html = served_html(built_site)
    best = re.search(r'<source type="image/\w+" srcset="(/assets/icons/polychrome\.[0-9a-f]+\.(\w+)) 1x', html)
    missing = f"/assets/icons/polychrome.0000000000.{best.group(2)}"
    release = doctored_release(built_site, "missing-source")
    rewrite_page(release, html.replace(f'srcset="{best.group(1)} 1x', f'srcset="{missing} 1x', 1))
    base = nginx_server(built_site, root=release)

    modern = visit(browser, base, mode="modern")
    # The broken <img> has alt="" (its name is printed beside it), so it keeps its CSS box and
    # nothing moves: no layout shift, just the one missing file.
    assert {(p.kind, p.subject) for p in modern.problems} == {
        ("http", missing),
        ("console", missing),
        ("image", missing),
        ("markup", missing),
    }, modern.report()
    assert len([p for p in modern.problems if p.kind == "image"]) == 1  # only that one <picture>

    old = visit(browser, base, mode="old")  # an old browser never sees the <source>
    assert old.problems == [], old.report()


# ---- densities -------------------------------------------------------------------------------

DISPLAY = 40  # site.toml [encode] display, the CSS box of every icon on the default page


def source_widths(site: Path) -> dict[str, int]:
    """1x PNG URL -> the width of that icon's source in icons/, read from the release's manifest."""
    manifest = json.loads((site / "dist" / "current" / "manifest.json").read_text())
    out = {}
    for logical, entry in manifest.items():
        if logical.startswith("icons/") and logical.endswith(".png") and "@" not in logical:
            with Image.open(site / "icons" / Path(logical).name) as source:
                out[entry["url"]] = source.width
    return out


@pytest.mark.parametrize("dpr", [1, 2, 3])
def test_each_screen_density_loads_the_icon_file_of_its_size(
    browser: Any, server: str, built_site: Path, dpr: int, record_figure: Callable[[str, Any], None]
) -> None:
    """At device scale factor 1, 2 and 3 every icon shows the file whose natural width is
    min(display x DPR, source width), in AVIF or WebP; with WebP, AVIF and <picture> gone, the PNG
    of that same size."""
    widths = source_widths(built_site)
    modern = visit(browser, server, mode="modern", dpr=dpr, check_icon_map=False)
    assert modern.problems == [], modern.report()
    old = visit(browser, server, mode="old", dpr=dpr)
    assert old.problems == [], old.report()
    for seen, formats in ((modern, (".avif", ".webp")), (old, (".png",))):
        for image in seen.images:
            expected = min(DISPLAY * dpr, widths[image["src"]])
            shown = path_of(image["currentSrc"])
            assert (image_pixels(server, shown)[0], shown.endswith(formats)) == (expected, True), image
            assert (image["width"], image["height"]) == (str(DISPLAY), str(DISPLAY))
    assert [i["box"] for i in old.images] == [i["box"] for i in modern.images]
    icons = {k: v["body"] for k, v in weight(modern)["by_kind"].items() if k in ("avif", "webp")}
    record_figure(
        f"icon bytes at DPR {dpr}",
        f"modern {sum(icons.values()):,} B {icons}; "
        f"old browser {weight(old)['by_kind'].get('png', {}).get('body', 0):,} B of PNG",
    )


def test_the_first_screen_of_icons_loads_eagerly(built_site: Path) -> None:
    loading = re.findall(r'<img [^>]*loading="?(\w+)', served_html(built_site))
    assert loading[:6] == ["eager"] * 6 and set(loading[6:]) == {"lazy"}
