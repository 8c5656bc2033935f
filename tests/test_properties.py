"""Property tests (hypothesis) across config -> render -> minify -> publish.

1. icon_map.yaml: any text gives specs or a ConfigError whose problems all say icon_map.yaml:LINE;
   any mapping of names -> URLs gives only http(s) URLs without credentials and unique, file-safe
   slugs, and is accepted exactly when every entry is good.
2. codes data: any text, and any structured data, gives Content or a ConfigError; valid data comes
   back unchanged, and whatever is accepted can be rendered.
3. Rendering: no icon name, alt text, code, note or game name changes the number of <script>
   elements, ICON_MAP and codes.json parse back to what went in, no URL attribute is javascript:/data:.
4. Minify + publish: the minified pages pass the pre-switch gate (no missing local URL), keep the
   script count and an intact ICON_MAP.
5. site.toml: any text, and any valid TOML document of random sections, keys and values, gives a
   SiteConfig or a ConfigError whose problems all say site.toml:LINE (a line wherever the TOML
   parses), accepted exactly when every key is known and in range; the CLI exits 0 or 78, no traceback.

The bugs these properties found (twelve so far, all fixed) are kept at the end as regression
tests, their minimal inputs as explicit @examples.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from pipeline.config import load_content, load_icon_map, load_site, slugify
from pipeline.errors import ConfigError
from pipeline.fingerprint import fingerprint, icon_assets, icon_refs, manifest_json
from pipeline.gate import local_references
from pipeline.minify import minify_css, minify_pages
from pipeline.model import (
    Asset,
    Code,
    Content,
    EncodedIcon,
    Manifest,
    PublishSettings,
    Rendition,
    Reward,
    SiteView,
    Variant,
)
from pipeline.publish import publish
from pipeline.render import render_pages

from .conftest import REPO, copy_default_site

# hypothesis keeps a cache (and, on failure, patch files) in ./.hypothesis; keep the repo clean
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "pipeline-test-properties-hypothesis")

TEMPLATES = REPO / "templates"
TODAY = dt.date(2026, 11, 27)
TEMPLATE_SCRIPTS = (TEMPLATES / "index.html").read_text(encoding="utf-8").count("<script")
URL_ATTRIBUTES = {
    "href",
    "src",
    "srcset",
    "action",
    "formaction",
    "poster",
    "data",
    "cite",
    "background",
    "xlink:href",
    "ping",
    "manifest",
    "longdesc",
    "usemap",
    "icon",
}
BAD_SCHEMES = ("javascript:", "data:", "vbscript:")

EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "150"))  # e.g. PROPERTY_EXAMPLES=2000 for a deeper search
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the repo; a failure prints its reproducing example
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
SLOW_PROPERTY = settings(
    PROPERTY, max_examples=max(1, EXAMPLES * 2 // 5)
)  # render + minify + publish (fsync) per example
PINNED = settings(PROPERTY, max_examples=20, report_multiple_bugs=False)  # open-bug tests: stop at the explicit example


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("properties")


# ---- open bugs (see the test_bug_* tests at the end) ---------------------------------------------


class Hang(Exception):
    """A config load that did not finish in time (BUG-10, BUG-11)."""


@contextmanager
def time_limit(seconds: float):
    def expire(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(call, seconds: float = 3):
    """(value, None) or (None, ConfigError); anything else (a crash, a hang) fails the property."""
    try:
        with time_limit(seconds):
            return call(), None
    except ConfigError as error:
        return None, error


def check_problem_lines(error: ConfigError, label: str, last_line: int) -> None:
    """Every problem is `LABEL:LINE: ...` with 1 <= LINE <= last_line (the file's lines + 1)."""
    for problem in error.problems or (str(error),):
        if problem.startswith((f"{label}: is empty", f"{label}: nested too deeply")):  # no position to name
            continue  # no line to name: an empty file; a RecursionError carries no position
        match = re.match(rf"{re.escape(label)}:(\d+): ", problem)
        assert match, f"problem without {label}:LINE: {problem!r}"
        assert 1 <= int(match.group(1)) <= last_line, problem


# ---- strategies --------------------------------------------------------------------------------

PLAIN = st.characters(categories=["L", "M", "N", "P", "S", "Zs"])  # no control, format or line-separator characters
NO_CONTROL = st.characters(exclude_categories=["Cc", "Cs"])  # config rejects control characters (NUL too) everywhere
VALID_TEXT = st.characters(exclude_categories=["Cc", "Cs", "Zl", "Zp"])  # ... and U+2028/U+2029: what it accepts
NASTY_TOKENS = [
    "</script>",
    "</SCRIPT >",
    "<script>",
    "<!--",
    "-->",
    "<![CDATA[",
    "]]>",
    '"',
    "'",
    "`",
    "&",
    "&amp;",
    "&lt;",
    "&#34;",
    "&quot;",
    "<",
    ">",
    "=",
    "\u2028",
    "\u2029",
    "javascript:",
    "data:",
    "/",
    "\\",
    "${",
    " ",
    "  ",
    "{{",
    "}}",
    "{%",
    "<img src=x onerror=alert(1)>",
    "\\u003c",
    "\ufeff",
    "\u200b",
    "é",
]


def nasty(alphabet: st.SearchStrategy[str], min_size: int = 0) -> st.SearchStrategy[str]:
    return st.lists(
        st.one_of(st.sampled_from(NASTY_TOKENS), st.text(alphabet, max_size=6)), min_size=min_size, max_size=8
    ).map("".join)


YAML_TOKENS = [
    "\n",
    "\n",
    " ",
    "  ",
    "- ",
    ": ",
    ":",
    "? ",
    ", ",
    "[",
    "]",
    "{",
    "}",
    "# c",
    "&a ",
    "*a",
    "!!str ",
    "!!map ",
    "!!binary ",
    "!x ",
    "|\n",
    ">\n",
    "'",
    '"',
    "\\",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "\t",
    "<<: ",
    "~",
    "null",
    "true",
    "0x1F",
    "1e400",
    ".nan",
    "\ufeff",
    "\u2028",
    "\x85",
    "\r\n",
    "\r",
    "\x00",
    "\x01",
    "\x7f",
    "\x9f",
    "\ufffe",
    "é",
    "😀",
    "game: G\n",
    "codes:\n",
    "  - ",
    "code: ",
    "added: ",
    "expires: ",
    "note: ",
    "rewards: ",
    "icon: ",
    "amount: ",
    "url: ",
    "alt: ",
    "avif: ",
    "ssim_floor: ",
    "png_level: ",
    "lossless_only: ",
    "2026-11-27",
    "2026-02-30",
    "20261127",
    "https://example.org/a.png",
    "http://u:p@example.org/",
    "javascript:alert(1)",
    "ftp://x.org/a",
    "Gem",
    "Gold Coin",
    "</script>",
    "²",
    "١٢",
    "300",
    "0",
    "-1",
    '"\\ud800"',
    '"\\x00"',
    '"\\u2028"',
    '"\\N"',
    "{icon: Gem, amount: 3}",
]
YAMLISH = st.lists(st.one_of(st.sampled_from(YAML_TOKENS), st.text(max_size=6)), max_size=50).map("".join)
LONG = st.builds(
    lambda unit, count: unit * count,
    st.sampled_from(["x", "é", "- ", "a: ", "[", "{a: ", "https://e.org/", "#"]),
    st.integers(1, 3000),
)
ARBITRARY_TEXT = st.one_of(st.text(), YAMLISH, LONG)


def tagged_names() -> st.SearchStrategy[tuple[str, bool | None]]:
    """(icon name, True: config must accept it / False: must reject it / None: either)."""
    good = st.text(PLAIN, min_size=1, max_size=100).filter(lambda s: s.strip())
    bad = st.one_of(
        st.sampled_from(["", " ", "\u3000", "x" * 101, "é" * 150]),
        st.builds(
            lambda a, c, b: a + c + b,
            st.text(PLAIN, max_size=5),
            st.sampled_from(["\x00", "\x01", "\t", "\n", "\r", "\x1f", "\x7f", "\u2028", "\u2029"]),
            st.text(PLAIN, max_size=5),
        ),
    )
    return st.one_of(good.map(lambda s: (s, True)), bad.map(lambda s: (s, False)), st.text().map(lambda s: (s, None)))


HOST_LABEL = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?\Z")
GOOD_URL = st.builds(
    lambda scheme, labels, port, path: f"{scheme}://{'.'.join(labels)}{port}/{path}",
    st.sampled_from(["http", "https"]),
    st.lists(HOST_LABEL, min_size=1, max_size=4),
    st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")),
    st.text(st.sampled_from("abcXYZ019-._~/%?=&"), max_size=40),
)
BAD_URL = st.one_of(
    st.sampled_from(
        [
            "",
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:image/png;base64,AAAA",
            "vbscript:x",
            "ftp://x.org/a.png",
            "file:///etc/passwd",
            "//x.org/a.png",
            "x.org/a.png",
            "http://user:pw@x.org/a.png",
            "https://user@x.org/a",
            "https://:pw@x.org/a",
            "http://exämple.com/a.png",
            "http://x.org:0/a",
            "http://x.org:99999/a",
            "http:///a",
            "http://x .org/",
            "http://x.org/\x00",
            "http://x.org/a b",
            "http://-bad-.org/",
            "http://[::1/",
            "https://",
            "http://x.org/\u2028",
            "https://" + "a" * 2050 + ".org/",
        ]
    ),
    st.builds(
        lambda scheme, rest: f"{scheme}:{rest}",
        st.sampled_from(["javascript", "data", "ftp", "file", "gopher", "mailto", "ws"]),
        st.text(max_size=30),
    ),
    st.builds(
        lambda scheme, user, labels: f"{scheme}://{user}@{'.'.join(labels)}/",
        st.sampled_from(["http", "https"]),
        st.from_regex(r"\A[a-z]{1,5}(:[a-z]{0,5})?\Z"),
        st.lists(HOST_LABEL, min_size=1, max_size=3),
    ),
)
TAGGED_URL = st.one_of(
    GOOD_URL.map(lambda u: (u, True)), BAD_URL.map(lambda u: (u, False)), st.text().map(lambda u: (u, None))
)
TAGGED_ALT = st.one_of(
    st.text(PLAIN, max_size=40).map(lambda a: (a, True)),
    st.builds(lambda a, c: a + c, st.text(PLAIN, max_size=5), st.sampled_from(["\x00", "\n", "\x1b", "\u2028"])).map(
        lambda a: (a, False)
    ),
    st.text(max_size=20).map(lambda a: (a, None)),
)


# ---- 1. icon_map.yaml -------------------------------------------------------------------------


@PROPERTY
@given(text=ARBITRARY_TEXT)
@example(text="")
@example(text="A: https://x.org/a.png\nB: [unclosed\n")
@example(text="A: https://x.org/a.png\n" * 3)
@example(text="- a\n- b\n")
def test_icon_map_any_text_gives_specs_or_config_error_with_lines(scratch: Path, text: str) -> None:
    path = scratch / "icon_map.yaml"
    path.write_text(text, encoding="utf-8")
    as_read = path.read_text(encoding="utf-8")  # newlines translated, as load_icon_map reads it
    specs, error = outcome(lambda: load_icon_map(path))
    if error is not None:
        check_problem_lines(error, "icon_map.yaml", len(as_read.splitlines()) + 1)
    else:
        check_specs(specs)


@PROPERTY
@given(data=st.binary(max_size=200))
@example(data=b"A: https://x.org/\xff\n")
@example(data=b"\xef\xbb\xbfA: https://x.org/a.png\n")
def test_icon_map_any_bytes_gives_specs_or_config_error(scratch: Path, data: bytes) -> None:
    path = scratch / "icon_map.yaml"
    path.write_bytes(data)
    specs, _error = outcome(lambda: load_icon_map(path))
    if specs is not None:
        check_specs(specs)


def check_specs(specs) -> None:
    slugs = [spec.slug for spec in specs]
    assert len(set(slugs)) == len(slugs), slugs
    for spec in specs:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", spec.slug) and len(spec.slug) <= 60, spec.slug
        parts = urlsplit(spec.url)
        assert parts.scheme in ("http", "https"), spec.url
        assert parts.username is None and parts.password is None, spec.url
        assert parts.hostname and parts.hostname.isascii(), spec.url
        assert not any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in spec.url), spec.url


@PROPERTY
@given(
    entries=st.lists(
        st.tuples(tagged_names(), TAGGED_URL, st.one_of(st.none(), TAGGED_ALT)),
        max_size=8,
        unique_by=lambda entry: entry[0][0],
    ),
    allow_unicode=st.booleans(),
)
@example(
    entries=[
        (("Gem", True), ("https://x.org/g.png", True), None),
        (("gem!", True), ("https://x.org/h.png", True), None),
    ],
    allow_unicode=False,
)  # same slug
@example(
    entries=[(("жз", True), ("https://x.org/a.png", True), None), (("зж", True), ("https://x.org/b.png", True), None)],
    allow_unicode=True,
)  # same slug: the
# fallback hash is a sum of code points, so anagrams (and any equal sums) of non-ASCII names collide
@example(entries=[(("A", True), ("javascript:alert(1)", False), None)], allow_unicode=False)
@example(entries=[(("A", True), ("http://user:pw@x.org/", False), (("alt", True)))], allow_unicode=False)
def test_icon_map_mapping_accepts_exactly_the_good_entries(scratch: Path, entries, allow_unicode: bool) -> None:
    document = {}
    for (name, _), (url, _), alt in entries:
        document[name] = url if alt is None else {"url": url, "alt": alt[0]}
    text = yaml.safe_dump(document, allow_unicode=allow_unicode, sort_keys=False, width=4096)
    path = scratch / "icon_map.yaml"
    path.write_text(text, encoding="utf-8")
    specs, error = outcome(lambda: load_icon_map(path))

    tags = [(name_ok, url_ok, True if alt is None else alt[1]) for (_, name_ok), (_, url_ok), alt in entries]
    bad_entries = sum(False in t for t in tags)
    all_good = all(t == (True, True, True) for t in tags)
    slugs_unique = len({slugify(name) for (name, _), _, _ in entries}) == len(entries)
    if error is not None:
        check_problem_lines(error, "icon_map.yaml", len(path.read_text(encoding="utf-8").splitlines()) + 1)
        assert len(error.problems) >= bad_entries, "every bad entry is reported, all at once"
        assert not (all_good and slugs_unique), f"good entries rejected: {error}"
        if not entries:
            assert "is empty" in str(error) or "expected a mapping" in str(error)
    else:
        check_specs(specs)
        assert bad_entries == 0, f"accepted a bad entry: {entries}"
        assert [s.name for s in specs] == [name for (name, _), _, _ in entries]
        assert [s.url for s in specs] == [url for _, (url, _), _ in entries]
        assert [s.alt for s in specs] == [name if alt is None else alt[0] for (name, _), _, alt in entries]


# ---- 2. codes data -----------------------------------------------------------------------------

ICONS = {"Gem", "Gold Coin", "</script><!--", "Ticket \u2028 \u2029", "Ében"}
ICON_NAMES = sorted(ICONS)


def render_content(content: Content) -> dict[str, bytes]:
    """Render what load_content accepted with an icon view for ICONS; it must render."""
    view, _manifest = site_view([(n, n) for n in ICON_NAMES], content)
    return {p.path: p.data for p in render_pages(TEMPLATES, view)}


def check_content(content: Content, icon_names: set[str]) -> None:
    assert content.game.strip()
    codes = [c.code for c in content.codes]
    assert len(set(codes)) == len(codes)
    for code in content.codes:
        assert code.code.strip() and len(code.code) <= 100
        assert code.rewards, code
        for reward in code.rewards:
            assert reward.icon in icon_names and 0 < reward.amount < 10**9


@PROPERTY
@given(text=ARBITRARY_TEXT)
@example(text="")
@example(text="game: G\ncodes: []\n")
@example(text="game: G\ncodes:\n  - code: A\n    added: 2026-11-27\n    rewards: [{icon: Gem, amount: 3}]\n")
@example(text='{"game": "G", "codes": [{"code": "A", "added": "2026-02-30", "rewards": []}]}')
def test_codes_any_text_gives_content_or_config_error(text: str) -> None:
    content, error = outcome(lambda: load_content("codes.yaml", text, ICONS))
    if error is not None:
        check_problem_lines(error, "codes.yaml", len(text.splitlines()) + 1)
    else:
        check_content(content, ICONS)
        outcome(lambda: render_content(content))  # whatever config accepts renders


DATE_VALUE = st.one_of(
    st.dates(),
    st.dates().map(str),
    st.text(max_size=12),
    st.sampled_from(
        [
            "2026-02-30",
            "2026-13-01",
            "20261127",
            "2026-W48-5",
            "",
            "null",
            "2026-1-1",
            "２０２６-11-27",
            "2026-11-27T10:00",
        ]
    ),
)
AMOUNT = st.one_of(
    st.integers(-5, 2 * 10**9),
    st.text(max_size=5),
    st.sampled_from(["1", "999999999", "1000000000", "01", "1e3", "0x10", " 5", "٣", "3.0"]),
)
REWARD = st.one_of(
    st.fixed_dictionaries(
        {"icon": st.one_of(st.sampled_from(ICON_NAMES), st.text(max_size=10))}, optional={"amount": AMOUNT}
    ),
    st.text(max_size=5),
    st.lists(st.text(max_size=3), max_size=2),
)
CODE_ENTRY = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "code": st.one_of(st.text(max_size=20), st.integers(), st.just(""), st.text(min_size=101, max_size=120)),
            "added": DATE_VALUE,
            "expires": DATE_VALUE,
            "note": st.one_of(st.text(max_size=30), st.lists(st.text(), max_size=2)),
            "rewards": st.one_of(st.lists(REWARD, max_size=3), st.text(max_size=5)),
            "extra": st.text(max_size=5),
        },
    ),
    st.text(max_size=10),
    st.integers(),
)
DOCUMENT = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "game": st.one_of(st.text(max_size=20), st.integers(), st.lists(st.text())),
            "codes": st.one_of(st.lists(CODE_ENTRY, max_size=5), st.text(max_size=5)),
            "other": st.text(max_size=5),
        },
    ),
    st.lists(st.text(max_size=5), max_size=3),
    st.text(max_size=10),
)


def serialise(document: object, form: str) -> str:
    if form == "json":
        return json.dumps(document, default=str, ensure_ascii=True)
    return yaml.safe_dump(document, allow_unicode=form == "yaml-unicode", sort_keys=False)


@PROPERTY
@given(document=DOCUMENT, form=st.sampled_from(["json", "yaml", "yaml-unicode"]))
def test_codes_structured_data_gives_content_or_config_error(document: object, form: str) -> None:
    text = serialise(document, form)
    content, error = outcome(lambda: load_content("codes.yaml", text, ICONS))
    if error is not None:
        check_problem_lines(error, "codes.yaml", len(text.splitlines()) + 1)
    else:
        check_content(content, ICONS)
        outcome(lambda: render_content(content))


VALID_CODE = st.text(PLAIN, min_size=1, max_size=100).filter(lambda s: s.strip())
VALID_ENTRY = st.fixed_dictionaries(
    {
        "code": VALID_CODE,
        "added": st.dates(),
        "rewards": st.lists(
            st.fixed_dictionaries({"icon": st.sampled_from(ICON_NAMES), "amount": st.integers(1, 10**9 - 1)}),
            min_size=1,
            max_size=3,
        ),
    },
    optional={
        "expires": st.dates(),
        "note": st.one_of(
            st.text(VALID_TEXT, max_size=40), st.text(st.sampled_from(" \u00a0\u3000a:#'\"-"), max_size=8)
        ),
    },
)


@PROPERTY
@given(
    game=st.text(VALID_TEXT, min_size=1, max_size=30).filter(lambda s: s.strip()),
    entries=st.lists(VALID_ENTRY, max_size=5, unique_by=lambda e: e["code"]),
    form=st.sampled_from(["json", "yaml", "yaml-unicode"]),
)
@example(
    game=" G ",
    entries=[
        {
            "code": " C ",
            "added": dt.date(2026, 1, 1),
            "note": "  padded: #note ",
            "rewards": [{"icon": "Gem", "amount": 999_999_999}],
        }
    ],
    form="yaml",
)
def test_codes_valid_data_comes_back_unchanged(game: str, entries: list[dict], form: str) -> None:
    text = serialise({"game": game, "codes": entries}, form)  # JSON: astral characters as \\ud83d\\ude00 pairs
    content = load_content("codes.yaml", text, ICONS)
    expected = Content(
        game,
        tuple(
            Code(
                e["code"],
                e["added"],
                e.get("expires"),
                tuple(Reward(r["icon"], r["amount"]) for r in e["rewards"]),
                e.get("note", ""),
            )
            for e in entries
        ),
    )
    assert content == expected
    render_content(content)


# ---- 3. rendering ------------------------------------------------------------------------------


def site_view(icons: list[tuple[str, str]], content: Content) -> tuple[SiteView, Manifest]:
    """A SiteView as tests/test_render.py's view() builds it (a WebP source and a PNG fallback per
    icon, style.css), but with its URLs made the way build.py makes them: slugify -> fingerprint."""
    encoded = [
        EncodedIcon(
            name,
            slugify(name),
            40,
            40,
            100,
            tuple(
                Rendition(
                    density,
                    40 * density,
                    40 * density,
                    (
                        Variant("webp", b"W%d" % density + slugify(name).encode(), "q80", 0.99),
                        Variant("png", b"P%d" % density + slugify(name).encode(), "oxipng", 1.0),
                    ),
                )
                for density in (1, 2)
            ),
        )
        for name, _alt in icons
    ]
    css = minify_css((TEMPLATES / "style.css").read_text(encoding="utf-8")).encode()
    scripts = [Asset(p.name, p.read_bytes(), "text/javascript") for p in sorted(TEMPLATES.glob("*.js"))]  # as build.py
    manifest = fingerprint(
        [a for icon in encoded for a in icon_assets(icon)] + [Asset("style.css", css, "text/css")] + scripts
    )
    refs = icon_refs(encoded, dict(icons), manifest)
    return SiteView("Title", "https://example.org", content, refs, manifest.entries, "build1", TODAY), manifest


ICON_NAME = st.one_of(st.text(NO_CONTROL, min_size=1, max_size=30), nasty(NO_CONTROL, min_size=1)).filter(
    lambda s: s.strip() and len(s) <= 100
)
ALT = st.one_of(st.text(NO_CONTROL, max_size=30), nasty(NO_CONTROL))
ICONS_AND_ALTS = st.lists(
    st.tuples(ICON_NAME, ALT), min_size=1, max_size=5, unique_by=(lambda t: t[0], lambda t: slugify(t[0]))
)
CODE_TEXT = st.one_of(st.text(NO_CONTROL, min_size=1, max_size=20), nasty(NO_CONTROL, min_size=1)).filter(
    lambda s: s.strip() and len(s) <= 100
)
NOTE = st.one_of(st.text(NO_CONTROL, max_size=30), nasty(NO_CONTROL))  # U+2028/9 kept: render must cope anyway
DAY = st.dates(dt.date(2026, 1, 1), dt.date(2027, 12, 31))


@st.composite
def site(draw) -> tuple[list[tuple[str, str]], Content]:
    icons = draw(ICONS_AND_ALTS)
    names = [name for name, _ in icons]
    codes = draw(
        st.lists(
            st.builds(
                lambda code, note_, added, expires, rewards: Code(code, added, expires, rewards, note_),
                CODE_TEXT,
                NOTE,
                DAY,
                st.one_of(st.none(), DAY),
                st.lists(st.builds(Reward, st.sampled_from(names), st.integers(1, 10**9 - 1)), min_size=1, max_size=3),
            ),
            max_size=4,
            unique_by=lambda c: c.code,
        )
    )
    return icons, Content(draw(NOTE.filter(str.strip) | st.just("Game")), tuple(codes))


NASTY_SITE = (
    [
        ("Evil </script><script>alert(1)</script> \"q\" 's' <!-- \u2028\u2029 &amp;", "</script><!--\u2028"),
        ("javascript:alert(1)", "data:text/html,<script>alert(1)</script>"),
        ("Two  spaces   and </SCRIPT x", "<!--<script>"),
        ("Blank alt", ""),
    ],
    Content(
        "G </script>", (Code("javascript:x", TODAY, None, (Reward("javascript:alert(1)", 3),), "<!--\u2028 \u2029"),)
    ),
)


class Parsed(HTMLParser):
    """Script elements and bodies, and every start tag's attributes (values decoded)."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[str] = []
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self._in_script = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data

    def attribute(self, tag: str, name: str) -> list[str | None]:
        return [value for t, attrs in self.tags if t == tag for key, value in attrs if key == name]


def icon_map_from(page: Parsed) -> dict:
    body = page.scripts[0]
    # html.parser ends a script only at `</script>`; a browser ends it at `</script` + space, / or >,
    # and `<!--` inside can hide the real end tag: neither may appear in the body at all.
    assert not re.search(r"<!--|</script", body, re.I), body[:300]
    assert "\u2028" not in body and "\u2029" not in body, body[:300]
    return json.loads(body)  # the <script type="application/json" id="icon-map"> data block site.js reads


@functools.lru_cache(maxsize=1)
def templates_with_alt_text() -> Path:
    """The default templates plus a legend that draws each icon with its alt text (no name beside)."""
    target = Path(tempfile.mkdtemp(prefix="templates-")) / "templates"
    shutil.copytree(TEMPLATES, target)
    index = target / "index.html"
    index.write_text(index.read_text().replace('picture(name, alt="")', "picture(name)"))
    return target


def img_alts(page: Parsed) -> list[str]:
    """The distinct alt texts; a bare `alt` (what htmlmin makes of alt="") is the empty text."""
    return sorted({value or "" for value in page.attribute("img", "alt")})


def check_page(html: str, view: SiteView, icons: list[tuple[str, str]]) -> Parsed:
    page = Parsed(html)
    assert len(page.scripts) == TEMPLATE_SCRIPTS, "a name or text opened or closed a <script>"
    icon_map = icon_map_from(page)
    assert {name: entry["alt"] for name, entry in icon_map.items()} == dict(icons)
    for name, entry in icon_map.items():
        ref = view.icons[name]
        assert entry["png"] == ref.fallback and entry["webp"] == ref.sources[0].url
        assert entry["srcset"] == {"webp": ref.sources[0].srcset, "png": ref.png.srcset}
    check_no_script_urls(page)
    return page


def check_no_script_urls(page: Parsed) -> None:
    for tag, attrs in page.tags:
        for key, value in attrs:
            assert not key.startswith("on"), f"event handler attribute <{tag} {key}={value!r}>"
            if key in URL_ATTRIBUTES and value:
                for url in value.split(",") if key == "srcset" else [value]:
                    assert not url.strip().lower().startswith(BAD_SCHEMES), f"<{tag} {key}={value!r}>"


def expected_codes_json(view: SiteView) -> dict:
    return {
        "game": view.content.game,
        "codes": [
            {
                "code": c.code,
                "added": c.added.isoformat(),
                "expires": c.expires.isoformat() if c.expires else None,
                "active": c.active_on(TODAY),
                "note": c.note,
                "rewards": [
                    {"icon": r.icon, "amount": r.amount, "png": view.icons[r.icon].fallback} for r in c.rewards
                ],
            }
            for c in view.content.codes
        ],
    }


@PROPERTY
@given(data=site())
@example(data=NASTY_SITE)
def test_render_keeps_scripts_icon_map_and_codes_intact(data) -> None:
    icons, content = data
    view, _manifest = site_view(icons, content)
    pages = {p.path: p.data.decode("utf-8") for p in render_pages(TEMPLATES, view)}
    page = check_page(pages["index.html"], view, icons)
    assert json.loads(pages["codes.json"]) == expected_codes_json(view)
    # the default pages print every icon's name beside it, so its alt is empty (the alt text
    # itself round-trips through ICON_MAP, checked above); attribute values decode back to the text
    assert img_alts(page) == ([""] if icons else [])
    assert page.attribute("button", "data-code") == [c.code for c in content.codes if c.active_on(TODAY)]
    for path in pages:
        if path.endswith(".html"):
            check_no_script_urls(Parsed(pages[path]))


# ---- 4. minify + publish -----------------------------------------------------------------------


@SLOW_PROPERTY
@given(data=site())
@example(data=NASTY_SITE)
def test_minified_pages_publish_with_every_local_url_present(scratch: Path, data) -> None:
    icons, content = data
    view, manifest = site_view(icons, content)
    pages = render_pages(TEMPLATES, view)
    minified = minify_pages(pages)
    before = {p.path: p.data.decode("utf-8") for p in pages}
    after = {p.path: p.data.decode("utf-8") for p in minified.pages}

    page = check_page(after["index.html"], view, icons)
    assert page.scripts[0] == Parsed(before["index.html"]).scripts[0], "ICON_MAP changed by minification"
    assert after["codes.json"] == before["codes.json"]

    files = {
        **manifest.files,
        **{p.path: p.data for p in minified.pages},
        "manifest.json": (json.dumps(manifest_json(manifest), indent=1) + "\n").encode(),
    }
    for path, html in after.items():
        if path.endswith(".html"):
            missing = [ref for ref in local_references(html) if ref not in files]
            assert not missing, f"{path} names missing {missing}"
    dist = Path(tempfile.mkdtemp(dir=scratch)) / "dist"
    try:
        result = publish(dist, files, PublishSettings(), time.time())  # raises PublishError if the gate fails
        assert result.switched
        assert (dist / "current" / "index.html").read_bytes() == files["index.html"]
    finally:
        shutil.rmtree(dist.parent)


# ---- regressions: bugs these properties found, fixed in e0b2923 (minimal inputs kept as examples) ------

REGRESSION = settings(PROPERTY, max_examples=20)


@REGRESSION
@given(text=st.sampled_from(["? [a]\n: b\n", "{{a: b}: c}", "game: g\ncodes:\n - {[x]: 1}\n"]))
@example(text="[a]: b\n")  # was TypeError: unhashable type: 'list'
@example(text="game: g\ncodes:\n - code: C\n   added: 2026-01-01\n   rewards: [{[i]: Gem}]\n")
def test_codes_non_scalar_key_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        load_content("codes.yaml", text, {"Gem"})


@REGRESSION
@given(key=st.sampled_from(["[a]", "{a: b}", "[]"]))
@example(key="[a]")  # was TypeError: unhashable type: 'list'
def test_icon_map_non_scalar_option_key_is_a_config_error(scratch: Path, key: str) -> None:
    path = scratch / "icon_map.yaml"
    path.write_text(f"Gem: {{url: 'https://x.org/g.png', {key}: b}}\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        load_icon_map(path)


@REGRESSION
@given(amount=st.sampled_from(["³", "¹", "①", "₂", "⁹⁹", "١٢", "３"]))
@example(amount="²")  # was ValueError from int('²') after '²'.isdigit()
def test_non_ascii_digit_amount_is_a_config_error(amount: str) -> None:
    text = f"game: g\ncodes:\n - code: C\n   added: 2026-01-01\n   rewards: [{{icon: Gem, amount: '{amount}'}}]\n"
    with pytest.raises(ConfigError):
        load_content("codes.yaml", text, {"Gem"})


@REGRESSION
@given(field=st.sampled_from(["note", "code", "game"]), escape=st.sampled_from(["\\ud800", "\\udfff", "a\\udc80b"]))
@example(field="note", escape="\\ud800")  # was accepted, then UnicodeEncodeError in render_pages
def test_lone_surrogate_is_rejected_or_renders(field: str, escape: str) -> None:
    values = {"game": "g", "code": "C", "note": "n", field: f'"{escape}"'}
    text = (
        f"game: {values['game']}\ncodes:\n - code: {values['code']}\n   added: 2026-01-01\n"
        f"   note: {values['note']}\n   rewards: [{{icon: Gem, amount: 1}}]\n"
    )
    try:
        content = load_content("codes.yaml", text, {"Gem"})
    except ConfigError:
        return
    view, _ = site_view([("Gem", "Gem")], content)
    render_pages(TEMPLATES, view)


@REGRESSION
@given(text=st.text(st.characters(min_codepoint=0x10000), min_size=1, max_size=5))
@example(text="Gift \U0001f381")  # json.dumps writes "\ud83c\udf81"; PyYAML decoded the halves separately
def test_json_feed_with_emoji_round_trips(text: str) -> None:
    feed = json.dumps(
        {
            "game": "G",
            "codes": [{"code": "C", "added": "2026-11-01", "note": text, "rewards": [{"icon": "Gem", "amount": 1}]}],
        }
    )
    content = load_content("codes.json", feed, {"Gem"})
    assert content.codes[0].note == text
    view, _ = site_view([("Gem", "Gem")], content)
    render_pages(TEMPLATES, view)


@REGRESSION
@given(data=site())
@example(data=([("Gem", "A&lt;B")], Content("G", (Code("X&amp;Y", TODAY, None, (Reward("Gem", 1),)),))))
def test_minified_attributes_keep_their_text(data) -> None:
    """was: htmlmin's convert_charrefs=True decoded attribute text twice, alt "A&lt;B" became "A<B"."""
    icons, content = data
    view, _ = site_view(icons, content)
    html = {p.path: p.data.decode() for p in minify_pages(render_pages(templates_with_alt_text(), view)).pages}[
        "index.html"
    ]
    page = Parsed(html)
    assert set(img_alts(page)) - {""} == {alt for _, alt in icons} - {""}  # the rewards' own alt is ""
    assert page.attribute("button", "data-code") == [c.code for c in content.codes if c.active_on(TODAY)]


@REGRESSION
@given(reward=st.sampled_from(["{icon: Gem, amount: [300]}", "{icon: Gem, amount: {n: 300}}", "{icon: Gem, qty: 300}"]))
@example(reward="{icon: Gem, ammount: 300}")  # was silently amount 1
def test_reward_typo_is_not_silently_amount_1(reward: str) -> None:
    text = f"game: g\ncodes:\n - code: C\n   added: 2026-01-01\n   rewards: [{reward}]\n"
    try:
        content = load_content("codes.yaml", text, {"Gem"})
    except ConfigError:
        return
    assert content.codes[0].rewards[0].amount != 1, content


@REGRESSION
@given(
    tail=st.sampled_from(
        ["game: Other\n", " - code: D\n   code: E\n   added: 2026-01-01\n   rewards: [{icon: Gem, amount: 1}]\n"]
    )
)
@example(tail="codes: []\n")  # was: the second `codes:` silently dropped every code
def test_duplicate_key_in_codes_is_reported(tail: str) -> None:
    text = "game: g\ncodes:\n - code: C\n   added: 2026-01-01\n   rewards: [{icon: Gem, amount: 3}]\n" + tail
    with pytest.raises(ConfigError, match="duplicate"):
        load_content("codes.yaml", text, {"Gem"})


# ---- bugs found by these properties, fixed: regression tests (BUG-9..12) ---------------------------------


@PINNED
@given(
    before=st.lists(st.sampled_from(["A: https://x.org/a.png", "# comment", ""]), max_size=4),
    char=st.sampled_from(["\x01", "\x08", "\x7f", "\x9f", "\ufffe"]),
)
@example(before=["A: https://x.org/a.png"], char="\x01")
def test_bug_unprintable_character_problem_names_its_line(scratch: Path, before: list[str], char: str) -> None:
    path = scratch / "icon_map.yaml"
    path.write_text("\n".join([*before, f"B: https://x.org/{char}.png"]) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_icon_map(path)
    assert str(caught.value).startswith(f"icon_map.yaml:{len(before) + 1}: "), str(caught.value)


@PINNED
@given(unit=st.sampled_from(["{a: ", "- ", "[a, "]), depth=st.integers(1000, 3000))
@example(unit="[", depth=1000)
def test_bug_deep_nesting_is_a_config_error(scratch: Path, unit: str, depth: int) -> None:
    with pytest.raises(ConfigError):
        load_content("codes.yaml", unit * depth, {"Gem"})
    path = scratch / "icon_map.yaml"
    path.write_text(unit * depth, encoding="utf-8")
    with pytest.raises(ConfigError):
        load_icon_map(path)


LOAD_IN_CHILD = """
import sys
from pathlib import Path
from pipeline.config import load_content, load_icon_map
from pipeline.errors import ConfigError
text = sys.stdin.read()
for load in (lambda: load_content("codes.yaml", text, {"Gem"}),
             lambda: (Path(sys.argv[1]).write_text(text, encoding="utf-8"), load_icon_map(Path(sys.argv[1])))):
    try:
        load()
    except ConfigError:
        pass
"""


def load_in_child(scratch: Path, text: str, seconds: float = 5) -> None:
    """Both loaders on `text` in a child process, killed after `seconds` (a hang must not hang the suite)."""
    subprocess.run(
        [sys.executable, "-c", LOAD_IN_CHILD, str(scratch / "child-icon_map.yaml")],
        input=text,
        text=True,
        capture_output=True,
        timeout=seconds,
        check=True,
        cwd=REPO,
    )


@PINNED
@given(text=st.sampled_from(["a: &a [*a]\n", "&a {x: *a}\n", "game: g\ncodes: &c [*c]\n"]))
@example(text="&a [*a]")
def test_bug_recursive_alias_loads_in_bounded_time(scratch: Path, text: str) -> None:
    load_in_child(scratch, text)


@PINNED
@given(width=st.integers(2, 4))
@example(width=2)
def test_bug_alias_fan_out_loads_in_bounded_time(scratch: Path, width: int) -> None:
    refs = lambda i: ", ".join([f"*a{i - 1}"] * width)  # noqa: E731
    text = "\n".join(["a0: &a0 [x, x]"] + [f"a{i}: &a{i} [{refs(i)}]" for i in range(1, 31)]) + "\n"
    load_in_child(scratch, text)


@PINNED
@given(unit=st.sampled_from([("{a: ", "}"), ("[a, ", "]")]))
@example(unit=("[", "]"))
def test_bug_deep_balanced_nesting_does_not_crash_the_process(scratch: Path, unit: tuple[str, str]) -> None:
    depth = 200_000
    load_in_child(scratch, "game: g\ncodes: " + unit[0] * depth + unit[1] * depth + "\n", seconds=60)


# ---- 5. site.toml ------------------------------------------------------------------------------
# The rules as the issue states them (not imported from site.py, so the two are checked against each
# other): kind, low, high; "seconds" is a number > 0 and at most 3600; None: any text (judged elsewhere).

SITE_RULES: dict[str, dict[str, tuple]] = {
    "site": {"title": ("text",), "base_url": ("text",), "content": ("text",), "jobs": ("whole", 0, None)},
    "fetch": {
        "timeout": ("seconds",),
        "deadline": ("seconds",),
        "max_bytes": ("whole", 1, None),
        "max_redirects": ("whole", 0, 20),
        "concurrency": ("whole", 1, 64),
        "allow_private": ("bool",),
    },
    "encode": {
        "ssim_floor": ("number", 0.5, 1.0),
        "avif": ("bool",),
        "lossless_only": ("bool",),
        "png_level": ("whole", 0, 6),
        "display": ("whole", 0, 1024),
        "densities": ("densities",),
    },
    "render": {"eager": ("whole", 0, None)},
    "publish": {
        "keep_releases": ("whole", 1, None),
        "retention_hours": ("number", 0, None),
        "target": ("text",),
        "endpoint": ("text",),
        "region": ("text",),
        "upload_timeout": ("seconds",),
        "upload_deadline": ("seconds",),
    },
    "indexnow": {"key": ("text",), "endpoint": ("text",), "timeout": ("seconds",)},
}
SITE_KEYS = sorted({key for rules in SITE_RULES.values() for key in rules})


def rule_holds(rule: tuple, value: object) -> bool | None:
    """Does `value` satisfy the rule? None for text, whose checks (URLs, names) are tested elsewhere."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    kind = rule[0]
    if kind == "text":
        return None if isinstance(value, str) else False
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "densities":
        return (
            isinstance(value, list)
            and 1 <= len(value) <= 6
            and all(isinstance(d, (int, float)) and not isinstance(d, bool) and 1 <= d <= 4 for d in value)
        )
    if kind == "seconds":
        return number and 0 < value <= 3600  # nan fails both comparisons
    if kind == "whole" and not (isinstance(value, int) and not isinstance(value, bool)):
        return False
    _, low, high = rule
    return number and low <= value and (high is None or value <= high)


def site_toml_verdict(settings: dict) -> bool | None:
    """False if some section or key is unknown or some value breaks its rule; None if only text
    values are left to judge; True if every key is known and every value in range."""
    verdict: bool | None = True
    for name, table in settings.items():
        if name not in SITE_RULES or not isinstance(table, dict):
            return False
        for key, value in table.items():
            holds = rule_holds(SITE_RULES[name][key], value) if key in SITE_RULES[name] else False
            if holds is False:
                return False
            if holds is None:
                verdict = None
    return verdict


def toml_string(text: str) -> str:
    escaped = "".join(
        f"\\{c}" if c in '"\\' else f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text
    )
    return f'"{escaped}"'


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_string(key)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value or abs(value) == float("inf"):
            return str(value)  # nan, inf, -inf: as TOML writes them
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (dt.date, dt.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


TOML_KEY = st.one_of(
    st.sampled_from([*SITE_KEYS, "titel", "timeuot", "keep_release", "Eager", "a.b", "", " "]), st.text(max_size=8)
)
TOML_SECTION = st.one_of(st.sampled_from([*SITE_RULES, "publsh", "Site", "fetch.x", "", "[x]"]), st.text(max_size=8))
TOML_SCALAR = st.one_of(
    st.integers(-3, 70),
    st.integers(),
    st.floats(-2, 5000),
    st.floats(),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["https://codes.example.org", "codes.yaml", "0123456789abcdef", "", "http://u:p@x.org/", "icons"]),
    st.dates(),
    st.datetimes(timezones=st.none() | st.just(dt.UTC)),
    st.times(),
)
TOML_VALUE = st.recursive(
    TOML_SCALAR, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TOML_KEY, inner, max_size=3), max_leaves=8
)


def plausible(rule: tuple) -> st.SearchStrategy:
    """Values for a known key: mostly of its kind and near its range, so whole documents often pass."""
    kind = rule[0]
    if kind == "text":
        return st.one_of(GOOD_URL, st.sampled_from(["Codes", "codes.yaml", "0123456789abcdef"]), TOML_SCALAR)
    if kind == "bool":
        return st.one_of(st.booleans(), st.booleans(), TOML_SCALAR)
    if kind == "densities":
        return st.one_of(
            st.lists(st.one_of(st.integers(1, 4), st.floats(1, 4)), min_size=1, max_size=6),
            st.lists(TOML_SCALAR, max_size=7),
        )
    low, high = (0, 3600) if kind == "seconds" else rule[1:]
    whole = st.integers(int(low) - 2, (int(high) if high is not None else 10**6) + 2)
    return st.one_of(whole, whole, st.floats(low - 1, (high or 10**6) + 1), TOML_SCALAR)


KNOWN_TABLES = st.fixed_dictionaries(
    {},
    optional={
        section: st.fixed_dictionaries({}, optional={key: plausible(rule) for key, rule in rules.items()})
        for section, rules in SITE_RULES.items()
    },
)
ANY_TABLES = st.dictionaries(
    TOML_SECTION, st.one_of(st.dictionaries(TOML_KEY, TOML_VALUE, max_size=4), TOML_VALUE), max_size=5
)


SOME_TABLES = st.one_of(KNOWN_TABLES, KNOWN_TABLES, ANY_TABLES)  # mostly known sections and keys


@st.composite
def site_toml_documents(draw, sections: st.SearchStrategy[dict] = SOME_TABLES):
    """(the settings, as TOML text): each table written as a [header], an inline table or dotted keys,
    with comments and blank lines between; top-level values (and tables' dotted keys) come first."""
    settings = draw(sections)
    if draw(st.booleans()):  # a stray key or two in a known section
        for name in [n for n, t in settings.items() if isinstance(t, dict)][:1]:
            settings[name] = {**settings[name], **draw(st.dictionaries(TOML_KEY, TOML_VALUE, max_size=2))}
    top, tables = [], []
    for name, table in settings.items():
        style = draw(st.sampled_from(["header", "header", "inline", "dotted"])) if isinstance(table, dict) else "value"
        if style == "header":
            tables += [draw(st.sampled_from(["", "# a comment"])), f"[{toml_key(name)}]"]
            tables += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
        elif style == "dotted" and table:
            top += [f"{toml_key(name)}.{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
        else:
            top.append(f"{toml_key(name)} = {toml_value(table)}")
    return settings, "\n".join(top + tables) + "\n"


@pytest.fixture(scope="module")
def settings_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site-toml")
    (root / "icon_map.yaml").write_text("A: https://x.org/a.png\n", encoding="utf-8")
    (root / "icons").mkdir()  # a folder, for `content = "icons"`
    return root


def check_site_toml_problems(error: ConfigError, text: str, parses: bool) -> None:
    """Every problem names site.toml, with a line (1 .. the file's lines + 1) wherever the TOML parses."""
    last_line = len(text.splitlines()) + 1
    for problem in error.problems or (str(error),):
        assert "Traceback" not in problem
        match = re.match(r"site\.toml:(\d+): ", problem)
        if match:
            assert 1 <= int(match.group(1)) <= last_line, problem
        else:
            assert not parses, f"no line, though the TOML parsed: {problem!r}"
            assert problem.startswith("site.toml: "), problem


TOML_TOKENS = [
    "\n",
    "\n",
    " ",
    "=",
    " = ",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    ",",
    ".",
    '"',
    "'",
    '"""',
    "'''",
    "#",
    "\\",
    "\\u0000",
    "\\ud800",
    "\r\n",
    "\t",
    "\x00",
    "\x7f",
    "é",
    "😀",
    "site",
    "fetch",
    "encode",
    "render",
    "publish",
    "indexnow",
    "publsh",
    "titel",
    *SITE_KEYS,
    "0",
    "-1",
    "1e400",
    "inf",
    "nan",
    "-0.0",
    "1_000",
    "0x1F",
    "true",
    "false",
    "1979-05-27",
    "07:32:00",
    "1979-05-27T07:32:00Z",
    '"x"',
    "'x'",
    "[1, 2]",
    "{a = 1}",
    "[fetch]\ntimeout = 0\n",
    '[site]\ntitle = "T"\n',
]
TOML_TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(st.sampled_from(TOML_TOKENS), st.text(max_size=4)), max_size=60).map("".join),
    st.builds(
        lambda unit, count: unit * count, st.sampled_from(["[", "a = [", "{", "a.", "x = 1\n"]), st.integers(1, 3000)
    ),
)


@PROPERTY
@given(text=TOML_TEXT)
@example(text="a = " + "[" * 3000)  # unbalanced: tomllib's syntax error
@example(text="a = " + "[" * 3000 + "]" * 3000)  # was RecursionError out of tomllib, a traceback
@example(text="[fetch]\ntimeout = 0\n[publsh]\n")
@example(text='[site]\ntitle = "a\\u0000b"\ncontent = ""\n')
def test_site_toml_any_text_gives_a_site_or_problems_naming_site_toml(settings_site: Path, text: str) -> None:
    (settings_site / "site.toml").write_text(text, encoding="utf-8")
    as_read = (settings_site / "site.toml").read_text(encoding="utf-8")  # newlines translated, as load_site reads it
    try:
        tomllib.loads(as_read)
        parses = True
    except (tomllib.TOMLDecodeError, RecursionError):
        parses = False
    _site, error = outcome(lambda: load_site(settings_site))
    if error is not None:
        check_site_toml_problems(error, as_read, parses)


@PROPERTY
@given(data=st.binary(max_size=100))
@example(data=b'[site]\ntitle = "\xff"\n')
def test_site_toml_any_bytes_gives_a_site_or_config_error(settings_site: Path, data: bytes) -> None:
    (settings_site / "site.toml").write_bytes(data)
    outcome(lambda: load_site(settings_site))


@PROPERTY
@given(document=site_toml_documents())
@example(document=({"fetch": {"timeout": 0.0}}, "fetch.timeout = 0.0\n"))
@example(document=({"publish": {"keep_releases": 0}}, "publish = {keep_releases = 0}\n"))
@example(document=({"encode": {"ssim_floor": float("nan")}}, "[encode]\nssim_floor = nan\n"))
@example(document=({"fetch": {"timeout": float("inf")}}, "[fetch]\ntimeout = inf\n"))
@example(document=({"site": {"titel": "T"}}, '# c\n[site]\n"titel" = "T"\n'))
@example(
    document=(
        {"render": {"eager": 0}, "publish": {"retention_hours": 0}},
        "[render]\neager = 0\n[publish]\nretention_hours = 0\n",
    )
)
def test_site_toml_documents_are_accepted_exactly_when_every_key_is_known_and_in_range(
    settings_site: Path, document: tuple[dict, str]
) -> None:
    settings, text = document
    assert tomllib.loads(text).keys() == settings.keys(), text  # the writer writes TOML
    (settings_site / "site.toml").write_text(text, encoding="utf-8")
    site, error = outcome(lambda: load_site(settings_site))
    verdict = site_toml_verdict(settings)
    if error is not None:
        check_site_toml_problems(error, text, parses=True)
        assert verdict is not True, f"refused a good site.toml:\n{text}\n{error}"
    else:
        assert verdict is not False, f"accepted a bad site.toml:\n{text}"
        given = {(section, key): value for section, table in settings.items() for key, value in table.items()}
        taken = {
            ("site", "jobs"): site.jobs,
            ("fetch", "timeout"): site.fetch.timeout,
            ("fetch", "max_bytes"): site.fetch.max_bytes,
            ("publish", "keep_releases"): site.publish.keep_releases,
            ("render", "eager"): site.render.eager,
            ("indexnow", "timeout"): site.indexnow.timeout,
            ("encode", "png_level"): site.icons[0].settings.png_level,
        }
        for where, value in taken.items():
            if where in given:
                assert value == given[where], (where, text)


@pytest.fixture(scope="module")
def cli_site(tmp_path_factory: pytest.TempPathFactory, warm_cache: Path) -> Path:
    """The default site with a warm encode cache, for CLI runs over generated site.toml files."""
    root = copy_default_site(tmp_path_factory.mktemp("site-toml-cli") / "site")
    shutil.copytree(warm_cache, root / ".cache")
    return root


# No [encode] (new encode settings would re-encode every icon: minutes, not seconds), no [site]
# content (another file's own errors would name that file) and no [publish] target (a bucket to
# upload to): the in-process tests cover them.
CLI_TABLES = st.fixed_dictionaries(
    {},
    optional={
        section: st.fixed_dictionaries(
            {}, optional={key: plausible(rule) for key, rule in rules.items() if key not in ("content", "target")}
        )
        for section, rules in SITE_RULES.items()
        if section != "encode"
    },
)
CLI_PROPERTY = settings(PROPERTY, max_examples=max(1, EXAMPLES // 50))  # a process and a build per example


@CLI_PROPERTY
@given(document=site_toml_documents(st.one_of(CLI_TABLES, CLI_TABLES.map(lambda t: {**t, "publsh": {"x": 1}}))))
@example(document=({}, "[fetch]\ntimeout = 0\n[publsh]\nkeep_releases = 1\n"))
@example(document=({}, "[fetch\ntimeout = 1\n"))
@example(document=({}, "a = " + "[" * 3000 + "]" * 3000 + "\n"))
@example(document=({}, '[site]\ntitle = "Codes"\n[render]\neager = 0\n[publish]\nkeep_releases = 1\n'))
def test_cli_build_on_any_site_toml_exits_0_or_78_without_a_traceback(
    cli_site: Path, document: tuple[dict, str]
) -> None:
    (cli_site / "site.toml").write_text(document[1], encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "build", "--offline", "--site", str(cli_site)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 78), (result.returncode, result.stderr, document[1])
    if result.returncode == 78:
        assert "site.toml" in result.stderr, result.stderr
