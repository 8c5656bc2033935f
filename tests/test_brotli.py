"""Stage 6 precompression: every text file of a release gets a .br (brotli quality 11, lower for
large files) beside its .gz where that saves at least 5%, and unchanged or retained files bring
theirs along as links."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import brotli

from pipeline.model import PublishSettings
from pipeline.publish import BROTLI_QUALITY, COMPRESSIBLE, _brotli, _gzip, publish

from .conftest import run_cli

HOUR = 3600.0
SETTINGS = PublishSettings(keep_releases=2, retention_hours=24)
CSS = b".code{font-family:monospace;letter-spacing:.05em}\n" * 40


def files(version: str, css_name: str) -> dict[str, bytes]:
    page = f'<!doctype html><link rel=stylesheet href="/assets/{css_name}"><p>{version}</p>' + "<p>row</p>" * 200
    return {
        "index.html": page.encode(),
        f"assets/{css_name}": CSS,
        "robots.txt": b"x",
        "assets/a.1111.png": b"\x89PNG" * 300,
    }


def test_each_compressible_file_of_a_built_release_has_a_br_that_decompresses_to_it(site: Path) -> None:
    result = run_cli(site, "build", "--offline")
    assert result.returncode == 0, result.stderr
    live = (site / "dist" / "current").resolve()
    plain = [p for p in live.rglob("*") if p.is_file() and p.suffix not in (".gz", ".br")]
    texts = [p for p in plain if p.name.endswith(COMPRESSIBLE)]
    assert {p.suffix for p in texts} >= {".html", ".css", ".json", ".xml", ".txt"}, texts
    for path in texts:
        data = path.read_bytes()
        br = path.with_name(path.name + ".br")
        if len(data) >= 512:  # big enough that brotli always saves 5%: a missing .br is a bug
            assert br.is_file(), path
        if br.exists():
            assert brotli.decompress(br.read_bytes()) == data, br
            assert br.read_bytes() == _brotli(data), br  # deterministic: rebuilt bytes are equal
            assert br.stat().st_mode & 0o777 == 0o644, br
            assert br.stat().st_size < len(data) * 0.95, br
    for path in plain:
        if not path.name.endswith(COMPRESSIBLE):  # images are already compressed
            assert not path.with_name(path.name + ".br").exists(), path
            assert not path.with_name(path.name + ".gz").exists(), path
    index = live / "index.html"
    assert (live / "index.html.br").stat().st_size < (live / "index.html.gz").stat().st_size < index.stat().st_size


def test_the_brotli_quality_falls_with_the_size_so_a_large_page_costs_a_run_little() -> None:
    rows = "".join(
        f'<tr><td><img src="/assets/icon-{i}.{i * 7919 % 10**10:010d}.png"></td></tr>' for i in range(20_000)
    )
    large = rows.encode()  # ~1.3 MB of page: above the last limit
    small = large[:60_000]
    assert len(large) > BROTLI_QUALITY[-2][0] and len(small) <= BROTLI_QUALITY[0][0]
    assert _brotli(small) == brotli.compress(small, quality=11)
    assert _brotli(large) == brotli.compress(large, quality=BROTLI_QUALITY[-1][1])
    assert brotli.decompress(_brotli(large) or b"") == large


def test_a_tiny_file_gets_no_br_and_no_gz(tmp_path: Path) -> None:
    assert _brotli(b"x") is None and _gzip(b"x") is None
    assert _brotli(b"") is None and _gzip(b"") is None
    publish(tmp_path / "dist", files("v1", "style.1111.css"), SETTINGS, now=1000 * HOUR)
    live = tmp_path / "dist" / "current"
    assert (live / "robots.txt").read_bytes() == b"x"
    assert not (live / "robots.txt.br").exists() and not (live / "robots.txt.gz").exists()
    assert not (live / "assets/a.1111.png.br").exists()  # not a text type, whatever its size
    for name in ("index.html", "assets/style.1111.css"):
        assert brotli.decompress((live / f"{name}.br").read_bytes()) == (live / name).read_bytes()
        assert gzip.decompress((live / f"{name}.gz").read_bytes()) == (live / name).read_bytes()


def test_brotli_needs_the_same_five_percent_as_gzip() -> None:
    incompressible = random.Random(9).randbytes(2000)  # noise: brotli cannot save 5% on it
    assert len(brotli.compress(incompressible, quality=11)) >= len(incompressible) * 0.95
    assert _brotli(incompressible) is None
    text = b"<p>the same row again</p>\n" * 100
    assert _brotli(text) is not None and brotli.decompress(_brotli(text)) == text


def test_unchanged_and_retained_files_link_their_br_from_the_live_release(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    first = publish(dist, files("v1", "style.1111.css"), SETTINGS, now=1000 * HOUR)
    # The page changes and the stylesheet gets a new name: style.1111.css is now only retained.
    second = publish(dist, files("v2", "style.2222.css"), SETTINGS, now=1001 * HOUR)
    one, two = dist / "releases" / first.release, dist / "releases" / second.release
    for suffix in ("", ".gz", ".br"):
        retained = f"assets/style.1111.css{suffix}"
        assert (two / retained).stat().st_ino == (one / retained).stat().st_ino, retained
    assert (two / "index.html.br").stat().st_ino != (one / "index.html.br").stat().st_ino  # rewritten
    assert brotli.decompress((two / "index.html.br").read_bytes()) == (two / "index.html").read_bytes()
    # Only the page changes: the stylesheet is unchanged, so it and its .gz and .br are links.
    third = publish(dist, files("v3", "style.2222.css"), SETTINGS, now=1002 * HOUR)
    three = dist / "releases" / third.release
    for suffix in ("", ".gz", ".br"):
        same = f"assets/style.2222.css{suffix}"
        assert (three / same).stat().st_ino == (two / same).stat().st_ino, same
    assert (three / "assets/style.1111.css.br").stat().st_ino == (one / "assets/style.1111.css.br").stat().st_ino
