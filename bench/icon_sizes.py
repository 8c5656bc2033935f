"""Icon bytes per screen density with resizing off and on, the whole page before/after, and the cold encode time.

What it measures, side by side in one run:

 1. Page icon bytes at DPR 1, 2 and 3: headless Chromium (/usr/bin/chromium through Playwright,
    `device_scale_factor` emulation, a fresh context per visit) loads the page from the real nginx,
    scrolls through it so every lazy icon loads, and sums encodedBodySize and transferSize of the
    image resources under /assets/icons/ from Resource Timing. Each site is built twice, with
    `[encode] display = 0` (no resizing: one file per format at the source size) and `display = 40`
    (the repo's setting: one file per density, densities from site.toml). The bytes are also given
    as a share of the source PNG bytes of the icons the page shows. Sites:
      a  default  the repo's own site (11 Noto icons, 64 px)
      b  large    --icons (default 30; 10 with --quick) 256 px PNGs shown at 40 px, from --corpus:
                  oxygen  (default) the 256x256 PNGs of the Oxygen icon theme (Debian package
                          oxygen-icon-theme, LGPL-3+): real published icons with soft shadows and
                          fine texture, 37 kB each on average. Loaded through bench/weak_spot.py's
                          loader (apt-get download once into bench/.cache/, its deterministic
                          order); the few 128 px files in that folder are skipped. Falls back to
                          noto, with a note, when that loader is unavailable.
                  noto    Noto Color Emoji artwork (Apache-2.0, as the default site) from the npm
                          package @iconify-json/noto (SVG), rasterised once at 256x256 with
                          @resvg/resvg-js and optimised with oxipng (level 4, lossless, metadata
                          stripped), cached in bench/.cache/icon_sizes/: flat vector art, 8 kB each.
                  The site: the repo's templates/ and site.toml ([site] base_url kept; display set),
                  icon_map.yaml with placeholder https URLs, the PNGs as icons/<slug>.png (so
                  --offline uses them), and a codes.yaml whose rewards use every icon.
    Targets on (b) with resizing on: DPR 1 <= 6%, DPR 2 <= 9%, DPR 3 <= 13% of the source PNG bytes.
    Also on (b): every icon file of the release (manifest.json) is decoded and compared with
    pipeline.encode.ssim against pipeline.encode.resize(decoded source, file size): the minimum and
    how many fall below the site's ssim_floor, and how many files are wider or taller than their
    source (upscaled).
 2. The default page's whole transfer at DPR 1 and 2, before (a git worktree of 11be590 in the
    temp dir, built by its own code: `python -m pipeline build --offline` with PYTHONPATH at the
    worktree, served with its own deploy/nginx.conf) and after (this checkout, its own
    deploy/nginx.conf): every request of one visit as nginx logged it ($bytes_sent: headers + body,
    split into HTML, CSS, icons, site icon, other), and Resource Timing's transferSize beside it.
    The site icon (the <link rel=icon> PNG after, /favicon.ico before) is part of the total: Chromium
    asks for it by itself; should a visit not ask for it, it is fetched once with the browser's
    Accept-Encoding and added (the table says which).
    nginx: /usr/sbin/nginx in the foreground, pid/logs/temp in a private prefix, worker_processes 1,
    the version's server block with only `listen` (127.0.0.1:<free port>) and `root` rewritten, and
    `load_module` for Debian's brotli_static module when it is installed (the shipped block serves
    the .br files with core directives and needs no module; loading it changes nothing there).
 3. Cold encode of (b): `python -m pipeline build --offline --summary line` on a fresh copy (empty
    .cache/, no dist/), display 0 vs display 40, alternating, median of --runs (3; 1 with --quick):
    wall time of the process, CPU of it and its encode workers (getrusage RUSAGE_CHILDREN), the
    encode stage from its summary line, and the cores other processes kept busy meanwhile
    (/proc/stat). Target: resizing on is not slower (ratio on/off <= 1.0), judged on wall and on
    CPU separately (CPU is the steadier of the two on a shared machine).

Needs nginx, Chromium (/usr/bin/chromium), the playwright Python package, and once, for the corpus,
apt-get (oxygen) or npm and node (noto); afterwards the cache is enough. No pytest: nothing is
imported from tests/.

Usage (2 cores):
  python bench/icon_sizes.py --quick       # 10 icons, 1 cold run each, ~1.5 min idle
  python bench/icon_sizes.py               # 30 icons, 3 cold runs each, ~3.5 min idle
  python bench/icon_sizes.py --icons 60 --runs 5

Writes bench/results/icon_sizes.json (--output to change). Everything binds 127.0.0.1; every
process started here (builds, nginx, node/npm) is stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import io
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "icon_sizes.json"
CACHE = HERE / ".cache" / "icon_sizes"
sys.path.insert(0, str(ROOT))  # the repo's pipeline, even when it is not installed

from PIL import Image  # noqa: E402

from pipeline import encode as enc  # noqa: E402
from pipeline.config import load_site, slugify  # noqa: E402

BEFORE_COMMIT = "11be590"
DISPLAY_ON = 40
DPRS = (1, 2, 3)
WHOLE_PAGE_DPRS = (1, 2)
TARGETS = {1: 0.06, 2: 0.09, 3: 0.13}  # (b), resizing on: icon bytes / source PNG bytes at each DPR
SOURCE_PX = 256

NOTO_PACKAGE = "@iconify-json/noto@1.2.9"
RESVG_PACKAGE = "@resvg/resvg-js@2.6.2"
OXIPNG_LEVEL = 4
POOL = 60  # icons rasterised into the cache once; --icons takes the first N of them

NGINX = "/usr/sbin/nginx"
MIME_TYPES = Path("/etc/nginx/mime.types")
BROTLI_MODULE = Path("/usr/lib/nginx/modules/ngx_http_brotli_static_module.so")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [  # as tests/test_browser.py
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 20_000
BUILD_TIMEOUT = 900.0
SCROLL_PAUSE_MS = 40

ALL_IMAGES_SETTLED = """() => {
  const pending = [...document.images].filter(img => !img.complete);
  if (pending.length) pending[0].scrollIntoView({block: "center"});
  return pending.length === 0;
}"""
DESCRIBE_IMAGES = """() => [...document.images].map(img => ({
  src: img.getAttribute("src"), currentSrc: img.currentSrc, complete: img.complete,
  naturalWidth: img.naturalWidth, width: img.getAttribute("width")}))"""
TIMING_ENTRIES = """() => [...performance.getEntriesByType("navigation"), ...performance.getEntriesByType("resource")]
  .map(e => ({url: e.name, type: e.entryType === "navigation" ? "document" : e.initiatorType,
              transferSize: e.transferSize, encodedBodySize: e.encodedBodySize, decodedBodySize: e.decodedBodySize}))"""
SITE_ICON_LINK = (
    """() => { const l = document.querySelector('link[rel~="icon"]'); return l ? l.getAttribute("href") : null; }"""
)
ICON_FILE = re.compile(
    r"^/assets/icons/(?P<slug>[^/@.]+)(?:@(?P<density>[\d.]+)x)?\.[0-9a-f]+\.(?P<fmt>avif|webp|png)$"
)
MANIFEST_ICON = re.compile(r"^icons/(?P<slug>[^/@]+?)(?:@(?P<density>[\d.]+)x)?\.(?P<fmt>avif|webp|png)$")


def log(text: str = "") -> None:
    print(text, flush=True)


# ---- processes ----------------------------------------------------------------------------------


def stop_group(process: subprocess.Popen[Any], term_wait: float = 5.0) -> None:
    """SIGTERM to the process group this process leads (it was started in a new session), a bounded
    wait, then SIGKILL to whatever is left of that group."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=term_wait)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5.0)


def run(
    command: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """subprocess.run in its own session, the whole group killed by PID on timeout or interrupt."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        errors="replace",
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(process)
        stdout, stderr = process.communicate()
        raise RuntimeError(f"{' '.join(command[:4])} ... took over {timeout:.0f}s; stopped\n{stderr[-800:]}") from None
    except BaseException:
        stop_group(process)
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent not idle since boot (/proc/stat), NaN if unknown."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# ---- the (b) corpora: Oxygen (weak_spot's loader) or Noto SVGs rasterised at 256 px ---------------------------------------------


@dataclass
class Corpus:
    name: str
    icons: list[tuple[str, Path]]  # (display name, 256 px PNG)
    meta: dict[str, Any] = field(default_factory=dict)


RASTERISE_JS = r"""
// node rasterise.cjs icons.json outdir size name...  -> outdir/name.png, one per name
const { Resvg } = require("@resvg/resvg-js");
const fs = require("fs");
const path = require("path");
const [iconsJson, outdir, size, ...names] = process.argv.slice(2);
const set = JSON.parse(fs.readFileSync(iconsJson, "utf8"));
for (const name of names) {
  const icon = set.icons[name];
  const w = icon.width || set.width || 16, h = icon.height || set.height || 16;
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" viewBox="${icon.left || 0} ${icon.top || 0} ${w} ${h}" width="${w}" height="${h}">${icon.body}</svg>`;
  const png = new Resvg(svg, { fitTo: { mode: "width", value: Number(size) }, background: "rgba(0,0,0,0)" }).render().asPng();
  fs.writeFileSync(path.join(outdir, name + ".png"), png);
}
"""


def npm_pack(spec: str, into: Path) -> tuple[Path, dict[str, Any]]:
    """`npm pack SPEC` into `into`; (the tarball, npm's record of it)."""
    into.mkdir(parents=True, exist_ok=True)
    done = run(["npm", "pack", spec, "--json", "--pack-destination", str(into)], cwd=into, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"npm pack {spec} failed: {done.stderr.strip()[-500:]}")
    info = json.loads(done.stdout)[0]
    return into / info["filename"], info


def noto_corpus(count: int) -> Corpus:
    """The first `count` of a fixed pool of Noto emoji, 256 px PNGs, built once into the cache."""
    pool_dir = CACHE / f"noto-{SOURCE_PX}"
    stamp = pool_dir / ".complete"
    if not stamp.exists():
        build_noto_pool(pool_dir)
    record = json.loads(stamp.read_text(encoding="utf-8"))
    names = record["icons"][:count]
    if len(names) < count:
        log(f"  (the cached pool has {len(names)} icons; using all of them)")
    icons = [(" ".join(word.capitalize() for word in key.split("-")), pool_dir / f"{key}.png") for key in names]
    meta = {k: v for k, v in record.items() if k != "icons"}
    return Corpus("noto-256", icons, {**meta, "used": len(icons), "names": names})


def build_noto_pool(pool_dir: Path) -> None:
    for tool in ("npm", "node"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"{tool} is needed once to build the 256 px corpus into {pool_dir} (apt-get install nodejs npm)"
            )
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp_name:
        tmp = Path(tmp_name)
        log(f"  fetching {NOTO_PACKAGE} and {RESVG_PACKAGE} with npm (once; cached in {CACHE.relative_to(ROOT)}) ...")
        tgz, info = npm_pack(NOTO_PACKAGE, tmp)
        with tarfile.open(tgz, "r:gz") as tar:
            icon_set = json.load(tar.extractfile("package/icons.json"))  # type: ignore[arg-type]
            chars = json.load(tar.extractfile("package/chars.json"))  # type: ignore[arg-type]
            about = json.load(tar.extractfile("package/info.json"))  # type: ignore[arg-type]
        (tmp / "icons.json").write_text(json.dumps(icon_set), encoding="utf-8")
        tool_dir = tmp / "resvg"
        tool_dir.mkdir()
        done = run(
            ["npm", "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(tool_dir), RESVG_PACKAGE],
            cwd=tool_dir,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"npm install {RESVG_PACKAGE} failed: {done.stderr.strip()[-500:]}")
        (tool_dir / "rasterise.cjs").write_text(RASTERISE_JS, encoding="utf-8")
        chosen = choose_noto(icon_set, chars)
        out = tmp / "out"
        out.mkdir()
        done = run(
            ["node", str(tool_dir / "rasterise.cjs"), str(tmp / "icons.json"), str(out), str(SOURCE_PX), *chosen],
            cwd=tool_dir,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rasterising with resvg failed: {done.stderr.strip()[-800:]}")
        import oxipng

        if pool_dir.exists():
            shutil.rmtree(pool_dir)
        pool_dir.mkdir(parents=True)
        raw_total = optimised_total = 0
        for key in chosen:
            raw = (out / f"{key}.png").read_bytes()
            small = oxipng.optimize_from_memory(raw, level=OXIPNG_LEVEL, strip=oxipng.StripChunks.all())
            with Image.open(out / f"{key}.png") as check:
                if check.size != (SOURCE_PX, SOURCE_PX):
                    raise RuntimeError(f"{key}: rasterised to {check.size}, expected {SOURCE_PX} px square")
            (pool_dir / f"{key}.png").write_bytes(small)
            raw_total += len(raw)
            optimised_total += len(small)
        resvg_version = json.loads((tool_dir / "node_modules" / "@resvg" / "resvg-js" / "package.json").read_text())[
            "version"
        ]
        licence = about.get("license", {})
        record = {
            "package": f"{info['name']}@{info['version']}",
            "npm_integrity": info.get("integrity"),
            "artwork": f"{about.get('name')} by {about.get('author', {}).get('name')} ({about.get('author', {}).get('url')})",
            "licence": licence.get("spdx") or licence.get("title"),
            "licence_url": licence.get("url"),
            "rasteriser": f"@resvg/resvg-js@{resvg_version} (MIT), fitTo width {SOURCE_PX}, transparent background",
            "optimiser": f"oxipng level {OXIPNG_LEVEL}, lossless, all metadata stripped (as a published PNG would be)",
            "selection": "single-code-point emoji with an icon in the set (no flags, keycaps, skin-tone or "
            "regional-indicator code points), ordered by sha256 of the icon's name",
            "size_px": SOURCE_PX,
            "pool_bytes_raw": raw_total,
            "pool_bytes_optimised": optimised_total,
            "icons": chosen,
        }
        (pool_dir / ".complete").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def choose_noto(icon_set: dict[str, Any], chars: dict[str, str]) -> list[str]:
    names = set()
    for code, name in chars.items():
        if "-" in code or name not in icon_set["icons"]:
            continue
        point = int(code, 16)
        if 0x1F1E6 <= point <= 0x1F1FF or 0x1F3FB <= point <= 0x1F3FF or point < 0x2000:
            continue  # regional indicators, skin tones, ASCII/Latin-1 symbols and keycap bases
        if any(word in name for word in ("flag", "keycap", "button")):
            continue
        names.add(name)
    return sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())[:POOL]


def oxygen_corpus(count: int) -> Corpus:
    """The first `count` 256x256 icons, in bench/weak_spot.py's deterministic order, of the Oxygen
    icon theme that its loader fetches (apt-get download, once) into bench/.cache/oxygen-256/."""
    sys.path.insert(0, str(HERE))
    import weak_spot  # bench/weak_spot.py: its corpus loader, fetch_corpus() and sample()

    meta = dict(weak_spot.fetch_corpus())
    icons: list[tuple[str, Path]] = []
    slugs: set[str] = set()
    skipped = []
    for path in weak_spot.sample(0):
        with Image.open(path) as image:
            size = image.size
        if size != (SOURCE_PX, SOURCE_PX):
            skipped.append(f"{path.name} ({size[0]}x{size[1]})")
            continue
        category, _, leaf = path.stem.partition("__")
        words = [w for w in re.split(r"[^A-Za-z0-9]+", leaf or category) if w]
        name = " ".join(w.capitalize() for w in words)[:48].strip()
        if slugify(name) in slugs:
            name = f"{category.capitalize()} {name}"[:56].strip()
        if slugify(name) in slugs:
            continue
        slugs.add(slugify(name))
        icons.append((name, path))
        if len(icons) == count:
            break
    licence = meta.pop("licence", None)
    return Corpus(
        "oxygen",
        icons,
        {
            "package": f"{meta.get('package')} {meta.get('version')} (Debian, apt-get download)",
            "licence": licence,
            "artwork": "Oxygen icon theme (KDE), base/256x256 PNGs as shipped",
            "loader": "bench/weak_spot.py fetch_corpus() and sample() (sha256 order of the file names)",
            "deb": meta,
            "size_px": SOURCE_PX,
            "skipped_not_256px": skipped,
            "used": len(icons),
            "names": [path.name for _name, path in icons],
        },
    )


def load_corpus(which: str, count: int) -> Corpus:
    if which == "oxygen":
        try:
            return oxygen_corpus(count)
        except Exception as error:  # noqa: BLE001 - another bench's loader: any failure means "use noto"
            log(f"  the oxygen corpus is unavailable ({type(error).__name__}: {error}); using noto instead")
            corpus = noto_corpus(count)
            corpus.meta["fallback_from_oxygen"] = f"{type(error).__name__}: {error}"
            return corpus
    return noto_corpus(count)


# ---- sites --------------------------------------------------------------------------------------


def with_display(toml_text: str, display: int) -> str:
    """site.toml text with `[encode] display = N` (the line replaced, or added to the section)."""
    section = re.search(r"(?ms)^\[encode\][^\n]*\n(.*?)(?=^\[|\Z)", toml_text)
    if section is None:
        return toml_text.rstrip("\n") + f"\n\n[encode]\ndisplay = {display}\n"
    body = section.group(1)
    if re.search(r"(?m)^display\s*=", body):
        body = re.sub(
            r"(?m)^display\s*=\s*[^#\n]*?(\s*#.*)?$", lambda m: f"display = {display}{m.group(1) or ''}", body, count=1
        )
    else:
        body = f"display = {display}\n" + body
    return toml_text[: section.start(1)] + body + toml_text[section.end(1) :]


def copy_site(source: Path, target: Path, display: int | None) -> Path:
    """The site files of `source` (site.toml, icon_map.yaml, codes.yaml, icons/, templates/)."""
    target.mkdir(parents=True)
    for name in ("icon_map.yaml", "codes.yaml"):
        shutil.copy2(source / name, target / name)
    for name in ("icons", "templates"):
        shutil.copytree(source / name, target / name)
    text = (source / "site.toml").read_text(encoding="utf-8")
    (target / "site.toml").write_text(text if display is None else with_display(text, display), encoding="utf-8")
    return target


def make_large_site(target: Path, corpus: Corpus, display: int) -> Path:
    """Templates and site.toml ([site] base_url kept) of the repo; the corpus as icons/<slug>.png
    with placeholder https URLs (--offline never asks them); codes whose rewards use every icon."""
    target.mkdir(parents=True)
    shutil.copytree(ROOT / "templates", target / "templates")
    (target / "site.toml").write_text(
        with_display((ROOT / "site.toml").read_text(encoding="utf-8"), display), encoding="utf-8"
    )
    (target / "icons").mkdir()
    lines = [f"# generated by bench/icon_sizes.py: corpus {corpus.name}, {corpus.meta.get('licence')}"]
    for name, path in corpus.icons:
        slug = slugify(name)
        shutil.copy2(path, target / "icons" / f"{slug}.png")
        lines.append(f"{json.dumps(name)}: https://icons.example.org/{corpus.name}/{slug}.png")
    (target / "icon_map.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    codes = ["game: Zenless Zone Zero", "codes:"]
    names = [name for name, _ in corpus.icons]
    for index in range(0, len(names), 3):
        group = names[index : index + 3]
        codes += [
            f"  - code: ICONBENCH{index // 3 + 1:02d}",
            f"    added: 2026-11-{max(1, 28 - index // 3):02d}",
            "    rewards:",
        ]
        codes += [f"      - {{icon: {json.dumps(name)}, amount: {10 * (i + 1)}}}" for i, name in enumerate(group)]
    (target / "codes.yaml").write_text("\n".join(codes) + "\n", encoding="utf-8")
    return target


def site_display(site: Path) -> tuple[int, tuple[float, ...], float]:
    """(display, densities, ssim_floor) the site's config gives its first icon (this checkout's loader)."""
    config = load_site(site)
    settings = config.icons[0].settings
    return settings.display, tuple(settings.densities), settings.ssim_floor


@dataclass
class Build:
    wall_s: float
    cpu_s: float
    encode_s: float | None
    others_cores: float | None
    line: str


def build(site: Path, *, cwd: Path = ROOT, pythonpath: Path | None = None, fresh: bool = True) -> Build:
    """One `python -m pipeline build --offline --summary line --site SITE` (fresh: no .cache/, no dist/)."""
    if fresh:
        for name in (".cache", "dist"):
            shutil.rmtree(site / name, ignore_errors=True)
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    command = [sys.executable, "-m", "pipeline", "build", "--offline", "--summary", "line", "--site", str(site)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = machine_busy_s()
    started = time.perf_counter()
    done = run(command, cwd=cwd, env=env, timeout=BUILD_TIMEOUT)
    wall = time.perf_counter() - started
    busy = machine_busy_s() - busy
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"build of {site.name} exited {done.returncode}: {done.stderr.strip()[-1200:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    found = re.search(r"\bencode=([\d.]+)", line)
    others = round(max(0.0, busy - cpu) / wall, 2) if not math.isnan(busy) and wall > 0 else None
    return Build(round(wall, 3), round(cpu, 3), float(found.group(1)) if found else None, others, line)


# ---- git worktree of the version before ---------------------------------------------------------


@contextlib.contextmanager
def worktree(commit: str, path: Path) -> Iterator[Path]:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"git worktree add {commit} failed: {done.stderr.strip()}")
    try:
        yield path
    finally:
        removed = subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if removed.returncode != 0:
            log(f"  !! git worktree remove {path}: {removed.stderr.strip()}")
            shutil.rmtree(path, ignore_errors=True)
            subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], capture_output=True, timeout=120, check=False)


# ---- nginx --------------------------------------------------------------------------------------


LISTEN = re.compile(r"^(\s*)listen\s+[^;]+;", re.MULTILINE)
ROOT_LINE = re.compile(r"^(\s*)root\s+[^;]+;", re.MULTILINE)
LOG_FIELDS = ("method", "uri", "status", "bytes_sent", "body_bytes_sent", "content_encoding", "content_type")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Nginx:
    """nginx in the foreground with a private prefix, serving `root` through `server_conf` (only its
    listen and root lines rewritten). Every request is logged with the bytes it sent."""

    def __init__(self, root: Path, server_conf: Path, work: Path, brotli_module: bool) -> None:
        self.root, self.server_conf, self.brotli_module = root, server_conf, brotli_module
        self.prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=work))
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def config(self, port: int) -> Path:
        text = self.server_conf.read_text(encoding="utf-8")
        for pattern, what in ((LISTEN, "listen"), (ROOT_LINE, "root")):
            if len(pattern.findall(text)) != 1:
                raise RuntimeError(f"{self.server_conf} must have exactly one `{what}` line")
        text = LISTEN.sub(lambda m: f"{m.group(1)}listen 127.0.0.1:{port};", text)
        text = ROOT_LINE.sub(lambda m: f"{m.group(1)}root {self.root};", text)
        (self.prefix / "server.conf").write_text(text, encoding="utf-8")
        temp = self.prefix / "temp"
        temp.mkdir(exist_ok=True)
        module = f"load_module {BROTLI_MODULE};\n" if self.brotli_module else ""
        main = f"""{module}daemon off;
master_process on;
worker_processes 1;
pid {self.prefix / "nginx.pid"};
error_log {self.prefix / "error.log"} notice;
events {{ worker_connections 64; }}
http {{
    include {MIME_TYPES};
    default_type application/octet-stream;
    log_format bench '$request_method\\t$request_uri\\t$status\\t$bytes_sent\\t$body_bytes_sent\\t$sent_http_content_encoding\\t$sent_http_content_type';
    access_log {self.prefix / "access.log"} bench;
    client_body_temp_path {temp / "client_body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    include {self.prefix / "server.conf"};
}}
"""
        conf = self.prefix / "nginx.conf"
        conf.write_text(main, encoding="utf-8")
        return conf

    def check(self) -> tuple[bool, str]:
        conf = self.config(free_port())
        done = run(
            [NGINX, "-t", "-p", f"{self.prefix}/", "-c", str(conf), "-e", str(self.prefix / "error.log")],
            cwd=self.prefix,
            timeout=30,
        )
        return done.returncode == 0, done.stderr.strip()

    def __enter__(self) -> Nginx:
        for attempt in range(3):
            self.port = free_port()
            conf = self.config(self.port)
            (self.prefix / "error.log").unlink(missing_ok=True)
            self.process = subprocess.Popen(
                [NGINX, "-p", f"{self.prefix}/", "-c", str(conf), "-e", str(self.prefix / "error.log")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.process.poll() is None and not self._answers():
                time.sleep(0.02)
            if self.process.poll() is None and self._answers():
                return self
            error = self._error_log()
            stop_group(self.process)
            if "Address already in use" in error and attempt < 2:
                continue
            raise RuntimeError(f"nginx did not start on 127.0.0.1:{self.port}: {error[-800:]}")
        raise RuntimeError("nginx did not start")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop_group(self.process)
        shutil.rmtree(self.prefix, ignore_errors=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.25) as conn:
                conn.settimeout(0.5)
                conn.sendall(b"HEAD / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                return conn.recv(12).startswith(b"HTTP/1.")
        except OSError:
            return False

    def _error_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.prefix / "error.log").read_text(encoding="utf-8", errors="replace")
        return ""

    def log_size(self) -> int:
        with contextlib.suppress(OSError):
            return (self.prefix / "access.log").stat().st_size
        return 0

    def requests_since(self, offset: int) -> list[dict[str, Any]]:
        with contextlib.suppress(OSError), open(self.prefix / "access.log", "rb") as handle:
            handle.seek(offset)
            rows = []
            for line in handle.read().decode("utf-8", "replace").splitlines():
                parts = line.split("\t")
                if len(parts) == len(LOG_FIELDS) and parts[0] != "HEAD":  # HEAD: our own readiness probe
                    row = dict(zip(LOG_FIELDS, parts))
                    row["path"] = urlsplit(row["uri"]).path
                    for key in ("status", "bytes_sent", "body_bytes_sent"):
                        row[key] = int(row[key]) if row[key].isdigit() else 0
                    rows.append(row)
            return rows
        return []


def open_for_workers(directory: Path) -> None:
    """nginx workers run as nobody when we are root: give others search permission on our own
    temp directories down to the site (mkdtemp makes them 0700). Only directories we created."""
    if os.geteuid() != 0:
        return
    for path in (directory, *directory.parents):
        if path == Path(tempfile.gettempdir()) or path == path.parent:
            break
        path.chmod(path.stat().st_mode | 0o005)


# ---- the browser --------------------------------------------------------------------------------


def kind_of(path: str) -> str:
    if path in ("/", "/index.html") or path.endswith(".html"):
        return "html"
    if path.endswith(".css"):
        return "css"
    if path.startswith("/assets/icons/"):
        return "icons"
    if path == "/favicon.ico" or path.startswith(("/assets/favicon.", "/assets/apple-touch-icon.")):
        return "site_icon"
    return "other"


def scroll_through(page: Any) -> None:
    height = page.evaluate("() => document.documentElement.scrollHeight")
    step = max(200, VIEWPORT["height"] * 3 // 4)
    for y in [*range(0, height, step), height]:
        page.evaluate("y => scrollTo(0, y)", y)
        page.wait_for_timeout(SCROLL_PAUSE_MS)
    page.evaluate("() => scrollTo(0, 0)")


def visit(browser: Any, server: Nginx, dpr: float) -> dict[str, Any]:
    """One page load in a fresh context at device scale factor `dpr`: what the page showed, Resource
    Timing, and nginx's log of every request of the visit."""
    offset = server.log_size()
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=dpr, service_workers="block")
    problems: list[str] = []
    try:
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page.on(
            "requestfailed", lambda request: problems.append(f"failed: {urlsplit(request.url).path} {request.failure}")
        )
        page.on(
            "response",
            lambda r: problems.append(f"{urlsplit(r.url).path} answered {r.status}") if r.status >= 400 else None,
        )
        response = page.goto(server.base + "/", wait_until="load", timeout=TIMEOUT_MS)
        accept = response.request.all_headers().get("accept-encoding", "") if response else ""
        scroll_through(page)
        try:
            page.wait_for_function(ALL_IMAGES_SETTLED, timeout=TIMEOUT_MS, polling=50)
        except Exception as error:  # noqa: BLE001 - a timeout is a finding
            problems.append(f"images still loading after {TIMEOUT_MS} ms ({type(error).__name__})")
        page.wait_for_timeout(300)  # anything the browser asks for late
        images = page.evaluate(DESCRIBE_IMAGES)
        entries = page.evaluate(TIMING_ENTRIES)
        site_icon = page.evaluate(SITE_ICON_LINK)
    finally:
        context.close()
    time.sleep(0.1)
    for entry in entries:
        entry["path"] = urlsplit(entry["url"]).path
    not_loaded = [i["currentSrc"] or i["src"] for i in images if not (i["complete"] and i["naturalWidth"] > 0)]
    if not_loaded:
        problems.append(f"{len(not_loaded)} image(s) did not load, e.g. {not_loaded[0]}")
    return {
        "dpr": dpr,
        "accept_encoding": accept,
        "images": images,
        "entries": entries,
        "requests": server.requests_since(offset),
        "site_icon_link": site_icon,
        "problems": problems,
    }


def icon_bytes(seen: dict[str, Any], icons_dir: Path) -> dict[str, Any]:
    """Icon bytes of one visit (Resource Timing, image resources under /assets/icons/), the source
    PNG bytes of the icons the page shows, and which densities were picked."""
    icons = [
        e for e in seen["entries"] if e["path"].startswith("/assets/icons/") and e["type"] in ("img", "image", "source")
    ]
    shown = {}
    picked: dict[str, int] = {}
    formats: dict[str, int] = {}
    for image in seen["images"]:
        found = ICON_FILE.match(urlsplit(image["currentSrc"] or "").path)
        if not found:
            continue
        shown[found["slug"]] = image
    for entry in icons:
        found = ICON_FILE.match(entry["path"])
        if found:
            key = f"{found['density'] or '1'}x"
            picked[key] = picked.get(key, 0) + 1
            formats[found["fmt"]] = formats.get(found["fmt"], 0) + 1
    source = 0
    missing = []
    for slug in shown:
        path = icons_dir / f"{slug}.png"
        if path.is_file():
            source += path.stat().st_size
        else:
            missing.append(slug)
    body = sum(e["encodedBodySize"] for e in icons)
    transfer = sum(e["transferSize"] for e in icons)
    return {
        "requests": len(icons),
        "unique_urls": len({e["path"] for e in icons}),
        "body_bytes": body,
        "transfer_bytes": transfer,
        "icons_shown": len(shown),
        "source_png_bytes": source,
        "body_share_of_source": body / source if source else None,
        "transfer_share_of_source": transfer / source if source else None,
        "densities_fetched": dict(sorted(picked.items())),
        "formats_fetched": dict(sorted(formats.items())),
        "sources_missing": missing,
        "problems": seen["problems"],
    }


def whole_page(seen: dict[str, Any], site_icon_added: dict[str, Any] | None) -> dict[str, Any]:
    """Every request of the visit: nginx's bytes (headers + body) by kind, and Resource Timing; plus
    the site icon fetched separately when the visit did not ask for it."""
    by_kind: dict[str, dict[str, int]] = {}
    rows = list(seen["requests"])
    if site_icon_added:
        rows.append(
            {
                "path": site_icon_added["path"],
                "bytes_sent": site_icon_added["bytes_sent"],
                "body_bytes_sent": 0,
                "content_encoding": "-",
            }
        )
    for row in rows:
        slot = by_kind.setdefault(kind_of(row["path"]), {"requests": 0, "bytes_sent": 0, "body_bytes": 0})
        slot["requests"] += 1
        slot["bytes_sent"] += row["bytes_sent"]
        slot["body_bytes"] += row["body_bytes_sent"]
    site_icon_paths = sorted({r["path"] for r in rows if kind_of(r["path"]) == "site_icon"})
    encodings = sorted(
        {
            f"{kind_of(r['path'])}:{r['content_encoding']}"
            for r in seen["requests"]
            if r["content_encoding"] not in ("", "-")
        }
    )
    return {
        "requests": len(rows),
        "bytes_sent": sum(r["bytes_sent"] for r in rows),
        "site_icon_added": site_icon_added,
        "by_kind": dict(sorted(by_kind.items())),
        "content_encodings": encodings,
        "site_icon_paths": site_icon_paths,
        "timing_transfer_bytes": sum(e["transferSize"] for e in seen["entries"]),
        "timing_body_bytes": sum(e["encodedBodySize"] for e in seen["entries"]),
        "timing_entries": len(seen["entries"]),
        "accept_encoding": seen["accept_encoding"],
        "site_icon_link": seen["site_icon_link"],
        "problems": seen["problems"],
        "nginx_log": [{k: r.get(k) for k in ("path", "status", "bytes_sent", "content_encoding")} for r in rows],
    }


def fetch_site_icon(server: Nginx, link: str | None, accept: str) -> dict[str, Any]:
    """The site icon a headed desktop Chromium asks for: the <link rel=icon> href, else /favicon.ico;
    fetched once with the browser's Accept-Encoding, counted as nginx logged it."""
    path = link or "/favicon.ico"
    offset = server.log_size()
    request = urllib.request.Request(
        server.base + path, headers={"Accept-Encoding": accept, "Accept": "image/*,*/*;q=0.8"}
    )
    status = 0
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - 127.0.0.1 only
            reply.read()
            status = reply.status
    except OSError as error:
        status = getattr(error, "code", 0) or 0
    time.sleep(0.05)
    rows = server.requests_since(offset)
    return {"path": path, "status": status, "bytes_sent": sum(r["bytes_sent"] for r in rows)}


# ---- SSIM and upscaling, from the release ------------------------------------------------------


def check_variants(site: Path, floor: float) -> dict[str, Any]:
    """Every icon file in the live release's manifest.json, decoded and compared with the source
    resized to the file's size (pipeline.encode.resize, pipeline.encode.ssim)."""
    release = site / "dist" / "current"
    manifest = json.loads((release / "manifest.json").read_text(encoding="utf-8"))
    sources: dict[str, Image.Image] = {}
    resized: dict[tuple[str, tuple[int, int]], Image.Image] = {}
    rows = []
    for key, entry in sorted(manifest.items()):
        found = MANIFEST_ICON.match(key)
        if not found:
            continue
        slug = found["slug"]
        if slug not in sources:
            sources[slug] = enc.decode((site / "icons" / f"{slug}.png").read_bytes(), slug)
        source = sources[slug]
        data = (release / entry["url"].lstrip("/")).read_bytes()
        with Image.open(io.BytesIO(data)) as decoded:
            decoded.load()
            candidate = decoded.convert("RGBA")
        size = candidate.size
        upscaled = size[0] > source.width or size[1] > source.height
        if upscaled:
            score = float("nan")
        else:
            if (slug, size) not in resized:
                resized[(slug, size)] = enc.resize(source, size)
            reference = resized[(slug, size)]
            score = 1.0 if reference.tobytes() == candidate.tobytes() else enc.ssim(reference, candidate)
        rows.append(
            {
                "file": key,
                "format": found["fmt"],
                "density": float(found["density"] or 1),
                "width": size[0],
                "height": size[1],
                "source_width": source.width,
                "bytes": len(data),
                "ssim": round(score, 5),
                "upscaled": upscaled,
                "size_matches_manifest": [entry.get("width"), entry.get("height")] == list(size),
            }
        )
    scores = [r["ssim"] for r in rows if r["ssim"] == r["ssim"]]
    worst = min(rows, key=lambda r: r["ssim"] if r["ssim"] == r["ssim"] else 2.0) if rows else None
    by_format = {}
    for fmt in ("avif", "webp", "png"):
        chosen = [r["ssim"] for r in rows if r["format"] == fmt and r["ssim"] == r["ssim"]]
        if chosen:
            by_format[fmt] = {
                "files": len(chosen),
                "min_ssim": min(chosen),
                "below_floor": sum(s < floor for s in chosen),
            }
    return {
        "floor": floor,
        "files": len(rows),
        "min_ssim": min(scores) if scores else None,
        "worst_file": worst["file"] if worst else None,
        "below_floor": sum(s < floor for s in scores),
        "upscaled": sum(r["upscaled"] for r in rows),
        "size_mismatches": sum(not r["size_matches_manifest"] for r in rows),
        "by_format": by_format,
        "icons": len(sources),
        "rows": rows,
    }


# ---- main ---------------------------------------------------------------------------------------


def preflight() -> list[str]:
    problems = []
    if not os.access(NGINX, os.X_OK):
        problems.append(f"{NGINX} is missing (apt-get install nginx)")
    if not MIME_TYPES.is_file():
        problems.append(f"{MIME_TYPES} is missing (nginx-common)")
    if not os.access(CHROMIUM, os.X_OK):
        problems.append(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append(
            "the playwright Python package is not installed (pip install playwright; no browser download needed)"
        )
    return problems


def tree_hash() -> str:
    """sha256 over pipeline/**/*.py, templates/ and deploy/nginx.conf of this checkout, as they are now."""
    digest = hashlib.sha256()
    files = sorted(
        [
            *(ROOT / "pipeline").rglob("*.py"),
            *(ROOT / "templates").rglob("*"),
            ROOT / "deploy" / "nginx.conf",
            ROOT / "site.toml",
        ]
    )
    for path in files:
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 icons in (b), 1 cold run each (about 1.5 min)")
    parser.add_argument(
        "--icons",
        type=int,
        default=None,
        help=f"icons in site (b) (default 30; 10 with --quick; at most {POOL} for noto)",
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="cold builds of (b) per setting; the median is reported (default 3)"
    )
    parser.add_argument(
        "--corpus",
        choices=("oxygen", "noto"),
        default="oxygen",
        help="the 256 px icons of site (b): oxygen (real PNGs, default) or noto (rasterised flat emoji)",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help="where the JSON goes (default bench/results/icon_sizes.json)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp work dir (sites, builds) and say where it is"
    )
    args = parser.parse_args(argv)
    count = min(POOL, args.icons or (10 if args.quick else 30))
    runs = args.runs or (1 if args.quick else 3)

    started = time.perf_counter()
    load_before = os.getloadavg()
    cores = os.cpu_count() or 1
    log(
        f"icon sizes: (b) = {count} icons of {SOURCE_PX} px, {runs} cold run(s) per setting; {cores} cores; "
        f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
    )
    problems = preflight()
    if problems:
        for problem in problems:
            log(f"icon sizes: cannot run: {problem}")
        return 1

    results: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "runs": runs,
        "machine": {"cpus": cores, "platform": platform.platform(), "python": platform.python_version()},
        "git_head": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "working_tree_modified": bool(
            subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain", "pipeline", "templates", "site.toml", "deploy"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
        ),
        "pipeline_sources_sha256": tree_hash(),  # the checkout is edited concurrently: which code "after" is
        "before_commit": BEFORE_COMMIT,
        "targets_b_resizing_on": {f"dpr{k}": v for k, v in TARGETS.items()},
        "display_on": DISPLAY_ON,
        "encoder": {"version": enc.ENCODER_VERSION, "libraries": enc.LIBRARY_VERSIONS},
    }
    work = Path(tempfile.mkdtemp(prefix="bench-icon-sizes-"))
    status = 0
    try:
        status = measure(args, results, work, count, runs)
    except RuntimeError as error:
        log(f"icon sizes: {error}")
        results["error"] = str(error)
        status = 1
    finally:
        if args.keep:
            log(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["load_average"] = {"before": load_before, "after": os.getloadavg()}
    results["seconds_total"] = round(time.perf_counter() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    shown = args.output.resolve()
    log(
        f"\nload average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (1 min); total "
        f"{results['seconds_total']:.0f}s; wrote {shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown}"
    )
    return status


def measure(args: argparse.Namespace, results: dict[str, Any], work: Path, count: int, runs: int) -> int:
    os.chmod(work, 0o755)
    open_for_workers(work)

    # -- the corpus and the sites
    corpus = load_corpus(args.corpus, count)
    if len(corpus.icons) < count:
        log(f"  (only {len(corpus.icons)} icons available)")
    source_bytes = sum(path.stat().st_size for _name, path in corpus.icons)
    results["corpus_b"] = {
        **corpus.meta,
        "source_png_bytes": source_bytes,
        "corpus": corpus.name,
        "mean_source_png_bytes": round(source_bytes / max(1, len(corpus.icons))),
    }
    results["corpus_a"] = {
        "what": "the repo's icons/ (Noto Color Emoji 64 px via emoji-datasource-google 16.0.0)",
        "licence": "Apache-2.0",
        "icons": len(list((ROOT / "icons").glob("*.png"))),
    }
    log(
        f"(b) corpus: {len(corpus.icons)} x {SOURCE_PX} px from {corpus.meta.get('package')} ({corpus.meta.get('licence')}), "
        f"{source_bytes:,} source PNG bytes, {source_bytes / max(1, len(corpus.icons)):,.0f} B per icon"
    )

    sites = {
        ("a", "off"): copy_site(ROOT, work / "a-off", 0),
        ("a", "on"): copy_site(ROOT, work / "a-on", None),  # the repo's site.toml as it is: the "after" site too
        ("b", "off"): make_large_site(work / "b-off", corpus, 0),
        ("b", "on"): make_large_site(work / "b-on", corpus, DISPLAY_ON),
    }
    settings = {}
    for key, site in sites.items():
        display, densities, floor = site_display(site)
        settings[key] = {"display": display, "densities": densities, "ssim_floor": floor}
        wanted = 0 if key[1] == "off" else DISPLAY_ON
        if display != wanted:
            raise RuntimeError(f"site {key}: site.toml gives display = {display}, expected {wanted}")
    results["site_settings"] = {f"{k[0]}-{k[1]}": v for k, v in settings.items()}

    with worktree(BEFORE_COMMIT, work / "before-src") as before_src:
        which = run(
            [sys.executable, "-c", "import pipeline, sys; print(pipeline.__file__)"],
            cwd=before_src,
            env={**os.environ, "PYTHONPATH": str(before_src)},
            timeout=60,
        ).stdout.strip()
        if not which.startswith(str(before_src)):
            raise RuntimeError(f"the before build would import {which}, not the worktree's pipeline")
        before_site = copy_site(before_src, work / "before", None)
        before_conf = work / "before-nginx.conf"
        shutil.copy2(before_src / "deploy" / "nginx.conf", before_conf)
        log(
            f"\nbuilding: (a) off, (a) on = after, before = {BEFORE_COMMIT} (its own code, PYTHONPATH={before_src.name})"
        )
        builds = {
            "a-off": build(sites[("a", "off")]),
            "a-on": build(sites[("a", "on")]),
            "before": build(before_site, cwd=before_src, pythonpath=before_src),
        }
    for name, done in builds.items():
        log(f"  {name:7} {done.wall_s:6.2f}s wall {done.cpu_s:6.2f}s CPU  | {done.line}")

    # -- cold encode of (b): off and on alternating, fresh every time; the last build of each is served
    log(f"\ncold builds of (b), {len(corpus.icons)} icons: display 0 vs {DISPLAY_ON}, alternating, {runs} run(s) each")
    cold: dict[str, list[Build]] = {"off": [], "on": []}
    for repeat in range(runs):
        for mode in ("off", "on") if repeat % 2 == 0 else ("on", "off"):
            done = build(sites[("b", mode)])
            cold[mode].append(done)
            log(
                f"  run {repeat + 1} {mode:3} {done.wall_s:7.2f}s wall {done.cpu_s:7.2f}s CPU  encode stage "
                f"{done.encode_s if done.encode_s is not None else '?'}s  others {done.others_cores}  | {done.line[:80]}"
            )
    results["cold_encode_b"] = summarise_cold(cold)
    for key in ("a-off", "a-on", "before"):
        results.setdefault("builds", {})[key] = builds[key].__dict__

    # -- SSIM and upscaling of every variant of (b)
    checks = {}
    for mode in ("on", "off"):
        site = sites[("b", mode)]
        checks[mode] = check_variants(site, settings[("b", mode)]["ssim_floor"])
    results["variants_b"] = {mode: {k: v for k, v in c.items() if k != "rows"} for mode, c in checks.items()}
    results["variants_b_rows"] = {mode: c["rows"] for mode, c in checks.items()}

    # -- the browser
    module_present = BROTLI_MODULE.is_file()
    results["nginx"] = {
        "version": run([NGINX, "-v"], cwd=work, timeout=30).stderr.strip(),
        "brotli_static_module": str(BROTLI_MODULE) if module_present else None,
    }
    from playwright.sync_api import sync_playwright

    visits: dict[str, dict[int, dict[str, Any]]] = {}
    site_icons: dict[str, dict[int, dict[str, Any]]] = {}
    served = [
        ("a-off", sites[("a", "off")], ROOT / "deploy" / "nginx.conf", DPRS),
        ("a-on", sites[("a", "on")], ROOT / "deploy" / "nginx.conf", DPRS),
        ("b-off", sites[("b", "off")], ROOT / "deploy" / "nginx.conf", DPRS),
        ("b-on", sites[("b", "on")], ROOT / "deploy" / "nginx.conf", DPRS),
        ("before", before_site, before_conf, WHOLE_PAGE_DPRS),
    ]
    log("\nChromium: " + ", ".join(f"{name} at DPR {'/'.join(map(str, dprs))}" for name, _s, _c, dprs in served))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            results["chromium"] = browser.version
            for name, site, conf, dprs in served:
                open_for_workers(site)
                server = Nginx(site / "dist" / "current", conf, work, module_present)
                ok, message = server.check()
                if not ok and module_present:
                    log(f"  nginx -t failed with the brotli_static module loaded ({message[-200:]}); without it")
                    server.brotli_module = False
                    results["nginx"]["brotli_static_module_note"] = f"load_module failed: {message[-300:]}"
                with server:
                    results["nginx"].setdefault("loaded_module", {})[name] = server.brotli_module
                    for dpr in dprs:
                        seen = visit(browser, server, dpr)
                        visits.setdefault(name, {})[dpr] = seen
                        asked = any(kind_of(r["path"]) == "site_icon" for r in seen["requests"])
                        if dpr in WHOLE_PAGE_DPRS and name in ("before", "a-on") and not asked:
                            site_icons.setdefault(name, {})[dpr] = fetch_site_icon(
                                server, seen["site_icon_link"], seen["accept_encoding"]
                            )
                        if seen["problems"]:
                            log(f"  !! {name} DPR {dpr}: {'; '.join(seen['problems'][:3])}")
        finally:
            browser.close()

    page_icons = {
        name: {dpr: icon_bytes(seen, sites[tuple(name.split("-"))] / "icons") for dpr, seen in by_dpr.items()}
        for name, by_dpr in visits.items()
        if name != "before"
    }
    results["icon_bytes"] = {name: {f"dpr{d}": v for d, v in by_dpr.items()} for name, by_dpr in page_icons.items()}
    whole = {
        label: {dpr: whole_page(visits[name][dpr], site_icons.get(name, {}).get(dpr)) for dpr in WHOLE_PAGE_DPRS}
        for label, name in (("before", "before"), ("after", "a-on"))
    }
    results["whole_page"] = {label: {f"dpr{d}": v for d, v in by_dpr.items()} for label, by_dpr in whole.items()}
    verdicts = evaluate(results, page_icons)
    report(results, page_icons, whole, checks, f"{corpus.name}, {len(corpus.icons)} x {SOURCE_PX} px", verdicts)
    problems = [p for by_dpr in visits.values() for seen in by_dpr.values() for p in seen["problems"]]
    return 1 if problems else 0


def summarise_cold(cold: dict[str, list[Build]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode, builds in cold.items():
        out[mode] = {
            "median_wall_s": median([b.wall_s for b in builds]),
            "median_cpu_s": median([b.cpu_s for b in builds]),
            "median_encode_stage_s": median([b.encode_s for b in builds if b.encode_s is not None]),
            "median_others_cores": median([b.others_cores for b in builds if b.others_cores is not None]),
            "runs": [b.__dict__ for b in builds],
        }
    for key in ("wall", "cpu", "encode_stage"):
        off, on = out["off"][f"median_{key}_s"], out["on"][f"median_{key}_s"]
        out[f"ratio_on_off_{key}"] = on / off if off else None
    return out


def evaluate(results: dict[str, Any], page_icons: dict[str, dict[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    verdicts = []
    for dpr, limit in TARGETS.items():
        share = page_icons["b-on"][dpr]["body_share_of_source"]
        verdicts.append(
            {
                "name": f"b_dpr{dpr}",
                "label": f"(b) icon bytes at DPR {dpr}, resizing on",
                "value": share,
                "limit": limit,
                "op": "<=",
                "unit": "of source PNG bytes",
                "pass": share is not None and share <= limit,
            }
        )
    variants = results["variants_b"]["on"]
    verdicts.append(
        {
            "name": "b_ssim",
            "label": f"(b) variants below SSIM floor {variants['floor']}",
            "value": variants["below_floor"],
            "limit": 0,
            "op": "<=",
            "unit": "files",
            "pass": variants["below_floor"] == 0,
        }
    )
    verdicts.append(
        {
            "name": "b_upscaled",
            "label": "(b) variants upscaled",
            "value": variants["upscaled"],
            "limit": 0,
            "op": "<=",
            "unit": "files",
            "pass": variants["upscaled"] == 0,
        }
    )
    cold = results["cold_encode_b"]
    for key in ("wall", "cpu"):
        ratio = cold[f"ratio_on_off_{key}"]
        verdicts.append(
            {
                "name": f"cold_{key}",
                "label": f"(b) cold build {key.upper() if key == 'cpu' else key}, on / off",
                "value": ratio,
                "limit": 1.0,
                "op": "<=",
                "unit": "x",
                "pass": ratio is not None and ratio <= 1.0,
            }
        )
    results["verdicts"] = verdicts
    return verdicts


def report(
    results: dict[str, Any],
    page_icons: dict[str, dict[int, dict[str, Any]]],
    whole: dict[str, dict[int, dict[str, Any]]],
    checks: dict[str, dict[str, Any]],
    b_label: str,
    verdicts: list[dict[str, Any]],
) -> None:
    log(
        "\n== 1. icon bytes per page load (Resource Timing encodedBodySize, image resources under /assets/icons/; "
        "% = of the source PNG bytes of the icons shown) =="
    )
    head = (
        f"{'site':34} {'resize':7} {'source PNG':>11}  "
        + "  ".join(f"{'DPR ' + str(d):>19}" for d in DPRS)
        + "  densities/formats fetched (DPR 1 | 2 | 3)"
    )
    log(head)
    log("-" * len(head))
    labels = {"a": f"(a) default, {results['corpus_a']['icons']} x 64 px", "b": f"(b) {b_label}"}
    for site in ("a", "b"):
        for mode in ("off", "on"):
            row = page_icons[f"{site}-{mode}"]
            source = row[1]["source_png_bytes"]
            cells = "  ".join(f"{row[d]['body_bytes']:>10,} {_pct(row[d]['body_share_of_source']):>8}" for d in DPRS)
            fetched = " | ".join(
                ",".join(f"{k}:{v}" for k, v in row[d]["densities_fetched"].items())
                + " "
                + ",".join(f"{k}:{v}" for k, v in row[d]["formats_fetched"].items())
                for d in DPRS
            )
            label = labels[site] if mode == "off" else ""
            log(
                f"{label:34} {mode + (' (' + str(DISPLAY_ON) + ')' if mode == 'on' else ' (0)'):7} {source:>11,}  {cells}  {fetched}"
            )
    log(
        "  transferSize (body + Chromium's flat 300 B per response), same order: "
        + "; ".join(
            f"{name} " + "/".join(f"{page_icons[name][d]['transfer_bytes']:,}" for d in DPRS)
            for name in ("a-off", "a-on", "b-off", "b-on")
        )
    )
    on = results["variants_b"]["on"]
    off = results["variants_b"]["off"]
    log(
        f"\n(b) with resizing on: {on['files']} icon files of {on['icons']} icons decoded and compared with the source "
        f"resized to their size: min SSIM {on['min_ssim']:.4f} ({on['worst_file']}), {on['below_floor']} below the floor "
        f"{on['floor']}; {on['upscaled']} upscaled (wider than the source); {on['size_mismatches']} not the size manifest.json says"
    )
    log(
        "    by format: "
        + ", ".join(
            f"{fmt} {v['files']} files min {v['min_ssim']:.4f} ({v['below_floor']} below)"
            for fmt, v in on["by_format"].items()
        )
    )
    log(
        f"(b) with resizing off: {off['files']} files, min SSIM {off['min_ssim']:.4f}, {off['below_floor']} below, {off['upscaled']} upscaled"
    )

    log("\n== 2. the default page, whole transfer of one visit (nginx $bytes_sent: headers + body of every request) ==")
    head2 = (
        f"{'version':24} {'DPR':>3} {'req':>4} {'total B':>9} {'html':>7} {'css':>6} {'icons':>7} {'site icon':>10} "
        f"{'other':>6}  {'RT transfer':>11}  encodings"
    )
    log(head2)
    log("-" * len(head2))
    for label in ("before", "after"):
        for dpr in WHOLE_PAGE_DPRS:
            w = whole[label][dpr]
            get = lambda k, kinds=w["by_kind"]: kinds.get(k, {}).get("bytes_sent", 0)  # noqa: E731
            added = "*" if w["site_icon_added"] else ""
            name = f"before {BEFORE_COMMIT}" if label == "before" else "after (this checkout)"
            log(
                f"{name:24} {dpr:>3} {w['requests']:>4} {w['bytes_sent']:>9,} {get('html'):>7,} {get('css'):>6,} {get('icons'):>7,} "
                f"{get('site_icon'):>9,}{added:1} {get('other'):>6,}  {w['timing_transfer_bytes']:>11,}  {','.join(w['content_encodings'])}"
            )
    for dpr in WHOLE_PAGE_DPRS:
        b, a = whole["before"][dpr], whole["after"][dpr]
        log(
            f"  DPR {dpr}: after / before = {a['bytes_sent'] / b['bytes_sent']:.2f}x ({b['bytes_sent']:,} -> {a['bytes_sent']:,} B; "
            f"site icon before {', '.join(b['site_icon_paths']) or '-'}, after {', '.join(a['site_icon_paths']) or '-'})"
        )
    log(
        "  (RT transfer: Resource Timing transferSize, which has no site icon and counts 300 B of headers per response; "
        "* = the visit did not ask for the site icon, fetched once and added)"
    )
    log(
        f"  Accept-Encoding sent: {whole['after'][1]['accept_encoding']!r}; {results['nginx']['version'].split(': ')[-1]}, "
        f"brotli_static module {'loaded' if any(results['nginx'].get('loaded_module', {}).values()) else 'not loaded'}"
    )

    cold = results["cold_encode_b"]
    log(f"\n== 3. cold build of (b) ({b_label}), median of {results['runs']} ==")
    log(f"{'display':10} {'wall s':>8} {'CPU s':>8} {'encode stage s':>15} {'others (cores)':>15}")
    for mode, label in (
        ("off", "0 (off)"),
        ("on", f"{DISPLAY_ON} x {'/'.join(f'{d:g}' for d in results['site_settings']['b-on']['densities'])}"),
    ):
        c = cold[mode]
        log(
            f"{label:10} {c['median_wall_s']:8.2f} {c['median_cpu_s']:8.2f} {c['median_encode_stage_s']:15.2f} {c['median_others_cores']:15.2f}"
        )
    log(
        f"ratio on/off: wall {cold['ratio_on_off_wall']:.2f}x, CPU {cold['ratio_on_off_cpu']:.2f}x, encode stage {cold['ratio_on_off_encode_stage']:.2f}x"
    )

    log("\ntargets:")
    for v in verdicts:
        if v["unit"] == "of source PNG bytes":
            shown, limit = _pct(v["value"]), _pct(v["limit"])
        elif v["unit"] == "x":
            shown, limit = f"{v['value']:.2f}x", f"{v['limit']:.2f}x"
        else:
            shown, limit = f"{v['value']}", f"{v['limit']}"
        log(f"  [{'PASS' if v['pass'] else 'MISS'}] {v['label']}: {shown} (target {v['op']} {limit})")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


if __name__ == "__main__":
    sys.exit(main())
