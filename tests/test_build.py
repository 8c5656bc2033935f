"""End to end through the CLI, on a copy of the default site, offline."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image, ImageOps

from pipeline.gate import urls_in
from pipeline.lock import exclusive

from .conftest import REPO, run_cli

MAGIC = {".png": b"\x89PNG", ".webp": b"RIFF", ".avif": b"\x00\x00\x00", ".css": b""}


class Pictures(HTMLParser):
    """Each <picture>'s <source> and <img> children, with their attributes, in document order.
    Not a URL extractor: the URLs a page names come from pipeline.gate.urls_in."""

    def __init__(self) -> None:
        super().__init__()
        self.pictures: list[list[tuple[str, dict[str, str | None]]]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "picture":
            self.pictures.append([])
        elif tag in ("source", "img") and self.pictures:
            self.pictures[-1].append((tag, dict(attrs)))


def srcset(value: str) -> list[tuple[str, str]]:
    """ "a.png 1x, b.png 2x" -> [("a.png", "1x"), ("b.png", "2x")]."""
    return [tuple(part.split()) for part in value.split(",") if part.strip()]  # type: ignore[misc]


def snapshot(dist: Path) -> dict[str, bytes | str]:
    """Every file's bytes and every symlink's target under dist/."""
    out: dict[str, bytes | str] = {}
    for path in sorted(dist.rglob("*")):
        key = path.relative_to(dist).as_posix()
        if path.is_symlink():
            out[key] = "-> " + os.readlink(path)
        elif path.is_file():
            out[key] = path.read_bytes()
    return out


def test_default_site_builds_and_every_reference_resolves(site: Path) -> None:
    result = run_cli(site, "build", "--offline")
    assert result.returncode == 0, result.stderr
    assert "published r000001" in result.stdout and "11 local" in result.stdout
    live = site / "dist" / "current"
    manifest = json.loads((live / "manifest.json").read_text())
    html_files = sorted(live.rglob("*.html"))
    assert [p.name for p in html_files] == ["404.html", "index.html"]
    for page in html_files:
        local = [(t, k, u) for t, k, u in urls_in(page.read_text()) if u.startswith("/")]
        assert local, page
        for tag, key, url in local:
            target = live / url.lstrip("/").split("#")[0]
            if url == "/":
                target = live / "index.html"
            assert target.is_file(), f"{page.name}: {tag} {key}={url} missing"
            assert target.read_bytes().startswith(MAGIC.get(target.suffix, b"")), url
    # The <picture> fallback <img> is a PNG; each <source> type matches its file.
    parser = Pictures()
    parser.feed((live / "index.html").read_text())
    assert len(parser.pictures) >= 11
    for picture in parser.pictures:
        *sources, (img_tag, img) = picture
        assert img_tag == "img" and img["src"].endswith(".png")
        assert (img["width"], img["height"]) == ("40", "40")  # the CSS box, whichever density loads
        assert Image.open(live / img["src"].lstrip("/")).size == (40, 40)  # the 1x file
        assert [(Image.open(live / url.lstrip("/")).width, d) for url, d in srcset(img["srcset"])] == [(64, "1.6x")]
        for _tag, source in sources:
            candidates = srcset(source["srcset"])
            assert [d for _url, d in candidates] == ["1x", "1.6x"]  # 64 px sources: 3x would upscale
            for url, descriptor in candidates:
                assert url.endswith("." + source["type"].split("/")[1])
                assert Image.open(live / url.lstrip("/")).width == round(40 * float(descriptor[:-1]))
    # ICON_MAP, as injected into the page, matches the manifest.
    icon_map = json.loads(
        re.search(
            r'<script type="application/json" id="icon-map">(.*?)</script>', (live / "index.html").read_text()
        ).group(1)
    )
    spec_names = [
        line.split(":")[0]
        for line in (site / "icon_map.yaml").read_text().splitlines()
        if line and not line.startswith((" ", "#"))
    ]
    assert sorted(icon_map) == sorted(spec_names)
    by_url = {entry["url"]: entry for entry in manifest.values()}
    for entry in icon_map.values():
        for fmt in ("png", "webp", "avif"):
            if fmt in entry:
                assert by_url[entry[fmt]]["type"] == f"image/{fmt}"
                assert (by_url[entry[fmt]]["width"], by_url[entry[fmt]]["height"]) == (entry["width"], entry["height"])
                assert [by_url[url]["width"] for url, _d in srcset(entry["srcset"][fmt])] == [40, 64]
    assert {"codes.json", "sitemap.xml", "robots.txt"} <= {p.name for p in live.iterdir()}
    codes = json.loads((live / "codes.json").read_text())
    assert codes["game"] == "Zenless Zone Zero" and len(codes["codes"]) == 7


def test_second_build_changes_nothing_and_one_new_icon_encodes_alone(site: Path) -> None:
    assert run_cli(site, "build", "--offline").returncode == 0
    before = snapshot(site / "dist")
    again = run_cli(site, "build", "--offline")
    assert again.returncode == 0, again.stderr
    assert "nothing changed; r000001 stays live" in again.stdout
    assert "0 encoded, 11 reused from cache" in again.stdout
    assert "0 files, 0 bytes written" in again.stdout
    assert snapshot(site / "dist") == before
    # Replace one source: only that icon is encoded, and its page changes.
    denny = site / "icons" / "denny.png"
    ImageOps.mirror(Image.open(denny)).save(denny)
    changed = run_cli(site, "build", "--offline")
    assert changed.returncode == 0, changed.stderr
    assert "1 encoded, 10 reused from cache" in changed.stdout
    assert "published r000002 (assets only: no page content changed)" in changed.stdout
    # A content change is a page change.
    (site / "codes.yaml").write_text((site / "codes.yaml").read_text().replace("HDDTAPES", "HDDTAPES2"))
    content = run_cli(site, "build", "--offline")
    assert "published r000003 in" in content.stdout
    assert "changed: codes.json, index.html" in content.stdout


NO_OP_IMPORTS = """
import sys
from pipeline import cli
code = cli.main(["build", "--offline", "--summary", "line", "--site", sys.argv[1]])
print(sorted(m for m in ("jinja2", "htmlmin") if m in sys.modules))
sys.exit(code)
"""


def test_a_no_op_reuses_its_pages_and_a_template_edit_renders_them_again(site: Path) -> None:
    assert run_cli(site, "build", "--offline").returncode == 0
    noop = subprocess.run(
        [sys.executable, "-c", NO_OP_IMPORTS, str(site)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert noop.returncode == 0 and noop.stdout.startswith("nothing changed"), noop.stderr
    assert noop.stdout.splitlines()[-1] == "[]"  # the pages were reused: no template engine, no minifier loaded
    template = site / "templates" / "index.html"
    template.write_text(template.read_text().replace("{% endblock %}", "<p>Edited</p>{% endblock %}", 1))
    edited = run_cli(site, "build", "--offline")
    assert edited.returncode == 0 and "published r000002" in edited.stdout, edited.stderr
    assert b"<p>Edited</p>" in (site / "dist" / "current" / "index.html").read_bytes()


def test_a_cache_file_whose_stat_changed_is_hashed_and_reused_if_its_bytes_did_not(site: Path) -> None:
    assert run_cli(site, "build", "--offline").returncode == 0
    entry = next(p for p in sorted((site / ".cache" / "encode").glob("??/*")) if p.is_dir())
    victim = next(f for f in sorted(entry.iterdir()) if f.suffix in (".webp", ".png", ".avif"))
    os.utime(victim, ns=(1, 1))  # copied without its mtimes, say: same bytes
    again = run_cli(site, "build", "--offline")
    assert "0 encoded, 11 reused from cache" in again.stdout and "nothing changed" in again.stdout, again.stdout
    recorded = [v for r in json.loads((entry / "meta.json").read_text())["renditions"] for v in r["variants"]]
    assert {v["file"]: v["mtime_ns"] for v in recorded}[victim.name] == 1  # checked once, recorded as it is now
    victim.write_bytes(bytes(len(victim.read_bytes())))  # same size, other bytes (and a new mtime): encoded again
    third = run_cli(site, "icons")
    assert third.returncode == 0 and "1 encoded, 10 reused from cache" in third.stdout, third.stdout


def test_failed_build_leaves_dist_byte_identical(site: Path) -> None:
    assert run_cli(site, "build", "--offline").returncode == 0
    before = snapshot(site / "dist")
    index = site / "templates" / "index.html"
    index.write_text(index.read_text().replace("{{ code_row(code) }}", "{{ code_row(code) }}{{ missing_var }}", 1))
    (site / "codes.yaml").write_text((site / "codes.yaml").read_text().replace("HDDTAPES", "HDDTAPES2"))
    result = run_cli(site, "build", "--offline")
    assert result.returncode == 65
    assert "templates/index.html:" in result.stderr and "'missing_var' is undefined" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(site / "dist") == before


def test_kill_during_write_leaves_live_site_and_next_run_converges(site: Path) -> None:
    assert run_cli(site, "build", "--offline").returncode == 0
    before = snapshot(site / "dist" / "current")
    (site / "codes.yaml").write_text((site / "codes.yaml").read_text().replace("HDDTAPES", "HDDTAPES2"))
    for point in ("mid_write", "before_stage_rename", "after_stage_rename"):
        killed = run_cli(site, "build", "--offline", env={"BUILDER_CRASH_AT": point})
        assert killed.returncode == -9, (point, killed.stderr)
        assert snapshot(site / "dist" / "current") == before, point
    result = run_cli(site, "build", "--offline")
    assert result.returncode == 0, result.stderr
    assert "HDDTAPES2" in (site / "dist/current/index.html").read_text()
    assert not list((site / "dist").glob(".staging-*"))


def test_second_process_gets_the_lock_message(site: Path) -> None:
    with exclusive(site / ".cache" / "pipeline.lock"):
        result = run_cli(site, "build", "--offline")
    assert result.returncode == 75
    assert f"another build is running (pid {os.getpid()})" in result.stderr


def test_icons_command_reencodes_named_icons(site: Path) -> None:
    assert run_cli(site, "build", "--offline").returncode == 0
    forced = run_cli(site, "icons", "Denny", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "1 encoded, 10 reused from cache" in forced.stdout
    assert "nothing changed" in forced.stdout  # the encoder is deterministic: same bytes, no switch
    # New settings for one icon: only it is encoded again, without --force.
    icon_map = site / "icon_map.yaml"
    icon_map.write_text(icon_map.read_text().replace("  alt: Polychrome\n", "  alt: Polychrome\n  densities: [1]\n"))
    changed = run_cli(site, "icons", "Polychrome")
    assert "1 encoded, 10 reused from cache" in changed.stdout and "published r000002" in changed.stdout
    unknown = run_cli(site, "icons", "Nope")
    assert unknown.returncode == 78 and "unknown icon(s): 'Nope'" in unknown.stderr


def test_cold_build_encodes_everything_in_parallel_and_matches_warm(cold_site: Path, site: Path) -> None:
    cold = run_cli(cold_site, "build", "--offline", "--jobs", "2")
    assert cold.returncode == 0, cold.stderr
    assert "11 encoded, 0 reused from cache" in cold.stdout
    assert run_cli(site, "build", "--offline").returncode == 0
    ours = snapshot(cold_site / "dist" / "current")
    theirs = snapshot(site / "dist" / "current")
    assert ours == theirs  # deterministic: a cold build equals one from the cache


def test_console_script_and_module_entry_points() -> None:
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "build" in out.stdout and "icons" in out.stdout


def test_a_decoder_crash_costs_the_icon_not_the_run(site: Path) -> None:
    assert run_cli(site, "build", "--offline").returncode == 0
    before = snapshot(site / "dist")
    for name in ("denny", "boopon"):  # two new sources, so the pool has work besides the crash
        path = site / "icons" / f"{name}.png"
        ImageOps.flip(Image.open(path)).save(path)
    result = run_cli(site, "build", "--offline", "--jobs", "2", env={"BUILDER_CRASH_AT": "decode:denny"})
    assert result.returncode == 65, result.stderr
    assert "icon 'Denny' (https://" in result.stderr and "the image decoder crashed on it" in result.stderr
    assert "Traceback" not in result.stderr and "Boopon" not in result.stderr
    assert snapshot(site / "dist") == before


def test_sigterm_stops_before_the_switch_and_removes_staging(cold_site: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "build", "--offline", "--jobs", "1", "--site", str(cold_site)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    deadline = time.monotonic() + 20
    while not (cold_site / ".cache" / "encode").exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # encoding has begun
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "stopped by a signal" in err and "nothing was switched" in err
    assert re.search(r"\d+ of 11 icon\(s\) to encode were encoded and kept for the next run", err), err
    assert not (cold_site / "dist" / "current").exists()
    assert not list((cold_site / "dist").glob(".staging-*"))


def test_a_torn_or_edited_cache_entry_is_encoded_again_and_unused_entries_are_pruned(site: Path) -> None:
    assert run_cli(site, "build", "--offline").returncode == 0
    live = (site / "dist" / "current").resolve()
    entries = sorted(p for p in (site / ".cache" / "encode").glob("??/*") if p.is_dir())
    assert len(entries) == 11
    victim = next(f for f in sorted(entries[0].iterdir()) if f.suffix in (".webp", ".png", ".avif"))
    whole = victim.read_bytes()
    victim.write_bytes(whole[: len(whole) // 2])  # torn
    again = run_cli(site, "icons")
    assert again.returncode == 0, again.stderr
    assert "1 encoded, 10 reused from cache" in again.stdout and "nothing changed" in again.stdout
    assert (site / "dist" / "current").resolve() == live  # the re-encode gave the same bytes: no torn file published
    assert victim.read_bytes() == whole  # and the damaged entry was written again
    # An entry no run has used for longer than the retention window goes; a used one stays.
    stale = entries[1].parent / ("0" * 64)
    shutil.copytree(entries[1], stale)
    os.utime(stale, (1.0, 1.0))
    derived_stale = site / ".cache" / "encode" / "derived" / ("f" * 64)
    derived_stale.write_bytes(b"old")
    os.utime(derived_stale, (1.0, 1.0))
    assert run_cli(site, "build", "--offline").returncode == 0
    assert not stale.exists() and not derived_stale.exists()
    assert len([p for p in (site / ".cache" / "encode").glob("??/*") if p.is_dir()]) == 11


def test_sigint_keeps_what_was_encoded_and_the_next_run_reuses_it(cold_site: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "build", "--offline", "--jobs", "1", "--site", str(cold_site)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    entries = cold_site / ".cache" / "encode"
    deadline = time.monotonic() + 60
    while len([p for p in entries.glob("??/*") if p.is_dir()]) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)  # two icons are encoded and cached
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    kept = int(re.search(r"(\d+) of 11 icon\(s\) to encode were encoded and kept", err).group(1))
    assert 2 <= kept < 11 and "the live site is unchanged" in err
    again = run_cli(cold_site, "build", "--offline")
    assert again.returncode == 0, again.stderr
    assert f"{11 - kept} encoded, {kept} reused from cache" in again.stdout


def test_version_and_a_help_written_for_users() -> None:
    version = subprocess.run([sys.executable, "-m", "pipeline", "--version"], capture_output=True, text=True, cwd=REPO)
    assert version.returncode == 0 and re.fullmatch(r"pipeline \d+\.\d+\.\d+\n", version.stdout), version
    usage = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, cwd=REPO)
    assert "Build a static site ahead of time" in usage.stdout and "argv ->" not in usage.stdout
    for command in ("build", "icons", "refresh"):
        assert re.search(rf"^\s+{command}\s+\S", usage.stdout, re.M), (
            command
        )  # each command, one line of what it is for


def test_a_put_returns_what_a_later_get_reads_and_its_files_hold_the_recorded_bytes(tmp_path: Path) -> None:
    """put builds the cached icon from the bytes in hand (no read-back, no fsync): it must be the
    icon a later run's get reads, every file must hash to what was recorded, and a file torn after
    the put must make the entry a miss."""
    import hashlib
    import io

    from pipeline.cache import EncodeCache, cache_key
    from pipeline.encode import encode_icon
    from pipeline.encode_pool import CACHE_VERSION
    from pipeline.model import EncodeSettings, IconSpec, Origin, SourceIcon

    image = Image.new("RGBA", (48, 48), (0, 0, 0, 0))
    image.paste((200, 40, 90, 255), (8, 8, 40, 40))
    png = io.BytesIO()
    image.save(png, "PNG")
    spec = IconSpec("Square", "square", "http://127.0.0.1/square.png", "a square", EncodeSettings(), 1)
    source = SourceIcon(spec, png.getvalue(), Origin.DOWNLOADED)
    cache, key = EncodeCache(tmp_path / "encode"), cache_key(source, CACHE_VERSION)
    put = cache.put(key, encode_icon(source))
    got = cache.get(key, source)
    assert got is not None and got.reused and not put.reused
    assert got.renditions == put.renditions and (got.width, got.height) == (put.width, put.height)
    files = [variant.file for variant in put.variants]
    assert files and all(hashlib.sha256(Path(f.path).read_bytes()).hexdigest() == f.sha256 for f in files)
    assert cache.put(key, encode_icon(source)).renditions == put.renditions  # an entry already there is reused
    torn = Path(files[0].path)
    torn.write_bytes(torn.read_bytes()[:-1])
    assert cache.get(key, source) is None
