"""The cost of the per-icon encoding search: today's encoder against the one before issue 14.

Both encoders run in this process, on the same corpus, one after the other per icon (their order
alternates from icon to icon), single-threaded; CPU is time.process_time() around encode_icon, as
the build calls it (SourceIcon with the site's default [encode] settings: display 40, densities
1, 2, 3, floor 0.98). The baseline is pipeline/encode.py as of BASELINE, read with `git show` and
loaded as the module pipeline._encode_baseline (it imports .errors and .model relatively).

Printed and written to bench/results/search_cost.json (or --output):
  CPU per icon, median and total, baseline vs now, and the ratio;
  bytes per format served (AVIF, WebP, PNG; and the first <source>, what a modern browser loads),
    total over the corpus, baseline vs now;
  SSIM of every served file against the source resized to its size (pipeline.encode.ssim, pinned
    to scikit-image by tests/test_oracles.py): the minimum and the files below the floor;
  a fixed-quality peer: one WebP q80 method 4 encode per density (Pillow's equivalent of cwebp
    -q 80, sharp's default), its CPU against our whole encode and against our lossy WebP search
    alone (the median of the per-icon ratios), and the icons where q80 breaks the floor.

Corpora: the 11 default icons (icons/), a deterministic sample of the 64 px emoji of
emoji-datasource-google/-twitter (bench/encode_settings.npm_corpus: fetched once with npm into
bench/.cache/), and with --oxygen N the first N 256 px Oxygen icons of bench/.cache/oxygen-256
(bench/weak_spot.py fetches them).

    python bench/search_cost.py              # 100 emoji + 11 default icons, ~1.5 min (2 cores, load 10)
    python bench/search_cost.py --quick      # 20 emoji + 11 default icons, ~40 s
    python bench/search_cost.py --oxygen 25  # + 25 Oxygen icons at 256 px: ~2.5 min in all

Needs only the package (no pytest, no scikit-image) and git, for the baseline.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the repo's pipeline, even when it is not installed
sys.path.insert(0, str(HERE))

from encode_settings import npm_corpus  # noqa: E402

from pipeline import encode as enc  # noqa: E402
from pipeline.model import EncodedIcon, EncodeSettings, IconSpec, Origin, SourceIcon  # noqa: E402

BASELINE = "f5f9e7e"  # the last commit before issue 14's search
RESULTS = HERE / "results" / "search_cost.json"
OXYGEN = HERE / ".cache" / "oxygen-256"
SETTINGS = EncodeSettings()  # the site's defaults, as site.toml documents them
FORMATS = ("avif", "webp", "png")


def load_baseline(commit: str = BASELINE) -> ModuleType:
    """pipeline/encode.py as of `commit`, imported as pipeline._encode_baseline beside today's."""
    source = subprocess.run(
        ["git", "show", f"{commit}:pipeline/encode.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    spec = importlib.util.spec_from_loader("pipeline._encode_baseline", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "pipeline"
    sys.modules[spec.name] = module
    exec(compile(source, f"{commit}:pipeline/encode.py", "exec"), module.__dict__)
    return module


# ---- corpora ------------------------------------------------------------------------------------


def corpus(emoji: int, oxygen: int) -> list[tuple[str, Path]]:
    items = [("default", p) for p in sorted((ROOT / "icons").glob("*.png"))]
    if emoji:
        items += [(emoji_set, path) for emoji_set, _, path in npm_corpus(emoji)[0]]
    if oxygen:
        found = sorted(OXYGEN.glob("*.png"))
        if not found:
            sys.exit(f"--oxygen {oxygen}: no icons in {OXYGEN} (python bench/weak_spot.py fetches them)")
        items += [("oxygen", p) for p in found[:oxygen]]
    return items


# ---- one icon -----------------------------------------------------------------------------------


class SearchClock:
    """CPU spent inside module functions (the lossy searches), by a label chosen from each one's
    arguments: wraps module.NAME for each NAME in `labels` for the whole run."""

    def __init__(self, module: ModuleType, labels: dict[str, Callable[..., str | None]]) -> None:
        self.spent: Counter[str] = Counter()
        for name, label in labels.items():
            self._wrap(module, name, label)

    def _wrap(self, module: ModuleType, name: str, label: Callable[..., str | None]) -> None:
        inner = getattr(module, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                if (which := label(*args, **kwargs)) is not None:
                    self.spent[which] += time.process_time() - start

        setattr(module, name, timed)

    def take(self) -> dict[str, float]:
        out = dict(self.spent)
        self.spent.clear()
        return out


def run(module: ModuleType, data: bytes, name: str, clock: SearchClock) -> tuple[EncodedIcon, float, dict[str, float]]:
    spec = IconSpec(name, "icon", f"file:{name}", name, SETTINGS, 1)
    clock.take()
    start = time.process_time()
    encoded: EncodedIcon = module.encode_icon(SourceIcon(spec, data, Origin.LOCAL))
    return encoded, time.process_time() - start, clock.take()


def check(encoded: EncodedIcon, reference: Image.Image) -> list[float]:
    """SSIM of every served file against the source resized to its size, by today's ssim()."""
    scores = []
    for rendition in encoded.renditions:
        resized = enc.resize(reference, (rendition.width, rendition.height))
        scorer = enc.Scorer.of(resized)
        scores += [scorer.data(v.data) for v in rendition.variants]
    return scores


def fixed_q80(reference: Image.Image, encoded: EncodedIcon) -> tuple[float, float]:
    """CPU of one WebP q80 m4 encode per density (the peer's whole job) and its worst SSIM."""
    cpu, worst = 0.0, 1.0
    for rendition in encoded.renditions:
        resized = enc.resize(reference, (rendition.width, rendition.height))
        start = time.process_time()
        buffer = io.BytesIO()
        resized.save(buffer, "WEBP", quality=80, alpha_quality=100, method=4)
        cpu += time.process_time() - start
        worst = min(worst, enc.ssim(resized, Image.open(io.BytesIO(buffer.getvalue()))))
    return cpu, worst


def served_bytes(encoded: EncodedIcon) -> dict[str, int]:
    out = Counter({f: 0 for f in (*FORMATS, "first")})
    for rendition in encoded.renditions:
        for variant in rendition.variants:
            out[variant.format] += len(variant.data)
        out["first"] += len(rendition.variants[0].data)
    return dict(out)


def search_labels(module: ModuleType) -> dict[str, Callable[..., str | None]]:
    """The lossy searches of an encoder version, each labelled with its format: choose() (version
    3, its lossless files included), search() (WebP and AVIF in version 4, AVIF from version 5,
    told apart by their quality ranges) and interpolate() (WebP from version 5)."""
    labels: dict[str, Callable[..., str | None]] = {
        "choose": lambda image, settings, make: make.__name__.split("_")[0],
        "search": lambda *a, **k: "webp" if a[2] == module.WEBP_QUALITIES else "avif",
        "interpolate": lambda *a, **k: "webp",
    }
    return {name: label for name, label in labels.items() if hasattr(module, name)}


def measure(items: list[tuple[str, Path]], old: ModuleType) -> list[dict[str, Any]]:
    clocks = {"old": SearchClock(old, search_labels(old)), "new": SearchClock(enc, search_labels(enc))}
    records = []
    for i, (group, path) in enumerate(items):
        data = path.read_bytes()
        reference = enc.decode(data, path.name)
        order = ("old", "new") if i % 2 == 0 else ("new", "old")
        record: dict[str, Any] = {"group": group, "name": path.name, "size": list(reference.size)}
        for which in order:
            module = old if which == "old" else enc
            encoded, cpu, searches = run(module, data, path.name, clocks[which])
            scores = check(encoded, reference)
            record[which] = {
                "cpu": cpu,
                "search_cpu": searches,
                "bytes": served_bytes(encoded),
                "min_ssim": min(scores),
                "below_floor": sum(s < SETTINGS.ssim_floor for s in scores),
                "chosen": [[f"{v.format} {v.detail} {len(v.data)}" for v in r.variants] for r in encoded.renditions],
            }
        record["q80_cpu"], record["q80_min_ssim"] = fixed_q80(reference, encoded)
        records.append(record)
        print(
            f"\r{i + 1}/{len(items)} {path.name[:40]:40s} old {record['old']['cpu'] * 1000:6.0f} ms  "
            f"new {record['new']['cpu'] * 1000:6.0f} ms",
            end="",
            file=sys.stderr,
            flush=True,
        )
    print(file=sys.stderr)
    return records


# ---- summary ------------------------------------------------------------------------------------


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    def cpu(which: str) -> list[float]:
        return [r[which]["cpu"] for r in records]

    def total_bytes(which: str, fmt: str) -> int:
        return sum(r[which]["bytes"][fmt] for r in records)

    old_cpu, new_cpu = cpu("old"), cpu("new")
    webp_search = [r["new"]["search_cpu"].get("webp", 0.0) for r in records]
    return {
        "icons": len(records),
        "groups": dict(Counter(r["group"] for r in records)),
        "cpu_ms_median": {"old": 1000 * statistics.median(old_cpu), "new": 1000 * statistics.median(new_cpu)},
        "cpu_s_total": {"old": sum(old_cpu), "new": sum(new_cpu)},
        "cpu_ratio_median": statistics.median(o / n for o, n in zip(old_cpu, new_cpu)),
        "cpu_ratio_total": sum(old_cpu) / sum(new_cpu),
        "bytes": {f: {"old": total_bytes("old", f), "new": total_bytes("new", f)} for f in (*FORMATS, "first")},
        "served": {
            which: dict(Counter(v.split()[0] for r in records for v in r[which]["chosen"][0]))
            for which in ("old", "new")
        },
        "min_ssim": {w: min(r[w]["min_ssim"] for r in records) for w in ("old", "new")},
        "files_below_floor": {w: sum(r[w]["below_floor"] for r in records) for w in ("old", "new")},
        "q80": {
            "cpu_ms_median": 1000 * statistics.median(r["q80_cpu"] for r in records),
            "encode_over_q80_median": statistics.median(r["new"]["cpu"] / r["q80_cpu"] for r in records),
            "webp_search_over_q80_median": statistics.median(s / r["q80_cpu"] for s, r in zip(webp_search, records)),
            "webp_search_ms_median": 1000 * statistics.median(webp_search),
            "old_webp_search_ms_median": 1000
            * statistics.median(r["old"]["search_cpu"].get("webp", 0.0) for r in records),
            "icons_below_floor": sum(r["q80_min_ssim"] < SETTINGS.ssim_floor for r in records),
            "min_ssim": min(r["q80_min_ssim"] for r in records),
        },
    }


def verdicts(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 14's targets for the search, each with its figure (the shape bench/scale.py uses)."""
    changes = {
        f: 100 * (b["new"] - b["old"]) / b["old"] for f, b in summary["bytes"].items() if f in FORMATS and b["old"]
    }
    worst = max(changes, key=lambda f: abs(changes[f]))
    q80 = summary["q80"]
    return [
        {
            "label": "CPU per icon >= 2x lower (median ratio)",
            "pass": summary["cpu_ratio_median"] >= 2,
            "value": summary["cpu_ratio_median"],
            "unit": "x",
        },
        {
            "label": f"bytes per format within 1% (worst: {worst})",
            "pass": abs(changes[worst]) <= 1,
            "value": changes[worst],
            "unit": "%",
        },
        {
            "label": "no served file below the floor",
            "pass": summary["files_below_floor"]["new"] == 0,
            "value": summary["files_below_floor"]["new"],
            "unit": "files",
        },
        {
            "label": "lossy WebP search <= 3x one q80 encode (median)",
            "pass": q80["webp_search_over_q80_median"] <= 3,
            "value": q80["webp_search_over_q80_median"],
            "unit": "x",
        },
        {
            "label": "fixed q80 breaks the floor where we do not",
            "pass": q80["icons_below_floor"] > 0,
            "value": q80["icons_below_floor"],
            "unit": "icons",
        },
    ]


def report(summary: dict[str, Any]) -> None:
    ms, total = summary["cpu_ms_median"], summary["cpu_s_total"]
    print(f"{summary['icons']} icons {summary['groups']}, floor {SETTINGS.ssim_floor}, load {os.getloadavg()[0]:.1f}")
    print(f"CPU per icon, median: baseline {ms['old']:.1f} ms, now {ms['new']:.1f} ms")
    print(f"CPU total:            baseline {total['old']:.2f} s, now {total['new']:.2f} s")
    print(
        f"ratio baseline/now:   median of per-icon ratios {summary['cpu_ratio_median']:.2f}x, totals {summary['cpu_ratio_total']:.2f}x"
    )
    print("bytes served, total:  format      baseline          now   change")
    for fmt, b in summary["bytes"].items():
        change = f"{100 * (b['new'] - b['old']) / b['old']:+.2f}%" if b["old"] else "-"
        print(f"                      {fmt:8s} {b['old']:11,d} {b['new']:12,d} {change:>8s}")
    print(f"formats served (1x):  baseline {summary['served']['old']}, now {summary['served']['new']}")
    print(
        f"SSIM, every served file: min baseline {summary['min_ssim']['old']:.4f}, now {summary['min_ssim']['new']:.4f}; "
        f"below the floor: baseline {summary['files_below_floor']['old']}, now {summary['files_below_floor']['new']}"
    )
    q = summary["q80"]
    print(
        f"fixed WebP q80 m4 (one encode per density): {q['cpu_ms_median']:.2f} ms per icon, median; "
        f"breaks the floor on {q['icons_below_floor']} of {summary['icons']} icons (min SSIM {q['min_ssim']:.4f})"
    )
    print(
        f"  our whole encode / q80: {q['encode_over_q80_median']:.1f}x (median); our lossy WebP search alone "
        f"{q['webp_search_ms_median']:.2f} ms (baseline's: "
        f"{q['old_webp_search_ms_median']:.2f} ms) = "
        f"{q['webp_search_over_q80_median']:.2f}x q80 (median)"
    )
    for verdict in summary["verdicts"]:
        print(
            f"target: {verdict['label']}: {'PASS' if verdict['pass'] else 'MISS'} {verdict['value']:.2f} {verdict['unit']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 emoji instead of 100")
    parser.add_argument("--emoji", type=int, help="emoji sampled from the npm sets (default 100, --quick 20; 0: none)")
    parser.add_argument("--oxygen", type=int, default=0, help="also the first N Oxygen icons at 256 px")
    parser.add_argument("--baseline", default=BASELINE, help=f"the commit to compare with (default {BASELINE})")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    emoji = args.emoji if args.emoji is not None else (20 if args.quick else 100)
    old = load_baseline(args.baseline)
    records = measure(corpus(emoji, args.oxygen), old)
    summary = summarise(records)
    summary["verdicts"] = verdicts(summary)
    report(summary)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cores": os.cpu_count(), "load": os.getloadavg(), "python": platform.python_version()}
    versions = {"baseline": f"{args.baseline} {old.ENCODER_VERSION}", "now": enc.ENCODER_VERSION}
    document = {"machine": machine, "encoders": versions, "summary": summary, "icons": records}
    args.output.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
