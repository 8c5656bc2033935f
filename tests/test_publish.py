"""Stage 6: atomic switch, no-op detection, retention of old assets, the pre-switch gate."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from pipeline.errors import PublishError
from pipeline.gate import check_release
from pipeline.indexnow import changed_pages, visible
from pipeline.model import CachedFile, PublishResult, PublishSettings, sri
from pipeline.publish import live_release, publish
from pipeline.retention import load_records

HOUR = 3600.0
SETTINGS = PublishSettings(keep_releases=2, retention_hours=24)


def changed(result: PublishResult, dist: Path) -> tuple[str, ...]:
    """The pages whose visible content the release changed, as the build tells IndexNow."""
    live = dist / "releases" / result.release
    return changed_pages(result.replaced, {p: (live / p).read_bytes() for p in result.replaced if (live / p).is_file()})


def site_files(version: str, asset: str) -> dict[str, bytes]:
    page = f'<!doctype html><html><body><img src="/assets/{asset}">{version}</body></html>'
    return {"index.html": page.encode(), f"assets/{asset}": asset.encode() * 50}


def test_first_publish_switches_and_sets_modes_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        result = publish(tmp_path / "dist", site_files("v1", "a.1111.png"), SETTINGS, now=1000 * HOUR)
    finally:
        os.umask(old)
    current = tmp_path / "dist" / "current"
    assert result.switched and current.is_symlink() and os.readlink(current) == f"releases/{result.release}"
    assert (current / "index.html").read_bytes().endswith(b"v1</body></html>")
    for path in current.resolve().rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path
    assert stat.S_IMODE(current.resolve().stat().st_mode) == 0o755


def test_same_files_publish_nothing(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    first = publish(dist, site_files("v1", "a.1111.png"), SETTINGS, now=1000 * HOUR)
    second = publish(dist, site_files("v1", "a.1111.png"), SETTINGS, now=1001 * HOUR)
    assert not second.switched and second.release == first.release
    assert (second.files_written, second.bytes_written) == (0, 0)
    assert sorted(p.name for p in (dist / "releases").iterdir()) == [first.release, f"{first.release}.json"]


def cached(path: Path, data: bytes) -> CachedFile:
    """A file of the encode cache, as the build hands it to the publisher: by reference."""
    path.write_bytes(data)
    return CachedFile(str(path), len(data), hashlib.sha256(data).hexdigest(), sri(data))


def test_a_cached_file_is_copied_in_and_one_changed_since_it_was_checked_is_refused(tmp_path: Path) -> None:
    dist, icon = tmp_path / "dist", tmp_path / "0.webp"
    files = {**site_files("v1", "a.1111.png"), "assets/b.2222.webp": cached(icon, b"RIFF" * 40)}
    first = publish(dist, files, SETTINGS, now=1000 * HOUR)
    live = dist / "current" / "assets" / "b.2222.webp"
    assert live.read_bytes() == b"RIFF" * 40 and not os.path.samefile(live, icon)  # a copy: the cache is not served
    assert not publish(dist, files, SETTINGS, now=1001 * HOUR).switched  # known by its recorded hash, not read
    files = {**site_files("v2", "a.1111.png"), "assets/c.3333.webp": cached(tmp_path / "1.webp", b"RIFF" * 41)}
    (tmp_path / "1.webp").write_bytes(b"RIFX" * 41)  # edited after the cache checked it
    with pytest.raises(PublishError, match=r"1\.webp: the encode cache's file changed during the run"):
        publish(dist, files, SETTINGS, now=1002 * HOUR)
    assert live_release(dist) == first.release and not list(dist.glob(".staging-*"))


def test_changed_page_switches_and_old_assets_stay_for_the_window(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    publish(dist, site_files("v1", "a.1111.png"), SETTINGS, now=1000 * HOUR)
    second = publish(dist, site_files("v2", "a.2222.png"), SETTINGS, now=1001 * HOUR)
    assert second.switched and changed(second, dist) == ("index.html",)
    live = dist / "current"
    assert (live / "assets/a.1111.png").is_file() and (live / "assets/a.2222.png").is_file()
    # Unchanged bytes are hard links, not copies.
    third = publish(dist, {**site_files("v3", "a.2222.png")}, SETTINGS, now=1002 * HOUR)
    assert (dist / "releases" / second.release / "assets/a.2222.png").stat().st_ino == (
        dist / "releases" / third.release / "assets/a.2222.png"
    ).stat().st_ino


def test_assets_dropped_after_retention_and_keep_count(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    publish(dist, site_files("v1", "a.1111.png"), SETTINGS, now=1000 * HOUR)
    for n in range(2, 5):  # 25+ hours later, and more than keep_releases releases
        publish(dist, site_files(f"v{n}", "a.2222.png"), SETTINGS, now=(1024 + n) * HOUR)
    assert not (dist / "current/assets/a.1111.png").exists()
    # r000001 is past the window and not among the last 2; r000002 is inside the window.
    assert [r.name for r in load_records(dist / "releases")] == ["r000002", "r000003", "r000004"]
    assert not (dist / "releases/r000001").exists()


def test_clock_jumping_back_never_removes_live_or_recent_releases(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    names = [publish(dist, site_files(f"v{n}", f"a.{n}.png"), SETTINGS, now=1000 * HOUR).release for n in range(3)]
    late = publish(dist, site_files("v9", "a.9.png"), SETTINGS, now=(1000 - 48) * HOUR)
    assert live_release(dist) == late.release and late.release > names[-1]  # ordered by sequence, not clock
    for name in names:  # created "in the future" relative to the jumped clock: all kept
        assert (dist / "releases" / name).is_dir()


def test_gate_refuses_a_dangling_reference_and_keeps_the_live_site(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    good = publish(dist, site_files("v1", "a.1111.png"), SETTINGS, now=1000 * HOUR)
    broken = site_files("v2", "a.2222.png")
    del broken["assets/a.2222.png"]
    with pytest.raises(PublishError) as caught:
        publish(dist, broken, SETTINGS, now=1001 * HOUR)
    assert "index.html names /assets/a.2222.png, which is not in the release" in str(caught.value)
    assert live_release(dist) == good.release
    assert not list(dist.glob(".staging-*"))


def test_gate_refuses_symlinks_and_fifos(tmp_path: Path) -> None:
    root = tmp_path / "release"
    root.mkdir()
    (root / "index.html").write_text("<html></html>")
    (root / "passwd").symlink_to("/etc/passwd")
    os.mkfifo(root / "pipe")
    with pytest.raises(PublishError) as caught:
        check_release(root)
    assert caught.value.problems == ("passwd: not a regular file or directory", "pipe: not a regular file or directory")


def test_gate_refuses_a_release_without_a_required_file(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    with pytest.raises(PublishError, match="key-12345678.txt is missing"):
        publish(dist, site_files("v1", "a.1111.png"), SETTINGS, now=1.0, required=("index.html", "key-12345678.txt"))
    assert live_release(dist) is None


def test_only_visible_changes_count_as_page_changes(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    publish(dist, site_files("v1", "a.1111111111.png"), SETTINGS, now=1.0)
    rehashed = publish(dist, site_files("v1", "a.2222222222.png"), SETTINGS, now=2.0)
    assert rehashed.switched and changed(rehashed, dist) == ()
    edited = publish(dist, site_files("v2", "a.2222222222.png"), SETTINGS, now=3.0)
    assert changed(edited, dist) == ("index.html",)
    assert (
        visible(b'<meta name="build" content="abc"><link href="/assets/s.0123456789.css" integrity="sha384-x">')
        == b'<meta name="build" content=""><link href="/assets/" integrity="">'
    )
    # An icon now offered in another format, at other densities: the same icon to a reader.
    before = (
        b'<picture><source type="image/avif" srcset="/assets/icons/a.1111111111.avif 1x">'
        b'<img src="/assets/icons/a.2222222222.png" srcset="/assets/icons/a@2x.3333333333.png 2x" alt=""></picture>'
    )
    after = (
        b'<picture><source type="image/webp" srcset="/assets/icons/a.4444444444.webp 1x, '
        b'/assets/icons/a@1.6x.5555555555.webp 1.6x"><img src="/assets/icons/a.6666666666.png" alt=""></picture>'
    )
    assert visible(before) == visible(after)
    assert visible(after) != visible(after.replace(b'alt=""', b'alt="Gem"'))


def test_releases_that_never_went_live_do_not_push_out_the_live_ones_assets(tmp_path: Path) -> None:
    """A run killed between its rename and its switch leaves a release that was never served;
    five of them must not make retention forget what the live release's pages name."""
    dist = tmp_path / "dist"
    short = PublishSettings(keep_releases=2, retention_hours=0.0)
    live = publish(dist, site_files("v1", "a.1111.png"), short, now=1.0)

    def die_before_switch(name: str) -> None:
        if name == "before_switch":
            raise KeyboardInterrupt

    for n in range(5):
        with pytest.raises(KeyboardInterrupt):
            publish(dist, site_files(f"orphan{n}", f"o.{n}.png"), short, now=2.0 + n, checkpoint=die_before_switch)
    assert live_release(dist) == live.release
    after = publish(dist, site_files("v2", "a.2222.png"), short, now=10.0)
    assert (dist / "current/assets/a.1111.png").is_file()  # the page served until now still works
    assert sorted(p.name for p in (dist / "releases").iterdir() if p.is_dir()) == [live.release, after.release]


def test_the_gate_checks_relative_urls_against_the_page_and_names_malformed_ones(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    good = publish(dist, site_files("v1", "a.1111.png"), SETTINGS, now=1.0)
    relative = {
        **site_files("v2", "a.1111.png"),
        "docs/page.html": b'<img src="img/logo.png"><a href="../">up</a>',
        "docs/img/logo.png": b"logo",
    }
    assert publish(dist, relative, SETTINGS, now=2.0).switched  # resolved against docs/: present
    for page, problem in [
        (b'<img src="missing.png">', "index.html names /missing.png, which is not in the release"),
        (b'<a href="/%00">x</a>', "index.html names '/%00' holds a control character; fix the template"),
        (b'<a href="http://[::1">x</a>', "index.html names 'http://[::1' is not a valid URL"),
        (b'<a href="../../etc/passwd">x</a>', "climbs above the site's root"),
    ]:
        with pytest.raises(PublishError) as caught:
            publish(dist, {**site_files("v3", "a.1111.png"), "index.html": page}, SETTINGS, now=3.0)
        assert any(problem in line for line in caught.value.problems), caught.value.problems
    assert live_release(dist) != good.release and (dist / "current" / "docs" / "page.html").is_file()
