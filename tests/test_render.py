"""Stage 4: the templates see ICON_MAP safely, <picture> falls back to PNG, errors name the line."""

from __future__ import annotations

import datetime as dt
import json
import re
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pipeline.errors import TemplateError
from pipeline.model import Candidate, Code, Content, IconRef, IconSource, ManifestEntry, Reward, SiteView
from pipeline.render import CONTENT_SECURITY_POLICY, icon_map_json, render_pages

from .conftest import REPO

NASTY = "Evil </script><script>alert(1)</script> \"quote\" 'single' <!-- \u2028\u2029 &amp;"


def densities(mime: str, stem: str, ext: str) -> IconSource:
    return IconSource(mime, (Candidate(f"{stem}.{ext}", 1.0, 40, 40), Candidate(f"{stem}@2x.{ext}", 2.0, 80, 80)))


def view(names: list[str], codes: tuple[Code, ...] = ()) -> SiteView:
    icons = {
        n: IconRef(
            n,
            n + " alt",
            40,
            40,
            (densities("image/webp", f"/assets/icons/i{i}", "webp"),),
            densities("image/png", f"/assets/icons/i{i}", "png"),
        )
        for i, n in enumerate(names)
    }
    assets = {
        "style.css": ManifestEntry("style.css", "/assets/style.0123456789.css", 10, "sha384-x", "text/css"),
        "site.js": ManifestEntry("site.js", "/assets/site.0123456789.js", 10, "sha384-y", "text/javascript"),
    }
    today = dt.date(2026, 11, 27)
    return SiteView("Title", "https://example.org", Content("Game", codes), icons, assets, "build1", today)


class Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.count, self.bodies, self.attrs, self._in = 0, [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.count, self._in = self.count + 1, True
            self.bodies.append("")
            self.attrs.append(dict(attrs))

    def handle_endtag(self, tag):
        self._in = self._in and tag != "script"

    def handle_data(self, data):
        if self._in:
            self.bodies[-1] += data


def test_icon_map_json_cannot_break_out_of_script() -> None:
    text = icon_map_json(view([NASTY, "Plain"]).icons)
    assert "<" not in text and ">" not in text and "\u2028" not in text and "&" not in text
    assert json.loads(text)[NASTY]["alt"] == NASTY + " alt"


def test_nasty_names_render_to_the_same_script_count_and_parse_back() -> None:
    reward = Code("C1", dt.date(2026, 11, 1), None, (Reward(NASTY, 1),), note=NASTY)
    pages = {p.path: p.data.decode() for p in render_pages(REPO / "templates", view([NASTY], (reward,)))}
    parser = Scripts()
    parser.feed(pages["index.html"])
    template_scripts = (REPO / "templates" / "index.html").read_text().count("<script")
    assert parser.count == template_scripts
    assert parser.attrs[0] == {"type": "application/json", "id": "icon-map"}  # the ICON_MAP data block
    icon_map = json.loads(parser.bodies[0])
    assert list(icon_map) == [NASTY]
    assert json.loads(pages["codes.json"])["codes"][0]["note"] == NASTY


def test_picture_lists_every_density_and_the_img_falls_back_to_the_1x_png() -> None:
    reward = Code("C1", dt.date(2026, 11, 1), None, (Reward("Gem", 2),))
    html = {p.path: p.data.decode() for p in render_pages(REPO / "templates", view(["Gem"], (reward,)))}["index.html"]
    picture = re.search(r"<picture>.*?</picture>", html, re.S).group(0)
    assert '<source type="image/webp" srcset="/assets/icons/i0.webp 1x, /assets/icons/i0@2x.webp 2x">' in picture
    img = re.search(r"<img [^>]+>", picture).group(0)
    for attribute in (
        'src="/assets/icons/i0.png"',
        'srcset="/assets/icons/i0@2x.png 2x"',
        'width="40"',
        'height="40"',
        'alt=""',
        'decoding="async"',
    ):
        assert attribute in img  # alt="": the reward's name is printed beside its icon


def test_the_first_icons_of_a_page_load_eagerly_the_rest_lazily() -> None:
    names = [f"Icon {i}" for i in range(4)]
    code = Code("C1", dt.date(2026, 11, 1), None, tuple(Reward(n, 1) for n in names))
    pages = render_pages(REPO / "templates", view(names, (code,)), eager=3)
    html = next(p.data.decode() for p in pages if p.path == "index.html")
    loading = re.findall(r'<img [^>]*loading="(\w+)"', html)
    assert len(loading) == 8  # four in the code, four in the legend
    assert loading == ["eager"] * 3 + ["lazy"] * 5
    again = next(
        p.data.decode()
        for p in render_pages(REPO / "templates", view(names, (code,)), eager=3)
        if p.path == "index.html"
    )
    assert again == html  # the count starts again for every page and every run


def test_picture_alt_defaults_to_the_icon_alt_text(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    (templates / "index.html").write_text(
        '{% extends "_base.html" %}{% from "_macros.html" import picture %}'
        '{% block main %}{{ picture("Gem") }}{% endblock %}'
    )
    html = next(p.data.decode() for p in render_pages(templates, view(["Gem"])) if p.path == "index.html")
    assert 'alt="Gem alt"' in html


def test_expired_and_active_split_by_today() -> None:
    codes = (
        Code("OLD", dt.date(2026, 1, 1), dt.date(2026, 11, 26), (Reward("Gem", 1),)),
        Code("NEW", dt.date(2026, 11, 1), dt.date(2026, 11, 27), (Reward("Gem", 1),)),
    )
    data = json.loads({p.path: p.data for p in render_pages(REPO / "templates", view(["Gem"], codes))}["codes.json"])
    assert [(c["code"], c["active"]) for c in data["codes"]] == [("OLD", False), ("NEW", True)]


def copy_templates(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    target.mkdir()
    for path in (REPO / "templates").iterdir():
        (target / path.name).write_text(path.read_text())
    return target


def test_unknown_icon_names_template_and_line(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    index = templates / "index.html"
    lines = index.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if "{% block main %}" in line) + 2
    lines.insert(at, '{{ picture("Missing Icon") }}')
    index.write_text("\n".join(lines))
    with pytest.raises(TemplateError) as caught:
        render_pages(templates, view(["Gem"]))
    message = str(caught.value)
    assert f"templates/index.html:{at + 1}" in message
    assert "icon 'Missing Icon' is not in icon_map.yaml" in message


def test_undefined_variable_and_syntax_error_name_the_line(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    (templates / "index.html").write_text(
        '{% extends "_base.html" %}\n{% block main %}\n\n{{ no_such_thing }}\n{% endblock %}\n'
    )
    with pytest.raises(TemplateError, match=r"templates/index.html:4: 'no_such_thing' is undefined"):
        render_pages(templates, view(["Gem"]))
    (templates / "index.html").write_text("{% if %}\n")
    with pytest.raises(TemplateError, match=r"templates/index.html:1: syntax error"):
        render_pages(templates, view(["Gem"]))


def test_sitemap_and_robots() -> None:
    pages = {p.path: p.data.decode() for p in render_pages(REPO / "templates", view(["Gem"]))}
    assert "<loc>https://example.org/</loc>" in pages["sitemap.xml"]
    assert "404" not in pages["sitemap.xml"]
    assert "Sitemap: https://example.org/sitemap.xml" in pages["robots.txt"]


def test_pages_carry_the_policy_and_no_inline_code() -> None:
    """The Content-Security-Policy (script-src 'self', no 'unsafe-inline') holds for what render
    writes: a <meta> policy first thing in <head>, every executable script a fingerprinted file
    with SRI, ICON_MAP a JSON data block (data, never run), no inline style or handler."""
    reward = Code("C1", dt.date(2026, 11, 1), None, (Reward(NASTY, 1),), note=NASTY)
    pages = {p.path: p.data.decode() for p in render_pages(REPO / "templates", view([NASTY], (reward,)))}
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY and "frame-ancestors" not in CONTENT_SECURITY_POLICY
    for name in ("index.html", "404.html"):
        text = pages[name]
        meta = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', text)
        assert meta and unescape(meta.group(1)) == CONTENT_SECURITY_POLICY, name
        assert meta.start() < text.index("<link") and meta.start() < text.index("<title"), name
        parser = Scripts()
        parser.feed(text)
        for attrs, body in zip(parser.attrs, parser.bodies, strict=True):
            if attrs.get("type") == "application/json":
                json.loads(body)
            else:
                assert attrs.get("src", "").startswith("/assets/") and attrs.get("integrity"), attrs
                assert not body.strip(), attrs
        assert not re.search(r"<style|\sstyle=|\son\w+=|javascript:", text, re.I), name
    index = Scripts()
    index.feed(pages["index.html"])
    assert [a.get("src") for a in index.attrs] == [None, "/assets/site.0123456789.js"]
    assert index.attrs[1]["integrity"] == "sha384-y"
