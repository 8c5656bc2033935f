"""`pipeline init` and `pipeline check`, run as a user runs them (subprocesses, real nginx).

From an empty folder: init, check, build --offline, and nginx with the shipped config serves the
page and every file it names. init never overwrites: where any of its files exists it writes
nothing and names them. check reports a broken input with build's very message and exit code,
and touches nothing (no dist/, no .cache/); its time on the default site is recorded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import http.client
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from pipeline import check, config, render
from pipeline.config.site import SECTIONS
from pipeline.init import scaffold
from pipeline.model import (
    Code,
    Content,
    EncodeSettings,
    FetchSettings,
    IndexNowSettings,
    PublishSettings,
    RenderSettings,
    Reward,
    SiteView,
)

from . import probe
from .conftest import REPO, copy_default_site
from .nginx import nginx_server  # noqa: F401 (fixture)

SCAFFOLD = REPO / "pipeline" / "scaffold"
EX_CANTCREAT = 73
TYPES = {".css": "text/css", ".png": "image/png", ".webp": "image/webp", ".avif": "image/avif"}
OK_LINE = re.compile(r"^ok: (\d+) icons, (\d+) codes, (\d+) templates\n$")


def pipeline(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline ARGS` in `cwd`, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root -> (size, mtime): what "touches nothing" compares."""
    return {p.relative_to(root).as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def get(base: str, path: str) -> tuple[int, str, bytes]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, (response.getheader("content-type") or "").split(";")[0], response.read()
    finally:
        conn.close()


# ---- from an empty folder to a served page ----------------------------------------------------------


@pytest.fixture
def empty_folder() -> Iterator[Path]:
    """An empty folder directly under the system temp dir: pytest's own tmp dirs are chmodded back
    to 0700 by any pytest session that starts meanwhile, which cuts nginx's workers off."""
    holder = Path(tempfile.mkdtemp(prefix="pipeline-init-"))
    try:
        (holder / "site").mkdir()
        yield holder / "site"
    finally:
        shutil.rmtree(holder, ignore_errors=True)


@pytest.mark.nginx
def test_init_check_build_and_nginx_serves_the_page_and_every_icon(
    empty_folder: Path,
    nginx_server,  # noqa: F811
    record_figure,
) -> None:
    steps = [time.perf_counter()]
    made = pipeline("init", cwd=empty_folder)  # DIR defaults to the current folder
    assert made.returncode == 0, made.stderr
    steps.append(time.perf_counter())
    checked = pipeline("check", cwd=empty_folder)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "ok: 2 icons, 3 codes, 4 templates\n", "")
    steps.append(time.perf_counter())
    built = pipeline("build", "--offline", cwd=empty_folder)
    assert built.returncode == 0, built.stderr
    steps.append(time.perf_counter())
    base = nginx_server(empty_folder)
    status, media_type, body = get(base, "/")
    steps.append(time.perf_counter())
    stages = ("init", "check", "build", "nginx")
    split = " + ".join(f"{n} {b - a:.2f}" for n, a, b in zip(stages, steps, steps[1:], strict=False))
    record_figure("pipeline init -> page served by nginx", f"{steps[-1] - steps[0]:.2f} s ({split})")
    assert (status, media_type) == (200, "text/html")
    page = body.decode()
    assert "WELCOME2030" in page and "BETATHANKS" in page  # an active and an expired code

    names = probe.local_urls(page)
    for slug in ("gem", "coin"):  # every icon in icon_map.yaml, in the WebP <source> and the PNG <img>
        for ext in (".webp", ".png"):
            assert any(u.startswith(f"/assets/icons/{slug}") and u.endswith(ext) for u in names), (slug, ext, names)
    for url in names:
        status, media_type, data = get(base, url)
        assert status == 200, url
        if url.startswith("/assets/"):
            assert media_type == TYPES[Path(url).suffix], url
            assert data, url
    status, media_type, body = get(base, "/no-such-page")
    assert (status, media_type) == (404, "text/html") and b"Page not found" in body


def test_init_creates_the_folder_and_says_what_comes_next(tmp_path: Path) -> None:
    made = pipeline("init", str(tmp_path / "a" / "new" / "site"))
    assert made.returncode == 0, made.stderr
    written = sorted(p.relative_to(tmp_path / "a/new/site").as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(scaffold()), written
    assert "pipeline build --offline --site" in made.stdout
    assert (tmp_path / "a/new/site/icons/gem.png").read_bytes() == (REPO / "icons/polychrome.png").read_bytes()


# ---- never overwrites ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "existing, named",
    [
        ({"site.toml": b"# mine\n"}, ["site.toml"]),
        ({"templates/index.html": b"<p>mine</p>"}, ["templates/index.html"]),
        ({"icons": b"a file where init wants a folder"}, ["icons (a file where a folder goes)"]),
    ],
)
def test_init_writes_nothing_where_a_file_exists_and_names_it(
    tmp_path: Path, existing: dict[str, bytes], named: list[str]
) -> None:
    for relative, data in existing.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(data)
    before = tree(tmp_path)
    refused = pipeline("init", str(tmp_path))
    assert refused.returncode == EX_CANTCREAT, refused.stderr
    assert tree(tmp_path) == before  # nothing written, nothing changed
    assert "nothing was written" in refused.stderr
    assert [line.strip() for line in refused.stderr.splitlines()[1:]] == named
    assert refused.stdout == ""


def test_init_twice_refuses_and_names_every_file(tmp_path: Path) -> None:
    assert pipeline("init", str(tmp_path)).returncode == 0
    (tmp_path / "codes.yaml").write_text("game: Mine\ncodes: []\n")  # an edit the second init must keep
    before = tree(tmp_path)
    again = pipeline("init", str(tmp_path))
    assert again.returncode == EX_CANTCREAT
    assert tree(tmp_path) == before
    assert [line.strip() for line in again.stderr.splitlines()[1:]] == list(scaffold())


# ---- the scaffold is complete and shipped -------------------------------------------------------------


def key_comment(text: str, section: str, key: str) -> str:
    """The comment lines right above `key = ` in `[section]` of a TOML text."""
    lines = text.splitlines()
    start = lines.index(f"[{section}]")
    at = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(f"{key} ="))
    above = []
    while lines[at - 1 - len(above)].startswith("#"):
        above.append(lines[at - 1 - len(above)])
    return "\n".join(reversed(above))


def test_site_toml_has_every_key_with_its_default_and_a_comment(tmp_path: Path) -> None:
    text = (SCAFFOLD / "site.toml").read_text()
    written = tomllib.loads(text)
    assert {s: set(keys) for s, keys in written.items()} == {s: set(rules) for s, rules in SECTIONS.items()}
    for section, rules in SECTIONS.items():
        for key in rules:
            comment = key_comment(text, section, key)
            assert "Default" in comment, f"[{section}] {key} has no comment giving its default"
    assert pipeline("init", str(tmp_path)).returncode == 0
    site = config.load_site(tmp_path)  # the values written are the defaults (title and base_url aside)
    assert (site.fetch, site.render, site.publish, site.indexnow) == (
        FetchSettings(),
        RenderSettings(),
        PublishSettings(),
        IndexNowSettings(),
    )
    assert {spec.settings for spec in site.icons} == {EncodeSettings()}
    assert (site.content, site.jobs, site.base_url) == ("codes.yaml", 0, "http://localhost")


def test_codes_file_shows_every_field_and_icon_map_every_source() -> None:
    codes = yaml.safe_load((SCAFFOLD / "codes.yaml").read_text())
    assert set(codes) == {f.name for f in dataclasses.fields(Content)}
    assert set().union(*codes["codes"]) == {f.name for f in dataclasses.fields(Code)}
    rewards = [r for c in codes["codes"] for r in c["rewards"]]
    assert set().union(*rewards) == {f.name for f in dataclasses.fields(Reward)}
    icons = yaml.safe_load((SCAFFOLD / "icon_map.yaml").read_text())
    assert 1 <= len(icons) <= 2
    for name, entry in icons.items():
        url = entry if isinstance(entry, str) else entry["url"]
        assert config.url_problem(url) is None and url.startswith("https://")
        assert (SCAFFOLD / "icons" / f"{config.slugify(name)}.png").is_file(), name
    assert {r["icon"] for r in rewards} == set(icons)
    assert "Apache" in (SCAFFOLD / "icons" / "NOTICE.md").read_text()


def test_every_scaffold_file_is_shipped_as_package_data() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    for relative in scaffold():
        folder, _, name = ("scaffold/" + relative).rpartition("/")
        package = "pipeline." + folder.replace("/", ".")
        assert package in setuptools["packages"], package
        globs = setuptools.get("package-data", {}).get(package, [])
        assert any(fnmatch.fnmatch(name, g) for g in globs), f"{relative}: not in package-data of {package}"


# ---- check: build's errors, nothing touched -----------------------------------------------------------


@pytest.fixture(scope="module")
def starter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a fresh `pipeline init` site, the encode cache of one offline build of it)."""
    made = tmp_path_factory.mktemp("starter")
    assert pipeline("init", str(made / "site")).returncode == 0
    warm = tmp_path_factory.mktemp("warm")
    shutil.copytree(made / "site", warm / "site")
    assert pipeline("build", "--offline", "--site", str(warm / "site")).returncode == 0
    return made / "site", warm / "site" / ".cache"


BROKEN = {  # file, text, replacement
    "icon_map-scheme": ("icon_map.yaml", "Gem: https://", "Gem: ftp://"),
    "icon_map-syntax": ("icon_map.yaml", "  alt: Gold coin", "  alt: [Gold coin"),
    "site.toml-key": ("site.toml", "eager = 6", "eagr = 6"),
    "codes-unknown-icon": ("codes.yaml", "{icon: Gem, amount: 100}", "{icon: Gme, amount: 100}"),
    "codes-date": ("codes.yaml", "added: 2026-01-01", "added: 2026-13-01"),
    "codes-missing": ("site.toml", 'content = "codes.yaml"', 'content = "codez.yaml"'),
    "template-syntax": ("templates/index.html", "{% endblock %}", "{% endblok %}"),
    "template-partial": ("templates/_macros.html", "{%- endmacro %}", "{%- endmacr %}"),
    "template-filter": ("templates/index.html", "active|length }} working", "active|lenght }} working"),
    "template-missing": ("templates/404.html", '"_base.html"', '"_bse.html"'),
}


@pytest.mark.parametrize("case", BROKEN)
def test_check_fails_as_build_does_and_touches_nothing(tmp_path: Path, starter: tuple[Path, Path], case: str) -> None:
    fresh, warm_cache = starter
    site = tmp_path / "site"
    shutil.copytree(fresh, site)
    relative, text, replacement = BROKEN[case]
    original = (site / relative).read_text()
    assert text in original
    (site / relative).write_text(original.replace(text, replacement, 1))
    before = tree(site)
    checked = pipeline("check", "--site", str(site))
    assert tree(site) == before and not (site / "dist").exists() and not (site / ".cache").exists()
    shutil.copytree(warm_cache, site / ".cache")  # build the same input, without the encoding wait
    built = pipeline("build", "--offline", "--site", str(site))
    assert built.returncode in (65, 78), built.stderr
    assert (checked.returncode, checked.stderr) == (built.returncode, built.stderr)
    assert checked.stdout == ""


def test_check_reports_independent_problems_together_build_first(tmp_path: Path, starter: tuple[Path, Path]) -> None:
    site = tmp_path / "site"
    shutil.copytree(starter[0], site)
    (site / "icon_map.yaml").write_text((site / "icon_map.yaml").read_text().replace("Gem: https://", "Gem: ftp://"))
    (site / "templates/index.html").write_text("{% if %}")
    checked = pipeline("check", "--site", str(site))
    built = pipeline("build", "--offline", "--site", str(site))
    assert checked.returncode == built.returncode == 78
    assert checked.stderr.startswith(built.stderr)  # build's error first, with build's exit code
    assert "templates/index.html:1: syntax error" in checked.stderr[len(built.stderr) :]


def test_check_does_not_fetch_a_codes_feed(tmp_path: Path, starter: tuple[Path, Path]) -> None:
    site = tmp_path / "site"
    shutil.copytree(starter[0], site)
    toml = (site / "site.toml").read_text()
    (site / "site.toml").write_text(toml.replace('content = "codes.yaml"', 'content = "https://192.0.2.1/codes.json"'))
    checked = pipeline("check", "--site", str(site))
    assert (checked.returncode, checked.stdout) == (0, "ok: 2 icons, codes from a feed (not fetched), 4 templates\n")


def test_check_notes_an_icon_without_a_copy(tmp_path: Path, starter: tuple[Path, Path]) -> None:
    site = tmp_path / "site"
    shutil.copytree(starter[0], site)
    (site / "icons" / "coin.png").unlink()
    checked = pipeline("check", "--site", str(site))
    assert checked.returncode == 0 and OK_LINE.match(checked.stdout)
    assert "icon 'Coin' has no copy in icons/ yet" in checked.stderr


def test_check_compiles_templates_as_render_does(tmp_path: Path) -> None:
    """check.py may not import render (stage modules are composed by build only), so it keeps its
    own compiling environment: it must match render's in everything that decides what compiles."""
    view = SiteView("t", "http://localhost", Content("g", ()), {}, {}, "id", dt.date.today())
    ours, theirs = check.environment(tmp_path), render.environment(tmp_path, view)
    for attribute in ("trim_blocks", "lstrip_blocks", "undefined", "block_start_string", "variable_start_string"):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert set(ours.filters) == set(theirs.filters)
    assert set(ours.tests) == set(theirs.tests)
    assert set(ours.extensions) == set(theirs.extensions)
    assert type(ours.loader) is type(theirs.loader)
    assert ours.autoescape("x.html") == theirs.autoescape("x.html")


def test_check_on_the_default_site_is_fast_and_light(tmp_path: Path, record_figure) -> None:
    site = copy_default_site(tmp_path / "site")
    before = tree(site)
    wall, cpu = [], []
    for _ in range(5):
        started, used = time.perf_counter(), _children_cpu()
        checked = pipeline("check", "--site", str(site))
        wall.append(time.perf_counter() - started)
        cpu.append(_children_cpu() - used)
        assert checked.returncode == 0 and OK_LINE.match(checked.stdout), checked.stderr
    assert tree(site) == before
    median = statistics.median(wall)
    record_figure(
        "pipeline check, default site (median of 5, process start included)",
        f"{median:.3f} s wall, {statistics.median(cpu):.3f} s CPU; load average {os.getloadavg()[0]:.1f}",
    )
    assert median < 5.0  # loose: the machines are shared; the figure is what to read
    imports = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pipeline", "check", "--site", str(site)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    loaded = {line.split("|")[-1].strip() for line in imports.stderr.splitlines() if line.startswith("import time:")}
    heavy = {name for name in loaded if name.split(".")[0] in ("PIL", "numpy", "httpx", "oxipng", "brotli")}
    assert not heavy, f"pipeline check imports {sorted(heavy)}"
