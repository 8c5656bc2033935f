"""Stage 4: the templates see ICON_MAP safely, <picture> falls back to PNG, errors name the line."""

from __future__ import annotations

import datetime as dt
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pipeline.errors import TemplateError
from pipeline.model import Code, Content, IconRef, IconSource, ManifestEntry, Reward, SiteView
from pipeline.render import icon_map_json, render_pages

from .conftest import REPO

NASTY = 'Evil </script><script>alert(1)</script> "quote" \'single\' <!-- \u2028\u2029 &amp;'


def view(names: list[str], codes: tuple[Code, ...] = ()) -> SiteView:
    icons = {n: IconRef(n, n + " alt", 64, 64, (IconSource("image/webp", f"/assets/icons/i{i}.webp"),), f"/assets/icons/i{i}.png")
             for i, n in enumerate(names)}
    css = {"style.css": ManifestEntry("style.css", "/assets/style.0123456789.css", 10, "sha384-x", "text/css")}
    return SiteView("Title", "https://example.org", Content("Game", codes), icons, css, "build1", dt.date(2026, 11, 27))


class Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.count, self.bodies, self._in = 0, [], False

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.count, self._in = self.count + 1, True
            self.bodies.append("")

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
    icon_map = json.loads(re.search(r"const ICON_MAP = (.*);", parser.bodies[0]).group(1))
    assert list(icon_map) == [NASTY]
    assert json.loads(pages["codes.json"])["codes"][0]["note"] == NASTY


def test_picture_has_sources_and_png_fallback_img() -> None:
    reward = Code("C1", dt.date(2026, 11, 1), None, (Reward("Gem", 2),))
    html = {p.path: p.data.decode() for p in render_pages(REPO / "templates", view(["Gem"], (reward,)))}["index.html"]
    picture = re.search(r"<picture>.*?</picture>", html, re.S).group(0)
    assert '<source type="image/webp" srcset="/assets/icons/i0.webp">' in picture
    img = re.search(r"<img [^>]+>", picture).group(0)
    for attribute in ('src="/assets/icons/i0.png"', 'width="64"', 'height="64"', 'alt="Gem alt"',
                      'loading="lazy"', 'decoding="async"'):
        assert attribute in img


def test_expired_and_active_split_by_today() -> None:
    codes = (Code("OLD", dt.date(2026, 1, 1), dt.date(2026, 11, 26), (Reward("Gem", 1),)),
             Code("NEW", dt.date(2026, 11, 1), dt.date(2026, 11, 27), (Reward("Gem", 1),)))
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
    (templates / "index.html").write_text('{% extends "_base.html" %}\n{% block main %}\n\n{{ no_such_thing }}\n{% endblock %}\n')
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
