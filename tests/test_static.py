"""Issue 11: SITE/static/ published as is (and fingerprinted for asset_url), and the built-in
template helpers: `picture()` without an import, overridden by a site's own macro."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from pipeline.errors import TemplateError
from pipeline.model import Candidate, Code, IconRef, IconSource, Reward
from pipeline.render import environment, render_pages

from .conftest import REPO, run_cli
from .test_render import NASTY, view

LOGO_LINE = """<img src="{{ asset_url('img/logo.png') }}" alt="logo"> <a href="/img/logo.png">logo</a>"""


def add_to_index(site: Path, markup: str) -> None:
    index = site / "templates" / "index.html"
    text = index.read_text()
    assert "{% block main %}\n" in text
    index.write_text(text.replace("{% block main %}\n", "{% block main %}\n" + markup + "\n", 1))


def add_static(site: Path) -> tuple[bytes, bytes]:
    logo = next((site / "icons").glob("*.png")).read_bytes()
    security = b"Contact: mailto:security@example.org\nExpires: 2030-01-01T00:00:00Z\n"
    (site / "static" / "img").mkdir(parents=True)
    (site / "static" / ".well-known").mkdir()
    (site / "static" / "img" / "logo.png").write_bytes(logo)
    (site / "static" / ".well-known" / "security.txt").write_bytes(security)
    return logo, security


def live(site: Path) -> tuple[str, bytes]:
    current = site / "dist" / "current"
    return os.readlink(current), (current / "index.html").read_bytes()


# ---- static/ -----------------------------------------------------------------------------------


def test_static_files_are_published_at_their_path_and_fingerprinted(site: Path) -> None:
    logo, security = add_static(site)
    add_to_index(site, LOGO_LINE)
    result = run_cli(site, "build", "--offline")
    assert result.returncode == 0, result.stderr
    current = site / "dist" / "current"
    assert (current / "img" / "logo.png").read_bytes() == logo
    assert (current / ".well-known" / "security.txt").read_bytes() == security
    manifest = json.loads((current / "manifest.json").read_text())
    hashed = manifest["img/logo.png"]["url"]
    assert re.fullmatch(r"/assets/img/logo\.[0-9a-f]{10}\.png", hashed)
    assert manifest["img/logo.png"]["type"] == "image/png"
    assert (current / hashed.lstrip("/")).read_bytes() == logo
    page = (current / "index.html").read_text()
    assert f'src="{hashed}"' in page and 'href="/img/logo.png"' in page
    again = run_cli(site, "build", "--offline")  # deterministic: nothing new to publish
    assert again.returncode == 0 and "0 files" in again.stdout


def test_a_link_to_a_missing_static_file_fails_the_gate(site: Path) -> None:
    add_static(site)
    add_to_index(site, LOGO_LINE)
    assert run_cli(site, "build", "--offline").returncode == 0
    before = live(site)
    add_to_index(site, '<a href="/img/missing.png">missing</a>')
    result = run_cli(site, "build", "--offline")
    assert result.returncode == 73, result.stderr
    assert "index.html names /img/missing.png, which is not in the release" in result.stderr
    assert live(site) == before


@pytest.mark.parametrize(
    "name", ["index.html", "404.html", "codes.json", "sitemap.xml", "robots.txt", "manifest.json", "favicon.ico"]
)
def test_a_static_file_named_like_a_generated_one_is_refused(site: Path, name: str) -> None:
    (site / "static").mkdir()
    (site / "static" / name).write_bytes(b"mine")
    result = run_cli(site, "build", "--offline")
    assert result.returncode == 78, result.stderr
    assert f"static/{name}: the build writes /{name} itself" in result.stderr
    assert not (site / "dist" / "current").exists()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("assets/x.png", "static/assets/x.png: /assets/ holds the fingerprinted files"),
        ("index.html.gz", "static/index.html.gz: the build writes the compressed copy of /index.html"),
        ("style.css", "static/style.css: asset_url('style.css') already names a generated asset"),
    ],
)
def test_other_clobbering_static_files_are_refused(site: Path, path: str, message: str) -> None:
    (site / "static" / path).parent.mkdir(parents=True, exist_ok=True)
    (site / "static" / path).write_bytes(b"mine")
    result = run_cli(site, "build", "--offline")
    assert result.returncode == 78, result.stderr
    assert message in result.stderr
    assert not (site / "dist" / "current").exists()


def test_symlinks_and_special_files_in_static_are_refused(site: Path, tmp_path: Path) -> None:
    (site / "static" / "img").mkdir(parents=True)
    (site / "static" / "img" / "ok.png").write_bytes(b"fine")
    (tmp_path / "outside.txt").write_text("secret")
    (site / "static" / "link.txt").symlink_to(tmp_path / "outside.txt")
    (site / "static" / "dirlink").symlink_to(tmp_path)
    os.mkfifo(site / "static" / "img" / "pipe")
    result = run_cli(site, "build", "--offline", timeout=60)
    assert result.returncode == 78, result.stderr
    assert "static/link.txt: is a symlink" in result.stderr
    assert "static/dirlink: is a symlink" in result.stderr
    assert "static/img/pipe: is not a regular file" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (site / "dist" / "current").exists()


# ---- picture() built in ------------------------------------------------------------------------


def one_density_icon(name: str) -> IconRef:
    png = IconSource("image/png", (Candidate("/assets/icons/one.png", 1.0, 64, 32),))
    webp = IconSource("image/webp", (Candidate("/assets/icons/one.webp", 1.0, 64, 32),))
    avif = IconSource("image/avif", (Candidate("/assets/icons/one.avif", 1.0, 64, 32),))
    return IconRef(name, 'One "<alt>" & more', 64, 32, (avif, webp), png)


CALLS = (
    '{{ picture("A") }}|{{ picture(NASTY, class="big <b>", alt=NASTY) }}|{{ picture("A", "pos") }}'
    '|{{ picture("One", alt="") }}|{{ picture("One", alt=none, class="x") }}|{{ picture("A", "c", "alt by position") }}'
)


def render_string(source: str, eager: int = 2) -> str:
    page = view(["A", NASTY])
    page.icons["One"] = one_density_icon("One")
    env = environment(REPO / "templates", page, eager=eager)
    return env.from_string(source).render(NASTY=NASTY)


def test_the_built_in_picture_renders_exactly_as_the_macro() -> None:
    built_in = render_string(CALLS)
    macro = render_string('{% from "_macros.html" import picture %}' + CALLS)
    assert built_in == macro
    assert built_in.count("<picture>") == 6 and 'loading="eager"' in built_in and 'loading="lazy"' in built_in
    assert "<b>" not in built_in and "&lt;b&gt;" in built_in and "<script>" not in built_in


def test_the_default_pages_are_byte_identical_with_the_built_in_picture(tmp_path: Path) -> None:
    templates = shutil.copytree(REPO / "templates", tmp_path / "templates")
    macros = (templates / "_macros.html").read_text()
    without, removed = re.subn(r"\{% macro picture\(.*?\{%- endmacro %\}\n\n", "", macros, flags=re.S)
    assert removed == 1
    (templates / "_macros.html").write_text(without)
    index = (templates / "index.html").read_text()
    assert '{% from "_macros.html" import picture, code_row %}' in index
    (templates / "index.html").write_text(index.replace("import picture, code_row", "import code_row"))
    codes = (
        Code("C1", dt.date(2026, 11, 1), None, (Reward("A", 1), Reward(NASTY, 2)), note="n"),
        Code("C2", dt.date(2026, 1, 1), dt.date(2026, 2, 1), (Reward("A", 1000),)),
    )
    site = view(["A", NASTY, "B"], codes)
    before = {p.path: p.data for p in render_pages(REPO / "templates", site)}
    after = {p.path: p.data for p in render_pages(templates, site)}
    assert after == before
    assert before["index.html"].count(b"<picture>") == 6


def test_a_site_macro_named_picture_overrides_the_built_in(tmp_path: Path) -> None:
    templates = shutil.copytree(REPO / "templates", tmp_path / "templates")
    (templates / "_mine.html").write_text("{% macro picture(name) %}MINE:{{ name }}{% endmacro %}")
    (templates / "imported.html").write_text('{% from "_mine.html" import picture %}[{{ picture("A") }}]')
    (templates / "inline.html").write_text('{% macro picture(name) %}OWN:{{ name }}{% endmacro %}[{{ picture("A") }}]')
    (templates / "plain.html").write_text('[{{ picture("A") }}]')
    pages = {p.path: p.data.decode() for p in render_pages(templates, view(["A"]))}
    assert pages["imported.html"] == "[MINE:A]"
    assert pages["inline.html"] == "[OWN:A]"
    assert pages["plain.html"].startswith("[<picture><source type=")


def test_built_in_picture_errors_name_the_template_line(tmp_path: Path) -> None:
    templates = shutil.copytree(REPO / "templates", tmp_path / "templates")
    (templates / "bad.html").write_text('line 1\n{{ picture("Nope") }}\n')
    with pytest.raises(TemplateError, match=r"templates/bad.html:2: icon 'Nope' is not in icon_map.yaml"):
        render_pages(templates, view(["A"]))
    (templates / "bad.html").write_text('line 1\n\n{{ picture("A", size=3) }}\n')
    with pytest.raises(TemplateError, match=r"templates/bad.html:3: picture\(\) takes no keyword argument 'size'"):
        render_pages(templates, view(["A"]))
