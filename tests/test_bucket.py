"""Publishing to S3-compatible object storage (pipeline/bucket.py) against a real SeaweedFS cluster
(tests/seaweed.py: master, two volume servers, filer, S3 gateway with identities, on 127.0.0.1).

One cluster serves the module; each test has its own bucket. Faults go through tests/seaweed.S3Proxy
(counts requests, fails the Nth PUT, answers late). The swap-under-load test puts nginx in front of
the gateway as a CDN (proxy_cache honouring Cache-Control) and probes it while 50 releases go out;
its figures go to test-artifacts/bucket-swap-under-load.json.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from pipeline.bucket import IMMUTABLE, STATE_KEY, BucketError, S3Bucket
from pipeline.model import PublishSettings

from .conftest import REPO, run_cli
from .nginx import nginx_server  # noqa: F401 (fixture)
from .probe import Probe, asset_urls
from .seaweed import Cluster, S3Proxy, seaweed_cluster, weed_available
from .test_swap import rotate_icon, with_code
from .tools import require

BUCKETS = ("order", "down", "creds", "midput", "midpages", "slow", "retention", "swap")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    require(*weed_available())  # fails under CI=true when `weed` is missing
    with seaweed_cluster() as running:
        running.create_buckets(*BUCKETS)
        yield running


def configure(site: Path, endpoint: str, bucket: str, **extra: object) -> None:
    """site.toml + [publish] target/endpoint (and any extra [publish] keys)."""
    text = (site / "site.toml").read_text(encoding="utf-8")
    lines = [f'target = "s3://{bucket}/www"', f'endpoint = "{endpoint}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    if "[publish]" in text:
        text = text.replace("[publish]", "[publish]\n" + "\n".join(lines), 1)
    else:
        text += "\n[publish]\n" + "\n".join(lines) + "\n"
    (site / "site.toml").write_text(text, encoding="utf-8")


def build(site: Path, cluster: Cluster, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(site, "build", "--offline", "-v", env={**cluster.env, **env})


def read(cluster: Cluster, bucket: str, key: str) -> httpx.Response:
    """An anonymous GET straight from the gateway (what a CDN does)."""
    return httpx.get(f"{cluster.endpoint}/{bucket}/www/{key}", timeout=5.0, trust_env=False)


def page_is_whole(cluster: Cluster, bucket: str) -> tuple[str, list[str]]:
    """The live index.html and the assets it names that the bucket does not answer 200 for."""
    html = read(cluster, bucket, "index.html").text
    return html, [u for u in asset_urls(html) if read(cluster, bucket, u.lstrip("/")).status_code != 200]


def settings_for(endpoint: str, bucket: str, **extra: float) -> PublishSettings:
    return PublishSettings(target=f"s3://{bucket}/www", endpoint=endpoint, **extra)  # type: ignore[arg-type]


# ---- no cluster needed ---------------------------------------------------------------------------


def test_a_local_build_never_imports_the_s3_client(site: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pipeline", "build", "--offline", "--site", str(site)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert not re.search(r"\|\s+(obstore|pipeline\.bucket)\b", done.stderr)


def test_a_bad_target_is_a_config_error(site: Path) -> None:
    configure(site, "ftp://127.0.0.1:1", "Not_A_Bucket")
    done = run_cli(site, "build", "--offline")
    assert done.returncode == 78, done.stderr
    assert "[publish] target must look like s3://BUCKET/PREFIX" in done.stderr
    assert "[publish] endpoint" in done.stderr


# ---- against the cluster -------------------------------------------------------------------------


def test_order_headers_noop_and_one_icon(site: Path, cluster: Cluster) -> None:
    with S3Proxy(cluster.s3_port) as proxy:
        configure(site, proxy.endpoint, "order")
        first = build(site, cluster)
        assert first.returncode == 0, first.stderr
        assert "published r000001" in first.stdout
        puts = [path for method, path, _ in proxy.log if method == "PUT" and not path.endswith(STATE_KEY)]
        kinds = ["asset" if "/assets/" in p else "page" if p.endswith(".html") else "other" for p in puts]
        assert kinds == sorted(kinds, key=["asset", "other", "page"].index), kinds  # assets, others, pages
        assert puts[-1].endswith("/index.html")
        state_puts = [i for i, (m, p, _) in enumerate(proxy.log) if m == "PUT" and p.endswith(STATE_KEY)]
        first_page = next(i for i, (m, p, _) in enumerate(proxy.log) if m == "PUT" and p.endswith(".html"))
        assert len(state_puts) == 2 and state_puts[0] < first_page < state_puts[1]

        html, missing = page_is_whole(cluster, "order")
        assert not missing and html.rstrip().endswith("</html>")
        asset = read(cluster, "order", next(u for u in asset_urls(html) if u.endswith(".png")).lstrip("/"))
        assert asset.headers["cache-control"] == IMMUTABLE
        assert asset.headers["content-type"] == "image/png"
        css = read(cluster, "order", next(u for u in asset_urls(html) if u.endswith(".css")).lstrip("/"))
        assert css.headers["content-type"].startswith("text/css") and css.headers["cache-control"] == IMMUTABLE
        index = read(cluster, "order", "index.html")
        assert index.headers["cache-control"] == "no-cache"
        assert index.headers["content-type"].startswith("text/html")
        assert read(cluster, "order", "codes.json").headers["content-type"].startswith("application/json")

        proxy.reset()
        again = build(site, cluster)
        assert again.returncode == 0 and "nothing changed" in again.stdout, again.stdout
        assert proxy.counts() == {"GET": 1}, proxy.log  # one read of the state object, nothing written

        proxy.reset()
        icon = sorted((site / "icons").glob("*.png"))[0]
        mine = (f"/assets/icons/{icon.stem}.", f"/assets/icons/{icon.stem}@")  # every density
        old = {unquote(u) for u in asset_urls(html) if unquote(u).startswith(mine)}
        rotate_icon(icon)
        changed = build(site, cluster)
        assert changed.returncode == 0 and "published r000002" in changed.stdout, changed.stdout
        new_html = read(cluster, "order", "index.html").text
        new = {unquote(u) for u in asset_urls(new_html) if unquote(u).startswith(mine)}
        assert new and not new & old
        put_paths = [p for m, p, _ in proxy.log if m == "PUT" and not p.endswith(STATE_KEY)]
        put_assets = {unquote(p.removeprefix("/order/www")) for p in put_paths if "/assets/" in p}
        assert put_assets - new <= {u for u in asset_urls(new_html) if "favicon" in u or "touch" in u}, put_assets
        assert new <= put_assets
        assert all(not p.endswith(".html") or p.endswith(("index.html", "404.html")) for p in put_paths)
        print(
            f"\none icon changed: {len(put_assets)} asset PUTs ({len(new)} variants of {icon.stem}), "
            f"{len(put_paths) - len(put_assets)} other PUTs, requests {proxy.counts()}"
        )
        assert not page_is_whole(cluster, "order")[1]


def test_endpoint_down_is_exit_73_naming_it_and_the_next_run_catches_up(site: Path, cluster: Cluster) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    configure(site, dead, "down", upload_timeout=2, upload_deadline=10)
    started = time.monotonic()
    down = build(site, cluster)
    assert down.returncode == 73, (down.returncode, down.stderr)
    assert dead in down.stderr and "nothing was uploaded" in down.stderr, down.stderr
    assert "Traceback" not in down.stderr and time.monotonic() - started < 30
    assert (site / "dist" / "current").is_symlink()  # the local release is still built and gated
    (site / "site.toml").write_text((site / "site.toml").read_text().replace(dead, cluster.endpoint))
    up = build(site, cluster)
    assert up.returncode == 0 and "published r000001" in up.stdout, (up.stdout, up.stderr)
    assert not page_is_whole(cluster, "down")[1]


def test_wrong_credentials_say_403_and_a_missing_bucket_says_so(site: Path, cluster: Cluster) -> None:
    configure(site, cluster.endpoint, "creds")
    wrong = build(site, cluster, AWS_ACCESS_KEY_ID="not-a-key", AWS_SECRET_ACCESS_KEY="wrong")
    assert wrong.returncode == 73, wrong.stderr
    assert "refused the credentials (HTTP 403" in wrong.stderr and "AWS_ACCESS_KEY_ID" in wrong.stderr
    none = run_cli(
        site, "build", "--offline", env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_PROFILE": ""}
    )
    assert none.returncode == 73 and "no credentials for the bucket" in none.stderr, none.stderr
    (site / "site.toml").write_text((site / "site.toml").read_text().replace("s3://creds/", "s3://no-such-bucket/"))
    missing = build(site, cluster)
    assert missing.returncode == 73 and "bucket 'no-such-bucket' does not exist" in missing.stderr, missing.stderr


def _files(n: int, pages: int = 3) -> dict[str, bytes]:
    """A small release: `pages` pages naming 4 assets of generation n, and a JSON file."""
    assets = {f"assets/icons/i{k}.{n:04d}.png": f"png {k} {n}".encode() for k in range(4)}
    body = "".join(f'<img src="/{a}">' for a in assets)
    html = {("index.html" if p == 0 else f"p{p}.html"): f"<html>{n} {p} {body}</html>".encode() for p in range(pages)}
    return {**assets, **html, "codes.json": json.dumps({"n": n}).encode()}


def _publish(endpoint: str, bucket: str, files: dict[str, bytes], cluster: Cluster, **extra: float) -> S3Bucket:
    settings = settings_for(endpoint, bucket, **extra)
    target = S3Bucket(settings, environ=cluster.env)
    target.publish(files, settings, time.time(), lambda name: None, ("index.html",))
    return target


def test_a_put_failing_mid_way_is_retried_with_backoff_then_named(cluster: Cluster) -> None:
    with S3Proxy(cluster.s3_port) as proxy:
        _publish(proxy.endpoint, "midput", _files(1), cluster)
        proxy.reset()
        proxy.fail_puts = lambda n, path: n in (2, 3)  # the 2nd PUT fails twice, then goes through
        target = _publish(proxy.endpoint, "midput", _files(2), cluster)
        assert target.requests["PUT"] == proxy.counts()["PUT"]
        assert [s for m, _, s in proxy.log if m == "PUT"].count(503) == 2
        assert not page_is_whole(cluster, "midput")[1] and ">2 0 " in page_is_whole(cluster, "midput")[0]

        proxy.reset()
        proxy.fail_puts = lambda n, path: "/assets/icons/i1." in path  # this one never goes through
        started = time.monotonic()
        with pytest.raises(BucketError) as failed:
            _publish(proxy.endpoint, "midput", _files(3), cluster)
        took = time.monotonic() - started
        message = str(failed.value)
        assert "assets/icons/i1.0003.png failed after 4 attempts" in message and "HTTP 503" in message, message
        assert "the pages in the bucket are unchanged" in message
        assert [p for m, p, _ in proxy.log if m == "PUT"].count("/midput/www/assets/icons/i1.0003.png") == 4
        assert took >= 0.25 + 0.5 + 1.0  # the backoff was waited
        html, missing = page_is_whole(cluster, "midput")
        assert ">2 0 " in html and not missing  # the old release is live and whole

        proxy.fail_puts = lambda n, path: False
        _publish(proxy.endpoint, "midput", _files(3), cluster)  # the next run catches up
        assert ">3 0 " in page_is_whole(cluster, "midput")[0] and not page_is_whole(cluster, "midput")[1]


def test_a_failure_among_the_pages_is_finished_by_the_next_run_even_with_old_inputs(cluster: Cluster) -> None:
    with S3Proxy(cluster.s3_port) as proxy:
        _publish(proxy.endpoint, "midpages", _files(1), cluster)
        proxy.fail_puts = lambda n, path: path.endswith("/index.html")
        with pytest.raises(BucketError, match="some pages may already be the new ones"):
            _publish(proxy.endpoint, "midpages", _files(2), cluster)
        assert read(cluster, "midpages", "p1.html").text.startswith("<html>2 ")  # p1 went, index did not
        assert not page_is_whole(cluster, "midpages")[1]
        proxy.fail_puts = lambda n, path: False
        _publish(proxy.endpoint, "midpages", _files(1), cluster)  # back to the first inputs: p1 is repaired
        assert read(cluster, "midpages", "p1.html").text.startswith("<html>1 ")
        assert read(cluster, "midpages", "index.html").text.startswith("<html>1 ")
        assert not page_is_whole(cluster, "midpages")[1]


def test_a_slow_endpoint_cannot_stretch_the_run_past_its_deadline(cluster: Cluster) -> None:
    with S3Proxy(cluster.s3_port) as proxy:
        proxy.delay = 4.0
        started = time.monotonic()
        with pytest.raises(BucketError) as failed:
            _publish(proxy.endpoint, "slow", _files(1), cluster, upload_timeout=1.0, upload_deadline=3.0)
        took = time.monotonic() - started
    assert took < 3.0 + 1.0 + 1.5, took  # the deadline, one request timeout, slack
    assert "timed out" in str(failed.value) or "deadline" in str(failed.value), failed.value
    assert proxy.endpoint in str(failed.value)


def test_retention_keeps_the_window_and_never_the_live_assets(cluster: Cluster) -> None:
    endpoint = cluster.endpoint
    for n in range(1, 6):
        _publish(endpoint, "retention", _files(n), cluster, keep_releases=2, retention_hours=0)
    present = {
        n: [read(cluster, "retention", f"assets/icons/i0.{n:04d}.png").status_code for _ in (0,)][0]
        for n in range(1, 6)
    }
    assert present == {1: 404, 2: 404, 3: 404, 4: 200, 5: 200}, present
    # A window of hours keeps them all.
    for n in range(6, 9):
        _publish(endpoint, "retention", _files(n), cluster, keep_releases=2, retention_hours=24)
    assert all(read(cluster, "retention", f"assets/icons/i0.{n:04d}.png").status_code == 200 for n in (4, 5, 6, 7, 8))
    state = json.loads(read(cluster, "retention", STATE_KEY).content)
    assert state["live"] == "r000008" and state["pending"] is None


# ---- swap under load through a CDN ---------------------------------------------------------------

CDN_CONF = """\
proxy_cache_path {cache} levels=1:2 keys_zone=cdn:4m max_size=64m inactive=10m use_temp_path=off;
server {{
    listen 127.0.0.1:0;
    root {cache};
    proxy_cache cdn;
    proxy_cache_revalidate on;
    proxy_set_header Accept-Encoding "";
    add_header X-Cache $upstream_cache_status always;
    location = / {{ proxy_pass {upstream}/index.html; }}
    location / {{ proxy_pass {upstream}/; }}
}}
"""


@pytest.mark.nginx
def test_swap_under_load_through_a_cdn(site: Path, cluster: Cluster, nginx_server) -> None:  # noqa: F811
    swaps, icon_every = 50, 5
    cache = Path(tempfile.mkdtemp(prefix="cdn-cache-"))
    try:
        cache.chmod(0o777)  # the nginx workers (nobody) write the cache
        conf = cache / "cdn.conf"
        conf.write_text(CDN_CONF.format(cache=cache, upstream=f"{cluster.endpoint}/swap/www"), encoding="utf-8")
        configure(site, cluster.endpoint, "swap")
        started = time.monotonic()
        assert build(site, cluster).returncode == 0
        base = nginx_server(cache, source=conf, root=cache)
        first_html = httpx.get(base + "/", timeout=5, trust_env=False).text
        first_assets = asset_urls(first_html)
        codes = site / "codes.yaml"
        original = codes.read_text(encoding="utf-8")
        icons = sorted((site / "icons").glob("*.png"))
        seconds = []
        with Probe(base, threads=2, pause=0.02) as probe:
            probe.wait_for_requests(50)
            for i in range(1, swaps + 1):
                codes.write_text(with_code(original, f"SWAP{i:03d}", 1000 + i), encoding="utf-8")
                if i % icon_every == 0:
                    rotate_icon(icons[(i // icon_every - 1) % len(icons)])
                t0 = time.monotonic()
                done = build(site, cluster)
                seconds.append(time.monotonic() - t0)
                assert done.returncode == 0 and "published" in done.stdout, (i, done.stdout, done.stderr)
            time.sleep(0.3)
        report = probe.report()
        with httpx.Client(base_url=base, timeout=5.0, trust_env=False) as client:
            first_missing = [u for u in first_assets if client.get(u).status_code != 200]
            hit = client.get(first_assets[0]).headers.get("x-cache")
            final = client.get("/").text
        figures = {
            "swaps": swaps,
            "icon_changes": swaps // icon_every,
            "publish_seconds_median": round(sorted(seconds)[len(seconds) // 2], 2),
            "publish_seconds_max": round(max(seconds), 2),
            "probe": {k: v for k, v in report.items() if k != "examples"},
            "examples": report["examples"],
            "first_release_assets_missing": first_missing,
            "asset_cache_status": hit,
            "test_seconds": round(time.monotonic() - started, 1),
        }
        (REPO / "test-artifacts").mkdir(exist_ok=True)
        (REPO / "test-artifacts" / "bucket-swap-under-load.json").write_text(json.dumps(figures, indent=1) + "\n")
        print(
            f"\nbucket swap under load: {swaps} releases ({swaps // icon_every} with a new icon), build+upload "
            f"median {figures['publish_seconds_median']}s; probe {report['requests']} requests, "
            f"{report['distinct_pages']} distinct pages, errors {report['errors']} (non-200 {report['non_200']}, "
            f"torn {report['torn']}, missing assets {report['missing_assets']})"
        )
        assert probe.clean, json.dumps(report, indent=1)
        assert report["distinct_pages"] >= swaps // 4, report
        assert not first_missing, first_missing
        assert hit == "HIT"  # the CDN caches the immutable assets ...
        assert f"SWAP{swaps:03d}" in final  # ... and never serves a stale page
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
