"""`pipeline report` (issue 11): the HTML page comparing each icon's source with its cached files,
checked against the encode cache itself and then drawn by headless Chromium."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pipeline.config import load_site

from .conftest import run_cli
from .test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, LAUNCH_TIMEOUT_MS, TIMEOUT_MS, require_chromium


class Page(HTMLParser):
    """The report's marked elements: icon sections, variant cells, per-format totals, images."""

    def __init__(self) -> None:
        super().__init__()
        self.icons: list[str] = []
        self.variants: list[dict[str, str]] = []
        self.totals: dict[str, int] = {}
        self.grand = -1
        self.images = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        if tag == "section" and "icon" in classes:
            self.icons.append(a["data-icon"])
        elif tag == "td" and "variant" in classes:
            self.variants.append(a)
        elif tag == "tr" and "total" in classes:
            self.totals[a["data-format"]] = int(a["data-bytes"])
        elif tag == "tr" and "grand" in classes:
            self.grand = int(a["data-bytes"])
        elif tag == "img":
            assert a["src"].startswith("data:image/"), a["src"][:40]
            self.images += 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def cached_files(site: Path) -> list[tuple[dict[str, object], dict[str, object], int]]:
    """(rendition, variant, file size) for every file of every entry in the site's encode cache."""
    found = []
    for meta_path in sorted((site / ".cache" / "encode").glob("??/*/meta.json")):
        meta = json.loads(meta_path.read_text())
        for rendition in meta["renditions"]:
            for variant in rendition["variants"]:
                found.append((rendition, variant, (meta_path.parent / variant["file"]).stat().st_size))
    return found


def test_report_shows_every_icon_and_variant_and_its_totals_add_up(site: Path, tmp_path: Path) -> None:
    assert run_cli(site, "build", "--offline").returncode == 0
    out = tmp_path / "out" / "report.html"
    result = run_cli(site, "report", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    page = Page()
    page.feed(out.read_text(encoding="utf-8"))
    names = [spec.name for spec in load_site(site).icons]
    assert page.icons == names  # every icon, in icon_map.yaml order
    assert "not encoded yet" not in "".join(page.text)
    files = cached_files(site)
    assert len(list((site / ".cache" / "encode").glob("??/*/meta.json"))) == len(names)  # this site's entries only
    shown = sorted((v["data-format"], v["data-density"], v["data-detail"], int(v["data-bytes"])) for v in page.variants)
    expected = sorted((str(v["format"]), f"{float(str(r['density'])):g}x", str(v["detail"]), n) for r, v, n in files)
    assert shown == expected
    assert {v["data-icon"] for v in page.variants} == set(names)
    for fmt in {str(v["format"]) for _, v, _ in files}:
        assert page.totals[fmt] == sum(n for _, v, n in files if v["format"] == fmt)
    assert sum(page.totals.values()) == page.grand == sum(n for _, _, n in files)
    rows = {(v["data-icon"], v["data-density"]) for v in page.variants}
    assert page.images == 2 * (len(files) + len(rows))  # each file and each row's source: 1x and magnified


def test_report_lists_icons_the_cache_lacks_and_escapes_names(cold_site: Path) -> None:
    icon_map = cold_site / "icon_map.yaml"
    icon_map.write_text(icon_map.read_text() + '"<b>Bold</b> & Co":\n  url: https://example.org/x.png\n')
    result = run_cli(cold_site, "report")
    assert result.returncode == 0, result.stderr
    out = Path(result.stdout.strip())
    assert out == cold_site.resolve() / ".cache" / "report.html"
    html = out.read_text(encoding="utf-8")
    assert html.count("not encoded yet: run pipeline build") == len(load_site(cold_site).icons) - 1
    assert "no source in icons/" in html
    assert "<b>Bold</b>" not in html and "&lt;b&gt;Bold&lt;/b&gt; &amp; Co" in html
    assert not (cold_site / ".cache" / "encode").exists()  # nothing was encoded


@pytest.mark.browser
def test_report_renders_in_chromium(site: Path, tmp_path: Path) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    out = tmp_path / "report.html"
    assert run_cli(site, "report", "--out", str(out)).returncode == 0
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=LAUNCH_TIMEOUT_MS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            try:
                tab = context.new_page()
                tab.set_default_timeout(TIMEOUT_MS)
                tab.goto(out.as_uri(), wait_until="load")
                images = tab.eval_on_selector_all(
                    "img", "els => els.map(e => ({complete: e.complete, width: e.naturalWidth}))"
                )
                tab.screenshot(path=str(shot), full_page=True)
            finally:
                context.close()
        finally:
            browser.close()
    assert images and all(i["complete"] and i["width"] > 0 for i in images), images
    from PIL import Image

    with Image.open(shot) as picture:
        colours = picture.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, "the screenshot is (nearly) one colour"
