"""The measurement behind the encoder settings in pipeline/encode.py.

For each corpus and each strategy it reports the source PNG bytes against the output bytes, the
mean and minimum SSIM (pipeline.encode.ssim: composited over black and over white, the worse of
the two), how many icons fall below the 0.98 floor, and the median encode time per icon.

Corpora:
  default  the icons in icons/*.png (always measured)
  npm      64 px PNGs from the npm packages emoji-datasource-google and emoji-datasource-twitter
           16.0.0 (img/<set>/64/*.png), fetched once with `npm pack` into bench/.cache/, sampled
           deterministically to --limit icons (half from each set). On by default when npm works;
           off with --quick unless --corpus npm is given.

Strategies (every one runs on the same decoded pixels; times exclude decoding except where noted):
  WebP lossless m4 / m6, WebP lossy q75/q80/q90 (alpha_quality=100, m4), AVIF 4:4:4 q50/q75
  (speed 8, one thread, as the pipeline), the pipeline's own per-icon choice (encode_icon: its
  first variant, which modern browsers get; its WebP variant; its PNG fallback; the time is the
  whole encode_icon call, decode included), cwebp via subprocess on the same files (lossy -q 80
  -alpha_q 100 -m 4; -lossless with its defaults; -lossless -q 100 -m 4, which matches Pillow's
  lossless=True, quality=100, method=4), and oxipng levels 2 and 4 on the source PNG.

  With --sweep, each swept icon (all default icons, the first --sweep-limit npm icons) is also
  encoded at every quality 0..100 of the pipeline's lossy WebP and AVIF settings, and other search
  ranges / an exhaustive search are replayed offline against encode_icon's own result; AVIF speed 6
  and WebP lossy method 6 are tried at the quality the pipeline chose.

Usage (times on 2 cores):
  python bench/encode_settings.py --quick          # default icons only, ~5 s
  python bench/encode_settings.py                  # + npm corpus (400 icons) if npm works, ~2.5 min
  python bench/encode_settings.py --sweep          # + the q-grid replay on 211 icons, ~6 min idle
                                                   # (11 min with load average ~7)
  python bench/encode_settings.py --corpus npm --limit 400 --jobs 2

Writes bench/results/encode_settings.json (per-icon records and the summaries printed) and, per
corpus, an SVG of output bytes against the worst SSIM per strategy (bench/charts.py): into
bench/figures/ with the default --output (the charts the README shows), else next to the JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import oxipng
from PIL import Image, features

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the repo's pipeline, even when it is not installed

import charts  # noqa: E402 - bench/charts.py (this script's folder is on sys.path)

from pipeline import encode as enc  # noqa: E402
from pipeline.model import EncodeSettings, IconSpec, Origin, SourceIcon  # noqa: E402

CACHE = HERE / ".cache"
RESULTS = HERE / "results" / "encode_settings.json"
FIGURES = HERE / "figures"  # committed: the charts of the last full run, shown in the README
NPM_PACKAGES = {"google": "emoji-datasource-google@16.0.0", "twitter": "emoji-datasource-twitter@16.0.0"}
FLOOR = EncodeSettings().ssim_floor
AVIF_OPTIONS = {"subsampling": "4:4:4", "speed": 8, "max_threads": 1}  # as pipeline.encode.avif_candidates

# key, label, group. The group decides which comparison section a row also appears in.
STRATEGIES = [
    ("webp_ll_m4", "WebP lossless m4", "pillow"),
    ("webp_ll_m6", "WebP lossless m6", "pillow"),
    ("webp_q75", "WebP q75 a100 m4", "pillow"),
    ("webp_q80", "WebP q80 a100 m4", "pillow"),
    ("webp_q90", "WebP q90 a100 m4", "pillow"),
    ("avif_q50", "AVIF 444 q50 s8", "pillow"),
    ("avif_q75", "AVIF 444 q75 s8", "pillow"),
    ("pipe_best", "pipeline: best (modern)", "pipeline"),
    ("pipe_webp", "pipeline: WebP", "pipeline"),
    ("pipe_png", "pipeline: PNG fallback", "pipeline"),
    ("cwebp_q80", "cwebp -q80 -alpha_q100 -m4", "cwebp"),
    ("cwebp_ll", "cwebp -lossless", "cwebp"),
    ("cwebp_ll_q100", "cwebp -lossless -q100 -m4", "cwebp"),
    ("cwebp_nl60", "cwebp -near_lossless 60", "near"),
    ("cwebp_nl40", "cwebp -near_lossless 40", "near"),
    ("cwebp_nl20", "cwebp -near_lossless 20", "near"),
    ("oxipng_l2", "oxipng -o2 (source)", "png"),
    ("oxipng_l4", "oxipng -o4 (source)", "png"),
]
LABELS = {key: label for key, label, _ in STRATEGIES}
# Pillow row vs the cwebp row with the same settings (bytes ratio ours/cwebp).
CWEBP_PAIRS = [("webp_q80", "cwebp_q80"), ("webp_ll_m4", "cwebp_ll_q100"), ("webp_ll_m4", "cwebp_ll")]


# ---- corpora ------------------------------------------------------------------------------------


def default_corpus() -> list[tuple[str, str, Path]]:
    return [("default", p.name, p) for p in sorted((ROOT / "icons").glob("*.png"))]


def npm_available() -> bool:
    if all((CACHE / "npm" / s / ".complete").exists() for s in NPM_PACKAGES):
        return True
    return shutil.which("npm") is not None


def fetch_npm() -> dict[str, Path]:
    """npm pack each package into bench/.cache/npm/, keep only img/<set>/64/*.png. Idempotent."""
    out: dict[str, Path] = {}
    base = CACHE / "npm"
    base.mkdir(parents=True, exist_ok=True)
    for emoji_set, spec in NPM_PACKAGES.items():
        target = base / emoji_set
        stamp = target / ".complete"
        if not stamp.exists():
            if target.exists():
                shutil.rmtree(target)
            print(f"fetching {spec} with npm pack ...", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory(dir=base) as tmp:
                done = subprocess.run(
                    ["npm", "pack", spec, "--json", "--pack-destination", tmp],
                    capture_output=True,
                    text=True,
                    timeout=600,
                    cwd=tmp,
                )
                if done.returncode != 0:
                    raise RuntimeError(f"npm pack {spec} failed: {done.stderr.strip()[-500:]}")
                info = json.loads(done.stdout)[0]
                tgz = Path(tmp) / info["filename"]
                prefix = f"package/img/{emoji_set}/64/"
                target.mkdir(parents=True)
                with tarfile.open(tgz, "r:gz") as tar:
                    for member in tar:
                        name = member.name
                        if not (member.isfile() and name.startswith(prefix) and name.endswith(".png")):
                            continue
                        leaf = name[len(prefix) :]
                        if "/" in leaf or leaf.startswith("."):
                            continue
                        (target / leaf).write_bytes(tar.extractfile(member).read())
                stamp.write_text(
                    json.dumps({"package": spec, "shasum": info.get("shasum"), "integrity": info.get("integrity")})
                    + "\n"
                )
        out[emoji_set] = target
    return out


def npm_corpus(limit: int) -> tuple[list[tuple[str, str, Path]], dict]:
    dirs = fetch_npm()
    items: list[tuple[str, str, Path]] = []
    meta = {}
    sets = list(dirs)
    for i, emoji_set in enumerate(sets):
        files = sorted(dirs[emoji_set].glob("*.png"))
        # Deterministic sample: order by a hash of "set/name", take the first k of each set.
        files.sort(key=lambda p: hashlib.sha256(f"{emoji_set}/{p.name}".encode()).hexdigest())
        k = len(files) if limit <= 0 else limit // len(sets) + (1 if i < limit % len(sets) else 0)
        items += [(emoji_set, p.name, p) for p in files[:k]]
        meta[emoji_set] = {
            "available": len(files),
            "sampled": min(k, len(files)),
            **json.loads((dirs[emoji_set] / ".complete").read_text()),
        }
    return items, meta


# ---- one icon -----------------------------------------------------------------------------------


def _save(image: Image.Image, fmt: str, **options) -> tuple[bytes, float]:
    t = time.perf_counter()
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue(), (time.perf_counter() - t) * 1000


def quality(reference: Image.Image, data: bytes) -> float:
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    rgba = decoded.convert("RGBA")
    if rgba.size != reference.size:
        return 0.0
    if rgba.tobytes() == reference.tobytes():
        return 1.0
    return enc.ssim(reference, rgba)


def _cwebp(path: Path, args: list[str]) -> tuple[bytes, float, float]:
    """(bytes, cwebp's own 'Time to encode picture' ms, subprocess wall ms)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.webp"
        t = time.perf_counter()
        done = subprocess.run(["cwebp", "-v", *args, str(path), "-o", str(out)], capture_output=True, text=True)
        wall = (time.perf_counter() - t) * 1000
        if done.returncode != 0:
            raise RuntimeError(f"cwebp {args} {path}: {done.stderr.strip()[-300:]}")
        m = re.search(r"Time to encode picture:\s*([\d.]+)s", done.stderr)
        return out.read_bytes(), float(m.group(1)) * 1000 if m else wall, wall


def measure(task: tuple[str, str, str, bool, bool]) -> dict:
    emoji_set, name, path_str, use_cwebp, sweep = task
    path = Path(path_str)
    data = path.read_bytes()
    image = enc.decode(data, name)
    record = {
        "set": emoji_set,
        "name": name,
        "source_bytes": len(data),
        "width": image.width,
        "height": image.height,
        "colors_le_256": image.getcolors(256) is not None,
        "results": {},
    }
    res = record["results"]

    def put(key: str, out: bytes, ms: float, detail: str = "", **extra) -> None:
        res[key] = {"bytes": len(out), "ssim": quality(image, out), "ms": round(ms, 3), "detail": detail, **extra}

    for key, opts in [
        ("webp_ll_m4", {"lossless": True, "quality": 100, "method": 4}),
        ("webp_ll_m6", {"lossless": True, "quality": 100, "method": 6}),
        ("webp_q75", {"quality": 75, "alpha_quality": 100, "method": 4}),
        ("webp_q80", {"quality": 80, "alpha_quality": 100, "method": 4}),
        ("webp_q90", {"quality": 90, "alpha_quality": 100, "method": 4}),
    ]:
        put(key, *_save(image, "WEBP", **opts))
    for key, q in [("avif_q50", 50), ("avif_q75", 75)]:
        put(key, *_save(image, "AVIF", quality=q, **AVIF_OPTIONS))

    spec = IconSpec(
        name=name, slug=Path(name).stem, url=path.as_uri(), alt=name, settings=EncodeSettings(display=0), line=0
    )
    t = time.perf_counter()
    encoded = enc.encode_icon(SourceIcon(spec=spec, data=data, origin=Origin.LOCAL))
    ms = (time.perf_counter() - t) * 1000
    variants = encoded.variants
    best, png = variants[0], variants[-1]
    webp = next((v for v in variants if v.format == "webp"), None)
    put("pipe_best", best.data, ms, f"{best.format} {best.detail}", reported_ssim=best.ssim)
    if webp is not None:
        put("pipe_webp", webp.data, ms, f"webp {webp.detail}", reported_ssim=webp.ssim)
    else:  # dropped because not smaller than the PNG: a WebP-only browser gets the PNG
        put("pipe_webp", png.data, ms, "dropped: png served", reported_ssim=png.ssim)
    put("pipe_png", png.data, ms, f"png {png.detail}")
    record["pipeline_variants"] = [f"{v.format} {v.detail} {len(v.data)}" for v in variants]

    if use_cwebp:
        for key, args in [
            ("cwebp_q80", ["-q", "80", "-alpha_q", "100", "-m", "4"]),
            ("cwebp_ll", ["-lossless"]),
            ("cwebp_ll_q100", ["-lossless", "-q", "100", "-m", "4"]),
            # near-lossless: not reachable through Pillow's WebP options (Pillow 13)
            ("cwebp_nl60", ["-lossless", "-near_lossless", "60", "-q", "100", "-m", "4"]),
            ("cwebp_nl40", ["-lossless", "-near_lossless", "40", "-q", "100", "-m", "4"]),
            ("cwebp_nl20", ["-lossless", "-near_lossless", "20", "-q", "100", "-m", "4"]),
        ]:
            out, ms, wall = _cwebp(path, args)
            put(key, out, ms, wall_ms=round(wall, 3))

    for key, level in [("oxipng_l2", 2), ("oxipng_l4", 4)]:
        t = time.perf_counter()
        out = oxipng.optimize_from_memory(data, level=level, strip=oxipng.StripChunks.all())
        put(key, out, (time.perf_counter() - t) * 1000)
    if sweep:
        record["sweep"] = sweep_icon(image, best, webp)
    return record


def sweep_icon(image: Image.Image, best, webp) -> dict:
    """Every quality 0..100 of the pipeline's lossy WebP and AVIF settings: [bytes, SSIM, ms] by q,
    so any search range can be replayed offline; and, at the quality the pipeline chose, the
    slower settings its comments rejected (AVIF speed 6, WebP method 6)."""
    out: dict = {}
    for fmt, opts in (("webp", {"alpha_quality": 100, "method": 4}), ("avif", AVIF_OPTIONS)):
        grid = []
        for q in range(101):
            data, ms = _save(image, fmt.upper(), quality=q, **opts)
            grid.append([len(data), quality(image, data), round(ms, 2)])
        out[fmt] = grid
    at_choice = {}
    for variant, fmt, slower in (
        (best, "avif", {**AVIF_OPTIONS, "speed": 6}),
        (webp, "webp", {"alpha_quality": 100, "method": 6}),
    ):
        if variant is not None and variant.format == fmt and variant.detail.startswith("q"):
            q = int(variant.detail[1:])
            data, ms = _save(image, fmt.upper(), quality=q, **slower)
            at_choice[fmt] = {
                "q": q,
                "bytes": len(data),
                "ssim": quality(image, data),
                "ms": round(ms, 2),
                "fast_bytes": out[fmt][q][0],
                "fast_ssim": out[fmt][q][1],
                "fast_ms": out[fmt][q][2],
            }
    out["slower_at_choice"] = at_choice
    return out


# ---- summaries ----------------------------------------------------------------------------------


def summarise(records: list[dict]) -> dict:
    out = {}
    for key, label, _ in STRATEGIES:
        rows = [(r["source_bytes"], r["results"][key]) for r in records if key in r["results"]]
        if not rows:
            continue
        src = sum(s for s, _ in rows)
        dst = sum(x["bytes"] for _, x in rows)
        ssims = [x["ssim"] for _, x in rows]
        per_icon = [x["bytes"] / s for s, x in rows]
        out[key] = {
            "label": label,
            "n": len(rows),
            "source_bytes": src,
            "output_bytes": dst,
            "ratio": dst / src,
            "median_icon_ratio": statistics.median(per_icon),
            "max_icon_ratio": max(per_icon),
            "icons_over_50pct": sum(p > 0.5 for p in per_icon),
            "icons_over_70pct": sum(p > 0.7 for p in per_icon),
            "icons_not_smaller": sum(p >= 1.0 for p in per_icon),
            "mean_ssim": statistics.fmean(ssims),
            "min_ssim": min(ssims),
            "below_floor": sum(s < FLOOR for s in ssims),
            "median_ms": statistics.median(x["ms"] for _, x in rows),
            "p90_ms": float(np.percentile([x["ms"] for _, x in rows], 90)),
            "total_ms": sum(x["ms"] for _, x in rows),
        }
        walls = [x["wall_ms"] for _, x in rows if "wall_ms" in x]
        if walls:
            out[key]["median_wall_ms"] = statistics.median(walls)
    return out


def cwebp_comparison(records: list[dict]) -> list[dict]:
    out = []
    for ours, theirs in CWEBP_PAIRS:
        pairs = [
            (r["results"][ours], r["results"][theirs])
            for r in records
            if ours in r["results"] and theirs in r["results"]
        ]
        if not pairs:
            continue
        ratios = [a["bytes"] / b["bytes"] for a, b in pairs]
        out.append(
            {
                "ours": ours,
                "cwebp": theirs,
                "n": len(pairs),
                "bytes_ratio_total": sum(a["bytes"] for a, _ in pairs) / sum(b["bytes"] for _, b in pairs),
                "bytes_ratio_median": statistics.median(ratios),
                "bytes_ratio_min": min(ratios),
                "bytes_ratio_max": max(ratios),
                "identical_size": sum(a["bytes"] == b["bytes"] for a, b in pairs),
                "ours_median_ms": statistics.median(a["ms"] for a, _ in pairs),
                "cwebp_median_encode_ms": statistics.median(b["ms"] for _, b in pairs),
                "cwebp_median_wall_ms": statistics.median(b["wall_ms"] for _, b in pairs),
                "ours_mean_ssim": statistics.fmean(a["ssim"] for a, _ in pairs),
                "cwebp_mean_ssim": statistics.fmean(b["ssim"] for _, b in pairs),
            }
        )
    return out


NEAR_LOSSLESS = ("cwebp_nl60", "cwebp_nl40", "cwebp_nl20")


def with_near_lossless(records: list[dict]) -> dict | None:
    """What the pipeline would serve with one more WebP candidate: the smallest near-lossless
    encode (cwebp levels 60/40/20) that keeps the SSIM floor, as encode_icon picks among its own."""
    if not records or not all(k in records[0]["results"] for k in NEAR_LOSSLESS):
        return None
    src = best_total = webp_total = 0
    best_over = webp_over = used = 0
    for r in records:
        res = r["results"]
        png = res["pipe_png"]["bytes"]
        near = [res[k]["bytes"] for k in NEAR_LOSSLESS if res[k]["ssim"] >= FLOOR]
        webp = min([res["pipe_webp"]["bytes"], *near])
        used += bool(near) and min(near) < res["pipe_webp"]["bytes"]
        webp = min(webp, png)
        best = min(res["pipe_best"]["bytes"], webp)
        src += r["source_bytes"]
        best_total += best
        webp_total += webp
        best_over += best > 0.5 * r["source_bytes"]
        webp_over += webp > 0.7 * r["source_bytes"]
    return {
        "best_ratio": best_total / src,
        "best_over_50pct": best_over,
        "webp_ratio": webp_total / src,
        "webp_over_70pct": webp_over,
        "near_lossless_chosen": used,
        "n": len(records),
    }


def pipeline_breakdown(records: list[dict]) -> dict:
    kinds: dict[str, int] = {}
    for r in records:
        for slot in ("pipe_best", "pipe_webp"):
            fmt, _, how = r["results"][slot]["detail"].partition(" ")
            kind = f"{slot.split('_')[1]}={fmt} {'lossless' if how == 'lossless' else 'lossy' if how.startswith('q') else how}"
            kinds[kind] = kinds.get(kind, 0) + 1
    webp_q = [
        int(r["results"]["pipe_webp"]["detail"].split(" q")[1])
        for r in records
        if r["results"]["pipe_webp"]["detail"].startswith("webp q")
    ]
    avif_q = [
        int(r["results"]["pipe_best"]["detail"].split(" q")[1])
        for r in records
        if r["results"]["pipe_best"]["detail"].startswith("avif q")
    ]

    def dist(qs: list[int]) -> dict:
        if not qs:
            return {"n": 0}
        return {
            "n": len(qs),
            "min": min(qs),
            "p10": float(np.percentile(qs, 10)),
            "median": statistics.median(qs),
            "p90": float(np.percentile(qs, 90)),
            "max": max(qs),
            "at_range_top": sum(q >= 90 for q in qs),
        }

    return {"choices": dict(sorted(kinds.items())), "webp_lossy_quality": dist(webp_q), "avif_quality": dist(avif_q)}


# ---- what-if replay (--sweep) ----------------------------------------------------------------------

POLICIES = [  # label, WebP range, AVIF range, search
    ("current: bisect W30-98 A30-95", (30, 98), (30, 95), "bisect"),
    ("bisect W20-98 A30-95", (20, 98), (30, 95), "bisect"),
    ("bisect W10-98 A30-95", (10, 98), (30, 95), "bisect"),
    ("bisect W0-98 A30-95", (0, 98), (30, 95), "bisect"),
    ("bisect W0-98 A0-95", (0, 98), (0, 95), "bisect"),
    ("bisect W30-100 A30-100", (30, 100), (30, 100), "bisect"),
    ("exhaustive W30-98 A30-95", (30, 98), (30, 95), "scan"),
    ("exhaustive W0-100 A0-100 (oracle)", (0, 100), (0, 100), "scan"),
]


def _search(grid: list, low: int, high: int, how: str, floor: float) -> tuple[int | None, int]:
    """(bytes of the chosen lossy candidate or None, encodes made), replaying pipeline.encode.choose."""
    if how == "scan":
        passing = [grid[q][0] for q in range(low, high + 1) if grid[q][1] >= floor]
        return (min(passing) if passing else None), high - low + 1
    best, encodes = None, 0
    while low <= high:
        q = (low + high) // 2
        encodes += 1
        size, score = grid[q][0], grid[q][1]
        if score >= floor:
            best = size if best is None else min(best, size)
            high = q - 1
        else:
            low = q + 1
    return best, encodes


def replay(record: dict, webp_range, avif_range, how: str) -> dict:
    r, sw = record["results"], record["sweep"]
    lossless = r["webp_ll_m4"]["bytes"]
    if record["colors_le_256"]:
        lossless = min(lossless, r["webp_ll_m6"]["bytes"])
    lossy, n_webp = _search(sw["webp"], *webp_range, how, FLOOR)
    webp = lossless if lossy is None else min(lossless, lossy)
    avif, n_avif = _search(sw["avif"], *avif_range, how, FLOOR)
    png = r["pipe_png"]["bytes"]
    kept = [b for b in ([avif] if avif is not None and avif < webp else []) + [webp] if b < png]
    return {"best": (kept or [png])[0], "webp": webp if webp < png else png, "encodes": n_webp + n_avif}


def sweep_report(records: list[dict]) -> dict | None:
    records = [r for r in records if "sweep" in r]
    if not records:
        return None
    src = sum(r["source_bytes"] for r in records)
    current = [replay(r, (30, 98), (30, 95), "bisect") for r in records]
    out: dict = {
        "n": len(records),
        # the replay must reproduce encode_icon byte for byte, or the what-ifs mean nothing
        "replay_matches_pipeline": sum(
            c["best"] == r["results"]["pipe_best"]["bytes"] and c["webp"] == r["results"]["pipe_webp"]["bytes"]
            for c, r in zip(current, records)
        ),
        "policies": [],
    }
    if (enc.WEBP_QUALITIES, enc.AVIF_QUALITIES) != ((30, 98), (30, 95)):
        out["note"] = (
            f"pipeline ranges are now {enc.WEBP_QUALITIES} / {enc.AVIF_QUALITIES}; 'current' replays (30, 98) / (30, 95)"
        )
    for label, wr, ar, how in POLICIES:
        runs = [replay(r, wr, ar, how) for r in records]
        out["policies"].append(
            {
                "label": label,
                "webp_range": wr,
                "avif_range": ar,
                "search": how,
                "best_ratio": sum(x["best"] for x in runs) / src,
                "webp_ratio": sum(x["webp"] for x in runs) / src,
                "best_over_50pct": sum(x["best"] > 0.5 * r["source_bytes"] for x, r in zip(runs, records)),
                "webp_over_70pct": sum(x["webp"] > 0.7 * r["source_bytes"] for x, r in zip(runs, records)),
                "lossy_encodes_per_icon": statistics.fmean(x["encodes"] for x in runs),
            }
        )
    for fmt in ("webp", "avif"):
        grids = [r["sweep"][fmt] for r in records]
        passing = [[q for q in range(101) if g[q][1] >= FLOOR] for g in grids]
        out[f"{fmt}_grid"] = {
            "never_passes_q0_100": sum(not p for p in passing),
            "never_passes_below_q99": sum(not [q for q in p if q <= 98] for p in passing),
            # SSIM not monotone in q: some q passes while a higher q fails
            "non_monotone": sum(bool(p) and p != list(range(p[0], 101)) for p in passing),
            "passes_at_q0": sum(bool(p) and p[0] == 0 for p in passing),
            "lowest_passing_q": dict(
                zip(
                    ("p10", "median", "p90"),
                    (
                        np.percentile([p[0] for p in passing if p], [10, 50, 90]).tolist()
                        if any(passing)
                        else [None] * 3
                    ),
                )
            ),
            "median_encode_ms": statistics.median(g[q][2] for g in grids for q in range(101)),
        }
    for fmt, label in (("avif", "AVIF speed 6 vs 8"), ("webp", "WebP lossy method 6 vs 4")):
        rows = [r["sweep"]["slower_at_choice"][fmt] for r in records if fmt in r["sweep"]["slower_at_choice"]]
        if rows:
            out[f"slower_{fmt}"] = {
                "label": label,
                "n": len(rows),
                "bytes_ratio_slow_over_fast": sum(x["bytes"] for x in rows) / sum(x["fast_bytes"] for x in rows),
                "median_ms_slow": statistics.median(x["ms"] for x in rows),
                "median_ms_fast": statistics.median(x["fast_ms"] for x in rows),
                "slow_below_floor": sum(x["ssim"] < FLOOR for x in rows),
            }
    return out


def print_sweep(rep: dict) -> None:
    print(
        f"  what-if replay over the full q grid ({rep['n']} icons; replay reproduces encode_icon on "
        f"{rep['replay_matches_pipeline']}/{rep['n']}){' - ' + rep['note'] if 'note' in rep else ''}:"
    )
    print(f"    {'policy':<36} {'best':>6} {'>50%':>5} {'WebP':>6} {'>70%':>5} {'lossy encodes':>13}")
    for p in rep["policies"]:
        print(
            f"    {p['label']:<36} {p['best_ratio']:>6.1%} {p['best_over_50pct']:>5} {p['webp_ratio']:>6.1%} "
            f"{p['webp_over_70pct']:>5} {p['lossy_encodes_per_icon']:>13.1f}"
        )
    for fmt in ("webp", "avif"):
        g = rep[f"{fmt}_grid"]
        lp = g["lowest_passing_q"]
        print(
            f"    {fmt} lossy grid: never >= {FLOOR} at any q: {g['never_passes_q0_100']} (at q<=98: "
            f"{g['never_passes_below_q99']}); passes at q0: {g['passes_at_q0']}; non-monotone in q: "
            f"{g['non_monotone']}; lowest passing q p10/median/p90 "
            f"{'/'.join('-' if lp[k] is None else f'{lp[k]:.0f}' for k in ('p10', 'median', 'p90'))}; "
            f"median encode {g['median_encode_ms']:.1f} ms"
        )
    for fmt in ("avif", "webp"):
        x = rep.get(f"slower_{fmt}")
        if x:
            print(
                f"    {x['label']} at the chosen q ({x['n']} icons): bytes {x['bytes_ratio_slow_over_fast']:.3f}x, "
                f"{x['median_ms_slow']:.1f} vs {x['median_ms_fast']:.1f} ms, below floor after the switch: "
                f"{x['slow_below_floor']}"
            )


# ---- charts -------------------------------------------------------------------------------------

# The rows drawn (one colour each): what the peers do, plain encodes, and the pipeline's choice.
CHART_STRATEGIES = {
    "cwebp_q80": "cwebp -q80 (peers)",
    "webp_q80": "WebP q80",
    "avif_q50": "AVIF q50",
    "webp_ll_m4": "WebP lossless",
    "oxipng_l2": "oxipng -o2",
    "pipe_best": "ours: best",
    "pipe_webp": "ours: WebP",
    "pipe_png": "ours: PNG",
}


def write_charts(results: dict, folder: Path) -> list[Path]:
    """Per corpus, a scatter of output bytes (share of the source) against the worst SSIM of any
    icon, one dot per strategy, the floor as a dashed line: a strategy below it broke an icon."""
    written = []
    for name, corpus in results["corpora"].items():
        if "/" in name:  # the per-set splits (npm/google, ...) are drawn together in the npm chart
            continue
        summary = corpus.get("summary") or {}
        series = [
            charts.Series(
                f"{label} ({summary[key]['below_floor']})",
                ((100 * summary[key]["ratio"], summary[key]["min_ssim"]),),
                radius=8 - 0.6 * i,  # dots that coincide show as rings (each has a white edge)
            )
            for i, (key, label) in enumerate(CHART_STRATEGIES.items())
            if key in summary
        ]
        if not series:
            continue
        right = max(s.points[0][0] for s in series)
        series.append(charts.Series(f"floor {FLOOR}", ((0.0, FLOOR), (right, FLOOR)), dashed=True, colour="#888888"))
        path = folder / f"encode_settings_{name}.svg"
        svg = charts.line_chart(
            f"Bytes against the worst SSIM: {name} corpus, {corpus['n']} icons",
            charts.Axis("output bytes, % of the source PNG"),
            charts.Axis("lowest SSIM of any icon", zero=False),
            series,
            note=f"(n): icons below the SSIM floor of {FLOOR}; load {results['load_average_1_5_15']['before'][0]:.1f}",
        )
        charts.write(path, svg)
        written.append(path)
    return written


# ---- printing -----------------------------------------------------------------------------------


def print_table(title: str, summary: dict) -> None:
    head = (
        f"{'strategy':<28} {'n':>4} {'src KB':>8} {'out KB':>8} {'out/src':>7} {'>50%':>5} {'>70%':>5} "
        f"{'mean SSIM':>9} {'min SSIM':>8} {'<0.98':>5} {'med ms':>7}"
    )
    print(f"\n== {title} ==")
    print(head)
    print("-" * len(head))
    group = None
    for key, label, g in STRATEGIES:
        if key not in summary:
            continue
        if group is not None and g != group:
            print()
        group = g
        s = summary[key]
        ms = f"{s['median_ms']:7.1f}" if key in ("pipe_best",) or not key.startswith("pipe") else "      ·"
        print(
            f"{label:<28} {s['n']:>4} {s['source_bytes'] / 1000:>8.1f} {s['output_bytes'] / 1000:>8.1f} "
            f"{s['ratio']:>7.1%} {s['icons_over_50pct']:>5} {s['icons_over_70pct']:>5} {s['mean_ssim']:>9.4f} "
            f"{s['min_ssim']:>8.4f} {s['below_floor']:>5} {ms}"
        )


def print_extras(summary: dict, cw: list[dict], breakdown: dict, near: dict | None) -> None:
    if cw:
        print(
            "  Pillow vs cwebp (same files; bytes ours/cwebp; ms = encode only, cwebp's own -v timer, 1 ms resolution):"
        )
        for c in cw:
            print(
                f"    {LABELS[c['ours']]:<18} / {LABELS[c['cwebp']]:<26} total {c['bytes_ratio_total']:.3f}  "
                f"median {c['bytes_ratio_median']:.3f} [{c['bytes_ratio_min']:.3f}..{c['bytes_ratio_max']:.3f}]  "
                f"same size {c['identical_size']}/{c['n']}  ms {c['ours_median_ms']:.1f} vs {c['cwebp_median_encode_ms']:.1f} "
                f"(cwebp process wall {c['cwebp_median_wall_ms']:.1f})"
            )
    print("  pipeline choices: " + ", ".join(f"{k}: {v}" for k, v in breakdown["choices"].items()))
    for fmt in ("webp_lossy_quality", "avif_quality"):
        d = breakdown[fmt]
        if d["n"]:
            print(
                f"  {fmt}: n={d['n']} min {d['min']} p10 {d['p10']:.0f} median {d['median']:.0f} p90 {d['p90']:.0f} "
                f"max {d['max']} (>=90: {d['at_range_top']})"
            )
    if "pipe_best" in summary:
        b, w, p = summary["pipe_best"], summary["pipe_webp"], summary["pipe_png"]
        print(
            f"  pipeline encode_icon (decode + all candidates): median {b['median_ms']:.0f} ms, p90 {b['p90_ms']:.0f} ms per icon"
        )
        checks = [
            (
                f"best <= 50% of source bytes: {b['ratio']:.1%} total, {b['icons_over_50pct']} icons over 50%",
                b["ratio"] <= 0.5,
            ),
            (
                f"WebP <= 70% of source bytes: {w['ratio']:.1%} total, {w['icons_over_70pct']} icons over 70%",
                w["ratio"] <= 0.7,
            ),
            (
                f"no icon below SSIM {FLOOR}: best {b['below_floor']}, WebP {w['below_floor']}, PNG {p['below_floor']}",
                b["below_floor"] == w["below_floor"] == p["below_floor"] == 0,
            ),
        ]
        for text, ok in checks:
            print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    if near:
        print(
            f"  what-if, + a near-lossless WebP candidate (smallest of cwebp NL 60/40/20 keeping the floor; chosen "
            f"for {near['near_lossless_chosen']}/{near['n']} icons): best {near['best_ratio']:.1%} "
            f"({near['best_over_50pct']} over 50%), WebP {near['webp_ratio']:.1%} ({near['webp_over_70pct']} over 70%)"
        )


# ---- main ---------------------------------------------------------------------------------------


def environment(use_cwebp: bool) -> dict:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    encode_py = (ROOT / "pipeline" / "encode.py").read_bytes()
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pillow": Image.__version__,
        "libwebp": features.version("webp"),
        "libavif": features.version("avif"),
        "pyoxipng": version("pyoxipng"),
        "numpy": np.__version__,
        "cwebp": subprocess.run(["cwebp", "-version"], capture_output=True, text=True).stdout.strip()
        if use_cwebp
        else None,
        "git_head": git("rev-parse", "HEAD"),
        "encode_py_sha256": hashlib.sha256(encode_py).hexdigest(),
        "encode_py_modified": bool(git("status", "--porcelain", "pipeline/encode.py")),
        "encoder_version": enc.ENCODER_VERSION,
        "encode_settings": asdict(EncodeSettings()),
        "webp_qualities": list(enc.WEBP_QUALITIES),
        "avif_qualities": list(enc.AVIF_QUALITIES),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corpus",
        choices=("auto", "default", "npm"),
        default=None,
        help="default: icons/ only; npm: icons/ + the npm emoji sample; auto (the default "
        "without --quick): npm when npm works",
    )
    parser.add_argument("--quick", action="store_true", help="icons/ only unless --corpus npm is given")
    parser.add_argument("--limit", type=int, default=400, help="npm icons to sample, half per set (0 = all)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--no-cwebp", action="store_true", help="skip the cwebp rows")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also encode every quality 0..100 (WebP, AVIF) per icon and replay other search "
        "ranges and slower settings offline (~2 s more per icon per core)",
    )
    parser.add_argument(
        "--sweep-limit",
        type=int,
        default=200,
        help="npm icons to sweep, half per set, the first of the sample (0 = all sampled)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    corpus = args.corpus or ("default" if args.quick else "auto")
    use_cwebp = not args.no_cwebp and shutil.which("cwebp") is not None
    if not use_cwebp and not args.no_cwebp:
        print("cwebp not found: its rows are skipped", file=sys.stderr)

    started = time.perf_counter()
    load_before = os.getloadavg()
    corpora: dict[str, list[tuple[str, str, Path]]] = {"default": default_corpus()}
    npm_meta = None
    if corpus in ("auto", "npm"):
        try:
            if corpus == "auto" and not npm_available():
                raise RuntimeError("npm not found")
            items, npm_meta = npm_corpus(args.limit)
            corpora["npm"] = items
        except (RuntimeError, OSError, subprocess.SubprocessError, json.JSONDecodeError, tarfile.TarError) as error:
            if corpus == "npm":
                print(f"npm corpus unavailable: {error}", file=sys.stderr)
                return 2
            print(f"npm corpus skipped: {error}", file=sys.stderr)
    fetched = time.perf_counter()

    # --sweep covers every default icon and the first --sweep-limit npm icons (the sample order is
    # already a hash order, so the first k of each set is itself a deterministic random sample)
    per_set: dict[str, int] = {}
    tasks = []
    for items in corpora.values():
        for s, n, p in items:
            k = per_set[s] = per_set.get(s, 0) + 1
            swept = args.sweep and (
                s == "default" or args.sweep_limit <= 0 or k <= args.sweep_limit // len(NPM_PACKAGES)
            )
            tasks.append((s, n, str(p), use_cwebp, swept))
    records: list[dict] = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for i, record in enumerate(pool.map(measure, tasks, chunksize=4), 1):
            records.append(record)
            if i % 100 == 0:
                print(f"  {i}/{len(tasks)} icons", file=sys.stderr, flush=True)
    measured = time.perf_counter()

    results: dict = {
        "environment": environment(use_cwebp),
        "floor": FLOOR,
        "jobs": args.jobs,
        "npm": npm_meta,
        "corpora": {},
    }
    by_corpus = {
        "default": [r for r in records if r["set"] == "default"],
        "npm": [r for r in records if r["set"] != "default"],
    }
    by_corpus.update({f"npm/{s}": [r for r in records if r["set"] == s] for s in NPM_PACKAGES})
    for name, recs in by_corpus.items():
        if not recs:
            continue
        summary = summarise(recs)
        near = with_near_lossless(recs)
        cw = cwebp_comparison(recs)
        breakdown = pipeline_breakdown(recs)
        results["corpora"][name] = {
            "n": len(recs),
            "summary": summary,
            "cwebp_vs_pillow": cw,
            "pipeline": breakdown,
            "near_lossless_whatif": near,
            "icons": recs if "/" not in name else None,
        }
        title = f"{name}: {len(recs)} icons"
        if name == "npm" and npm_meta:
            title += (
                " (sample of " + ", ".join(f"{s} {m['sampled']}/{m['available']}" for s, m in npm_meta.items()) + ")"
            )
        print_table(title, summary)
        print_extras(summary, cw, breakdown, near)
        sweep = sweep_report(recs)
        if sweep:
            results["corpora"][name]["sweep"] = sweep
            print_sweep(sweep)

    env = results["environment"]
    results["load_average_1_5_15"] = {"before": load_before, "after": os.getloadavg()}
    results["seconds"] = {
        "fetch": round(fetched - started, 2),
        "measure": round(measured - fetched, 2),
        "total": round(time.perf_counter() - started, 2),
    }
    print(
        f"\nPillow {env['pillow']} (libwebp {env['libwebp']}, libavif {env['libavif']}), "
        f"cwebp {env['cwebp'] or 'not used'}, pyoxipng {env['pyoxipng']}; "
        f"encode.py {env['encode_py_sha256'][:12]}{' (modified)' if env['encode_py_modified'] else ''}; "
        f"{args.jobs} workers on {env['cpus']} cpus; load average before {load_before[0]:.1f}, "
        f"after {os.getloadavg()[0]:.1f} (times are only comparable on an idle machine)"
    )
    print(
        "ms: median per icon, one encode, pixels already decoded; pipeline rows share one encode_icon call "
        "(decode included), shown once. >50%/>70%: icons whose output exceeds that share of their source."
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    # charts beside the JSON; those of a run with the default --output go to bench/figures/ (committed)
    shown = write_charts(results, FIGURES if args.output.resolve() == RESULTS else args.output.resolve().parent)
    print(
        f"wrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output} "
        f"and {', '.join(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p) for p in shown)} "
        f"in {results['seconds']['total']:.1f} s (fetch {results['seconds']['fetch']:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
