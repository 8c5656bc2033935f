"""The pipeline's per-icon encoding against sharp's defaults (what eleventy-img and Astro ship).

Same files as bench/encode_settings.py (its own sampling: the icons in icons/*.png and the
deterministic --limit sample of the npm emoji corpus in bench/.cache/, fetched there with `npm
pack` if missing), encoded twice:

  sharp     bench/sharp_peer.mjs: sharp's .webp() and .avif() with no options, as eleventy-img and
            Astro call them (WebP quality 80, alphaQuality 100, effort 4, 4:2:0; AVIF quality 50,
            effort 4, 4:4:4), one file after another with --threads libvips threads (default 1:
            the pipeline encodes each icon on one thread too)
  pipeline  pipeline.encode.encode_icon on each file (its first variant, what a modern browser
            gets, and its WebP variant, what a WebP-only browser gets: where the WebP was dropped
            because it was not smaller than the PNG, the PNG it gets instead), in --jobs processes

Every output is decoded with Pillow and scored with pipeline.encode.ssim against the pipeline's
own decode of the source (composited over black and over white, the worse of the two), so both
sides are judged by the same yardstick. Printed per corpus: bytes against the source PNGs, mean
and minimum SSIM, icons below the pipeline's 0.98 floor, median ms per icon; then each default
icon side by side.

Times: sharp's ms is one encode (decode included) measured inside node; the pipeline's is the
whole encode_icon call (decode, the lossless and lossy searches with an SSIM per probe, AVIF and
the oxipng PNG fallback), so it covers every variant and is not one encode.

Set-up, once: cd bench && npm install --no-package-lock --no-audit --no-fund   (sharp, pinned in
bench/package.json; node_modules/ is not committed)

Usage (2 cores): python bench/sharp_compare.py              # 11 + 400 icons, about a minute
                 python bench/sharp_compare.py --quick      # the 11 default icons only
Writes bench/results/sharp_compare.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import encode_settings as sampling  # noqa: E402  (the corpus, its sampling, quality(); nothing runs on import)

from pipeline import encode as enc  # noqa: E402
from pipeline.model import EncodeSettings, IconSpec, Origin, SourceIcon  # noqa: E402

PEER = HERE / "sharp_peer.mjs"
RESULTS = HERE / "results" / "sharp_compare.json"
FLOOR = EncodeSettings().ssim_floor
ROWS = [  # key, label; paired: the rows a browser of each kind would get
    ("sharp_webp", "sharp WebP (default q80)"),
    ("pipe_webp", "pipeline WebP (per icon)"),
    ("sharp_avif", "sharp AVIF (default q50)"),
    ("pipe_best", "pipeline best (AVIF/WebP/PNG)"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the default icons only, no npm corpus")
    parser.add_argument(
        "--limit", type=int, default=400, help="npm icons to sample, half per set, as encode_settings.py (0 = all)"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="pipeline encode processes")
    parser.add_argument(
        "--threads", type=int, default=1, help="sharp.concurrency, libvips threads per image (0 = sharp's default)"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds sharp_peer.mjs may take")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    if shutil.which("node") is None:
        print("sharp_compare: node is not installed", file=sys.stderr)
        return 69
    if not (HERE / "node_modules" / "sharp").is_dir():
        print(
            "sharp_compare: sharp is not installed; run: cd bench && npm install --no-package-lock --no-audit --no-fund",
            file=sys.stderr,
        )
        return 69

    started = time.perf_counter()
    items = sampling.default_corpus()
    npm_meta = None
    if not args.quick:
        try:
            npm_items, npm_meta = sampling.npm_corpus(args.limit)
            items += npm_items
        except (RuntimeError, OSError, subprocess.SubprocessError, json.JSONDecodeError) as error:
            print(f"npm corpus skipped: {error}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="sharp-compare-") as tmp:
        listing = Path(tmp) / "files.json"
        listing.write_text(json.dumps([str(p) for _, _, p in items]))
        t = time.perf_counter()
        done = subprocess.run(
            ["node", str(PEER), str(listing), "--out", str(Path(tmp) / "out"), "--threads", str(args.threads)],
            capture_output=True,
            text=True,
            timeout=args.timeout,
            cwd=HERE,
        )
        sharp_seconds = time.perf_counter() - t
        if done.returncode != 0:
            print(
                f"sharp_compare: sharp_peer.mjs failed ({done.returncode}): {done.stderr.strip()[-1000:]}",
                file=sys.stderr,
            )
            return 70
        peer = json.loads(done.stdout)
        tasks = [
            (
                s,
                n,
                str(p),
                peer_file["webp"]["out"],
                peer_file["avif"]["out"],
                peer_file["webp"]["ms"],
                peer_file["avif"]["ms"],
            )
            for (s, n, p), peer_file in zip(items, peer["files"], strict=True)
        ]
        t = time.perf_counter()
        with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            records = list(pool.map(measure, tasks, chunksize=4))
        pipeline_seconds = time.perf_counter() - t

    corpora = {
        "default": [r for r in records if r["set"] == "default"],
        "npm": [r for r in records if r["set"] != "default"],
    }
    corpora = {name: rs for name, rs in corpora.items() if rs}
    if len(corpora) > 1:
        corpora["all"] = records
    summaries = {name: summarise(rs) for name, rs in corpora.items()}

    versions = {
        "sharp": peer["sharp"],
        "libvips": peer["versions"].get("vips"),
        "libwebp": peer["versions"].get("webp"),
        "libaom": peer["versions"].get("aom"),
        "libheif": peer["versions"].get("heif"),
        "node": peer["node"],
        "pillow": importlib.metadata.version("pillow"),
        "pipeline_encoder": enc.ENCODER_VERSION,
        "pipeline_libraries": enc.LIBRARY_VERSIONS,
    }
    print(
        f"sharp {versions['sharp']} (libvips {versions['libvips']}, libwebp {versions['libwebp']}, libaom {versions['libaom']}), "
        f"{peer['concurrency']} thread(s), node {versions['node']}; pipeline {enc.ENCODER_VERSION} "
        f"(Pillow {versions['pillow']}), {args.jobs} process(es); SSIM: pipeline.encode.ssim, floor {FLOOR}"
    )
    print(f"sharp settings: WebP {peer['settings']['webp']}; AVIF {peer['settings']['avif']}")
    for name, summary in summaries.items():
        print_summary(name, summary)
    print_default_icons(corpora.get("default", []))
    total = time.perf_counter() - started
    print(
        f"\nsharp {sharp_seconds:.1f}s for {len(records)} files (node start included), pipeline {pipeline_seconds:.1f}s "
        f"with {args.jobs} process(es); total {total:.1f}s"
    )

    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": versions,
        "sharp_settings": peer["settings"],
        "sharp_concurrency": peer["concurrency"],
        "jobs": args.jobs,
        "floor": FLOOR,
        "npm": npm_meta,
        "summaries": summaries,
        "seconds": {"sharp": round(sharp_seconds, 2), "pipeline": round(pipeline_seconds, 2), "total": round(total, 2)},
        "icons": records,
    }
    args.output.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"-> {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    return 0


def measure(task: tuple[str, str, str, str, str, float, float]) -> dict:
    emoji_set, name, path_str, sharp_webp, sharp_avif, webp_ms, avif_ms = task
    data = Path(path_str).read_bytes()
    reference = enc.decode(data, name)
    out: dict = {"set": emoji_set, "name": name, "source_bytes": len(data), "results": {}}
    for key, file, ms in (("sharp_webp", sharp_webp, webp_ms), ("sharp_avif", sharp_avif, avif_ms)):
        encoded = Path(file).read_bytes()
        out["results"][key] = {"bytes": len(encoded), "ssim": sampling.quality(reference, encoded), "ms": ms}
    spec = IconSpec(
        name=name,
        slug=Path(name).stem,
        url=Path(path_str).resolve().as_uri(),
        alt=name,
        settings=EncodeSettings(display=0),
        line=0,
    )  # at source size, as the peer
    t = time.perf_counter()
    icon = enc.encode_icon(SourceIcon(spec=spec, data=data, origin=Origin.LOCAL))
    ms = (time.perf_counter() - t) * 1000
    best, png = icon.variants[0], icon.variants[-1]
    webp = next((v for v in icon.variants if v.format == "webp"), png)
    for key, variant in (("pipe_best", best), ("pipe_webp", webp)):
        out["results"][key] = {
            "bytes": len(variant.data),
            "ssim": sampling.quality(reference, variant.data),
            "ms": round(ms, 3),
            "detail": f"{variant.format} {variant.detail}",
        }
    return out


def summarise(records: list[dict]) -> dict:
    out = {}
    source = sum(r["source_bytes"] for r in records)
    for key, label in ROWS:
        rows = [r["results"][key] for r in records]
        ssims = [x["ssim"] for x in rows]
        output = sum(x["bytes"] for x in rows)
        out[key] = {
            "label": label,
            "n": len(rows),
            "source_bytes": source,
            "output_bytes": output,
            "ratio": output / source,
            "mean_ssim": statistics.fmean(ssims),
            "min_ssim": min(ssims),
            "below_floor": sum(s < FLOOR for s in ssims),
            "median_ms": statistics.median(x["ms"] for x in rows),
        }
        if key.startswith("pipe"):
            formats: dict[str, int] = {}
            for x in rows:
                formats[x["detail"].split()[0]] = formats.get(x["detail"].split()[0], 0) + 1
            out[key]["formats"] = formats
    smaller = {
        pair: sum(r["results"][a]["bytes"] < r["results"][b]["bytes"] for r in records)
        for pair, (a, b) in {
            "pipe_webp<sharp_webp": ("pipe_webp", "sharp_webp"),
            "pipe_best<sharp_avif": ("pipe_best", "sharp_avif"),
        }.items()
    }
    out["_pairs"] = {
        "icons": len(records),
        "pipeline_smaller": smaller,
        "bytes_pipe_webp/sharp_webp": out["pipe_webp"]["output_bytes"] / out["sharp_webp"]["output_bytes"],
        "bytes_pipe_best/sharp_avif": out["pipe_best"]["output_bytes"] / out["sharp_avif"]["output_bytes"],
    }
    return out


def print_summary(name: str, summary: dict) -> None:
    pairs = summary["_pairs"]
    print(f"\n{name}: {pairs['icons']} icons, source PNGs {summary['sharp_webp']['source_bytes']:,} bytes")
    print(
        f"  {'encoder':32} {'bytes':>10} {'of src':>7} {'mean SSIM':>10} {'min SSIM':>9} {'<0.98':>6} {'median ms':>10}"
    )
    for key, _ in ROWS:
        row = summary[key]
        print(
            f"  {row['label']:32} {row['output_bytes']:>10,} {row['ratio']:>7.1%} {row['mean_ssim']:>10.4f} "
            f"{row['min_ssim']:>9.4f} {row['below_floor']:>6} {row['median_ms']:>10.1f}"
        )
    best = summary["pipe_best"]["formats"]
    print(
        f"  pipeline WebP / sharp WebP bytes {pairs['bytes_pipe_webp/sharp_webp']:.2f} (smaller on "
        f"{pairs['pipeline_smaller']['pipe_webp<sharp_webp']}/{pairs['icons']}); pipeline best / sharp AVIF bytes "
        f"{pairs['bytes_pipe_best/sharp_avif']:.2f} (smaller on {pairs['pipeline_smaller']['pipe_best<sharp_avif']}/{pairs['icons']}); "
        f"pipeline best is {', '.join(f'{k} {v}' for k, v in sorted(best.items()))}"
    )


def print_default_icons(records: list[dict]) -> None:
    if not records:
        return
    print("\ndefault icons, bytes (SSIM):")
    print(
        f"  {'icon':36} {'source':>7} {'sharp WebP':>17} {'pipeline WebP':>25} {'sharp AVIF':>17} {'pipeline best':>25}"
    )
    for r in records:
        res = r["results"]

        def cell(key: str, width: int, detail: bool = False) -> str:
            x = res[key]
            text = (f"{x['detail']} " if detail else "") + f"{x['bytes']:,} ({x['ssim']:.3f})"
            return f"{text:>{width}}"

        print(
            f"  {r['name'][:36]:36} {r['source_bytes']:>7,} {cell('sharp_webp', 17)} {cell('pipe_webp', 25, True)} "
            f"{cell('sharp_avif', 17)} {cell('pipe_best', 25, True)}"
        )


if __name__ == "__main__":
    sys.exit(main())
