"""icon_map.yaml, codes.yaml and site.toml: every problem reported with FILE:LINE, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_content, load_icon_map, load_site, slugify, url_problem
from pipeline.errors import ConfigError

from .conftest import run_cli


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "icon_map.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(call) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        call()
    return caught.value.problems or (str(caught.value),)


def test_shorthand_and_full_entries(tmp_path: Path) -> None:
    specs = load_icon_map(
        write(tmp_path, "A: https://x.org/a.png\nB Icon:\n  url: https://x.org/b.png\n  alt: Bee\n  avif: false\n")
    )
    assert [(s.name, s.slug, s.alt, s.line, s.settings.avif) for s in specs] == [
        ("A", "a", "A", 1, True),
        ("B Icon", "b-icon", "Bee", 2, False),
    ]


def test_all_problems_reported_at_once_with_lines(tmp_path: Path) -> None:
    text = (
        "Good: https://x.org/g.png\n"
        "Script: javascript:alert(1)\n"
        "NoUrl:\n  alt: nothing\n"
        "Good: https://x.org/again.png\n"
        "Creds: https://user:pw@x.org/a.png\n"
        "Homoglyph: https://exаmple.com/a.png\n"
        "Ftp: ftp://x.org/a.png\n"
        "Opt:\n  url: https://x.org/o.png\n  quality: 140\n"
    )
    found = problems(lambda: load_icon_map(write(tmp_path, text)))
    assert found == (
        "icon_map.yaml:2: icon 'Script' url 'javascript:alert(1)' has scheme 'javascript'; "
        "only http and https are allowed",
        "icon_map.yaml:3: icon 'NoUrl' has no url; add `url: https://...`",
        "icon_map.yaml:5: duplicate icon name 'Good' (first at line 1); keep one",
        "icon_map.yaml:6: icon 'Creds' url 'https://user:pw@x.org/a.png' carries credentials; "
        "remove the user:password@ part",
        "icon_map.yaml:7: icon 'Homoglyph' url 'https://exаmple.com/a.png' has a non-ASCII host; "
        "write it in punycode (xn--...) if it is really meant",
        "icon_map.yaml:8: icon 'Ftp' url 'ftp://x.org/a.png' has scheme 'ftp'; only http and https are allowed",
        "icon_map.yaml:9: icon 'Opt' unknown option 'quality'; "
        "known: url, alt, ssim_floor, avif, lossless_only, png_level, display, densities",
    )


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    found = problems(lambda: load_icon_map(write(tmp_path, "A: https://x.org/a.png\nB: [unclosed\nC: d\n")))
    assert len(found) == 1 and found[0].startswith("icon_map.yaml:3:") and "fix the syntax (YAML, or JSON)" in found[0]


def test_option_out_of_range_says_the_range(tmp_path: Path) -> None:
    found = problems(lambda: load_icon_map(write(tmp_path, "A:\n  url: https://x.org/a.png\n  ssim_floor: 1.5\n")))
    assert found == ("icon_map.yaml:1: icon 'A' option ssim_floor must be between 0.5 and 1.0, got '1.5'",)


def test_names_that_slug_alike_are_refused(tmp_path: Path) -> None:
    found = problems(
        lambda: load_icon_map(
            write(tmp_path, "Ether Battery: https://x.org/a.png\nether-battery: https://x.org/b.png\n")
        )
    )
    assert found == (
        "icon_map.yaml:2: icon 'ether-battery' has the same file name 'ether-battery' as 'Ether Battery'; rename one",
    )


@pytest.mark.parametrize(
    "url", ["https://x.org/" + "a" * 3000, "http://x.org/a b.png", "https:///nohost.png", "data:image/png;base64,AA"]
)
def test_garbage_urls_are_refused(url: str) -> None:
    assert url_problem(url) is not None


def test_slugs_are_file_safe() -> None:
    assert slugify("W-Engine Energy Module") == "w-engine-energy-module"
    assert slugify("../../etc/passwd") == "etc-passwd"
    assert slugify("ポリクローム").startswith("icon-")


CODES = """game: Test Game
codes:
  - code: GOOD
    added: 2026-11-01
    rewards:
      - {icon: A, amount: 5}
  - code: BADICON
    added: 2026-11-02
    rewards:
      - {icon: Nope, amount: 1}
  - code: BADDATE
    added: 2026-02-30
    rewards: [{icon: A}]
  - code: GOOD
    added: 2026-11-03
    rewards: [{icon: A, amount: 1}]
  - added: 2026-11-04
    colour: red
    rewards: []
"""


def test_codes_problems_all_at_once() -> None:
    found = problems(lambda: load_content("codes.yaml", CODES, {"A"}))
    assert found == (
        "codes.yaml:10: reward icon 'Nope' is not in icon_map.yaml; add it there or use one of: A",
        "codes.yaml:12: `added:` must be a date like 2026-11-27, got '2026-02-30'",
        "codes.yaml:13: reward has no amount; write {icon: NAME, amount: N}",  # was silently 1, behind the date
        "codes.yaml:14: duplicate code 'GOOD' (first at line 3)",
        "codes.yaml:17: missing `code:`",
        "codes.yaml:17: `rewards:` must be a non-empty list of {icon: NAME, amount: N}",
        "codes.yaml:17: unknown field(s) colour; known: code, added, expires, note, rewards",
    )


def test_codes_accepts_json() -> None:
    content = load_content(
        "codes.json",
        '{"game": "G", "codes": [{"code": "X", "added": "2026-01-02", "rewards": [{"icon": "A", "amount": 3}]}]}',
        {"A"},
    )
    assert content.codes[0].rewards[0].amount == 3 and content.game == "G"


def test_unknown_settings_key(tmp_path: Path, site: Path) -> None:
    (site / "site.toml").write_text('[fetch]\ntimeout = "soon"\ncolour = 1\n')
    found = problems(lambda: load_site(site))
    assert found == (
        "site.toml:2: [fetch] timeout must be a number of seconds > 0 and at most 3600, got 'soon'",
        "site.toml:3: [fetch] unknown key 'colour'; "
        "known: timeout, deadline, max_bytes, max_redirects, concurrency, allow_private",
    )


def test_cli_reports_config_errors_without_traceback_and_publishes_nothing(site: Path) -> None:
    with open(site / "icon_map.yaml", "a", encoding="utf-8") as handle:
        handle.write("Broken: ftp://x.org/a.png\nPolychrome: https://x.org/p.png\n")
    result = run_cli(site, "build", "--offline")
    assert result.returncode == 78
    assert "Traceback" not in result.stderr
    assert "icon_map.yaml:32: icon 'Broken' url" in result.stderr
    assert "icon_map.yaml:33: duplicate icon name 'Polychrome' (first at line 9)" in result.stderr
    assert not (site / "dist" / "current").exists()


def test_display_and_densities_from_site_toml_and_per_icon(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text("[encode]\ndisplay = 48\ndensities = [2, 1]\n")
    (tmp_path / "icon_map.yaml").write_text(
        "A: https://x.org/a.png\n"
        "B:\n  url: https://x.org/b.png\n  display: 64\n  densities: [1, 1.5]\n"
        "C: {url: 'https://x.org/c.png', display: 0}\n"
    )
    site = load_site(tmp_path)
    assert [(s.settings.display, s.settings.densities) for s in site.icons] == [
        (48, (1.0, 2.0)),
        (64, (1.0, 1.5)),
        (0, (1.0, 2.0)),
    ]


def test_defaults_are_40_px_at_three_densities_and_six_eager_icons(tmp_path: Path) -> None:
    (tmp_path / "icon_map.yaml").write_text("A: https://x.org/a.png\n")
    site = load_site(tmp_path)
    assert (site.icons[0].settings.display, site.icons[0].settings.densities, site.render.eager) == (40, (1, 2, 3), 6)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[encode]\ndisplay = -1", "[encode] display must be between 0 and 1024, got -1"),
        ("[encode]\ndisplay = 40.5", "[encode] display must be a whole number from 0 to 1024, got 40.5"),
        ("[encode]\ndisplay = true", "[encode] display must be a whole number from 0 to 1024, got True"),
        ("[encode]\ndensities = []", "[encode] densities must be a list of 1 to 6 screen densities from 1 to 4"),
        ("[encode]\ndensities = [1, 8]", "[encode] densities must be a list of 1 to 6 screen densities from 1 to 4"),
        ("[encode]\ndensities = 2", "[encode] densities must be a list of 1 to 6 screen densities from 1 to 4"),
        ("[encode]\ndensities = ['2x']", "[encode] densities must be a list of 1 to 6 screen densities from 1 to 4"),
        ("[encode]\nssim_floor = 5.0", "[encode] ssim_floor must be between 0.5 and 1.0, got 5.0"),
        ("[encode]\npng_level = 99", "[encode] png_level must be between 0 and 6, got 99"),
        ("[render]\neager = -1", "site.toml:2: [render] eager must be a whole number >= 0, got -1"),
    ],
)
def test_bad_display_densities_and_encode_values_are_errors(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "site.toml").write_text(toml + "\n")
    (tmp_path / "icon_map.yaml").write_text("A: https://x.org/a.png\n")
    found = problems(lambda: load_site(tmp_path))
    assert any(message in problem for problem in found), found


def test_bad_per_icon_densities_name_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "A: https://x.org/a.png\nB:\n  url: https://x.org/b.png\n  densities: [0.5]\n"
        "C:\n  url: https://x.org/c.png\n  display: big\n",
    )
    assert problems(lambda: load_icon_map(path)) == (
        "icon_map.yaml:2: icon 'B' option densities must be a list of 1 to 6 screen densities from 1 to 4, "
        "like [1, 2, 3],"
        " got [0.5]",
        "icon_map.yaml:5: icon 'C' option display must be a whole number from 0 to 1024, got 'big'",
    )


# ---- site.toml: every value checked against its key's rule, every problem at its line (issue 10, item 6) ----


def site_problems(tmp_path: Path, toml: str, icon_map: str = "A: https://x.org/a.png\n") -> tuple[str, ...]:
    (tmp_path / "site.toml").write_text(toml, encoding="utf-8")
    (tmp_path / "icon_map.yaml").write_text(icon_map, encoding="utf-8")
    return problems(lambda: load_site(tmp_path))


SECONDS = "must be a number of seconds > 0 and at most 3600"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[fetch]\ntimeout = 0", f"site.toml:2: [fetch] timeout {SECONDS}, got 0"),
        ("[fetch]\ntimeout = -1.5", f"site.toml:2: [fetch] timeout {SECONDS}, got -1.5"),
        ("[fetch]\ntimeout = inf", f"site.toml:2: [fetch] timeout {SECONDS}, got inf"),
        ("[fetch]\ntimeout = nan", f"site.toml:2: [fetch] timeout {SECONDS}, got nan"),
        ("[fetch]\ntimeout = 1e10", f"site.toml:2: [fetch] timeout {SECONDS}, got 10000000000.0"),
        ("[fetch]\ndeadline = 0.0", f"site.toml:2: [fetch] deadline {SECONDS}, got 0.0"),
        ("[indexnow]\ntimeout = 0", f"site.toml:2: [indexnow] timeout {SECONDS}, got 0"),
        ("[fetch]\nmax_bytes = 0", "site.toml:2: [fetch] max_bytes must be a whole number >= 1, got 0"),
        ("[fetch]\nmax_bytes = 2e6", "site.toml:2: [fetch] max_bytes must be a whole number >= 1, got 2000000.0"),
        (
            "[fetch]\nmax_redirects = 21",
            "site.toml:2: [fetch] max_redirects must be a whole number from 0 to 20, got 21",
        ),
        ("[fetch]\nconcurrency = 0", "site.toml:2: [fetch] concurrency must be a whole number from 1 to 64, got 0"),
        ("[fetch]\nconcurrency = 65", "site.toml:2: [fetch] concurrency must be a whole number from 1 to 64, got 65"),
        ("[fetch]\nallow_private = 'yes'", "site.toml:2: [fetch] allow_private must be true or false, got 'yes'"),
        ("[publish]\nkeep_releases = 0", "site.toml:2: [publish] keep_releases must be a whole number >= 1, got 0"),
        (
            "[publish]\nretention_hours = -1",
            "site.toml:2: [publish] retention_hours must be a number of hours >= 0, got -1",
        ),
        ("[site]\njobs = -1", "site.toml:2: [site] jobs must be a whole number >= 0, got -1"),
        ("[site]\njobs = true", "site.toml:2: [site] jobs must be a whole number >= 0, got True"),
        ("[site]\ntitle = 3", "site.toml:2: [site] title must be text in quotes, got 3"),
        ('[site]\ntitle = "a\\u0007b"', "site.toml:2: [site] title must be plain text (no control characters)"),
        ("[render]\neager = 2.0", "site.toml:2: [render] eager must be a whole number >= 0, got 2.0"),
        ("[encode]\nssim_floor = 5.0", "site.toml:2: [encode] ssim_floor must be between 0.5 and 1.0, got 5.0"),
        ("[encode]\nssim_floor = 0.4", "site.toml:2: [encode] ssim_floor must be between 0.5 and 1.0, got 0.4"),
        ("[encode]\nssim_floor = '0.9'", "site.toml:2: [encode] ssim_floor must be a number from 0.5 to 1, got '0.9'"),
        ("[encode]\npng_level = 7", "site.toml:2: [encode] png_level must be between 0 and 6, got 7"),
        ("[encode]\npng_level = '3'", "site.toml:2: [encode] png_level must be a whole number from 0 to 6, got '3'"),
        ("[encode]\navif = 'no'", "site.toml:2: [encode] avif must be true or false, got 'no'"),
        (
            "[encode]\ndensities = ['2']",
            "site.toml:2: [encode] densities must be a list of 1 to 6 screen densities from 1 to 4",
        ),
    ],
)
def test_site_toml_values_are_range_checked_at_their_line(tmp_path: Path, toml: str, message: str) -> None:
    found = site_problems(tmp_path, "# settings\n" + toml.replace("\n", "\n\n", 1) + "\n")
    line = 1 + 1 + 2  # the comment, the header, a blank line, then the key
    assert len(found) == 1 and found[0].startswith(message.replace("site.toml:2:", f"site.toml:{line}:")), found


def test_site_toml_limits_are_accepted(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text(
        "[site]\njobs = 0\n[fetch]\ntimeout = 0.001\ndeadline = 3600\nmax_bytes = 1\nmax_redirects = 0\n"
        "concurrency = 64\n"
        "[encode]\nssim_floor = 0.5\npng_level = 6\n[render]\neager = 0\n[publish]\nkeep_releases = 1\n"
        "retention_hours = 0\n[indexnow]\ntimeout = 3600.0\n"
    )
    (tmp_path / "icon_map.yaml").write_text("A: https://x.org/a.png\n")
    site = load_site(tmp_path)
    assert (
        site.jobs,
        site.fetch.timeout,
        site.fetch.deadline,
        site.fetch.max_bytes,
        site.fetch.max_redirects,
        site.fetch.concurrency,
        site.render.eager,
        site.publish.keep_releases,
        site.publish.retention_hours,
        site.indexnow.timeout,
    ) == (0, 0.001, 3600, 1, 0, 64, 0, 1, 0, 3600.0)
    assert (site.icons[0].settings.ssim_floor, site.icons[0].settings.png_level) == (0.5, 6)


def test_every_settings_field_has_a_rule() -> None:
    from dataclasses import fields

    from pipeline.config.site import SECTIONS, SETTINGS

    assert set(SECTIONS) == {"site", *SETTINGS}
    assert set(SECTIONS["site"]) == {"title", "base_url", "content", "jobs"}
    for name, cls in SETTINGS.items():
        assert list(SECTIONS[name]) == [f.name for f in fields(cls)], name


def test_unknown_sections_and_keys_name_their_line_and_the_likely_key(tmp_path: Path) -> None:
    found = site_problems(
        tmp_path,
        (
            "# settings\n"
            "[site]\n"
            'titel = "Codes"\n'
            "[publsh]\n"
            "keep_releases = 3\n"
            "[fetch]\n"
            "timeuot = 5\n"
            "eager = 3\n"
            'title = "x"\n'
        ),
    )
    fetch_keys = "timeout, deadline, max_bytes, max_redirects, concurrency, allow_private"
    assert found == (
        "site.toml:3: [site] unknown key 'titel'; did you mean 'title'? known: title, base_url, content, jobs",
        "site.toml:4: unknown section [publsh]; did you mean 'publish'? "
        "known: site, fetch, encode, render, publish, indexnow",
        f"site.toml:7: [fetch] unknown key 'timeuot'; did you mean 'timeout'? known: {fetch_keys}",
        f"site.toml:8: [fetch] unknown key 'eager'; 'eager' belongs in [render]; known: {fetch_keys}",
        f"site.toml:9: [fetch] unknown key 'title'; 'title' belongs in [site]; known: {fetch_keys}",
    )


def test_site_toml_lines_are_found_for_quoted_dotted_and_inline_keys(tmp_path: Path) -> None:
    found = site_problems(
        tmp_path,
        (
            'fetch = {timeout = 0, "max_redirects" = 99}\n'
            "publish.keep_releases = 0\n"
            "\"render\".'eager' = -1\n"
            'note = """\n[site]\njobs = 1\n"""\n'
            "title = 'x'\n"
            "encode = 3\n"
            "[ site ]\n"
            "# jobs = 5\n"
            '"jobs" = -2\n'
            "[[indexnow]]\n"
        ),
    )
    assert found == (
        f"site.toml:1: [fetch] timeout {SECONDS}, got 0",
        "site.toml:1: [fetch] max_redirects must be a whole number from 0 to 20, got 99",
        "site.toml:2: [publish] keep_releases must be a whole number >= 1, got 0",
        "site.toml:3: [render] eager must be a whole number >= 0, got -1",
        "site.toml:4: unknown key 'note' outside any section; sections: site, fetch, encode, render, publish, indexnow",
        "site.toml:8: 'title' is outside any section; put it under [site]",
        "site.toml:9: 'encode' must be a section: [encode] with its keys below it, got 3",
        "site.toml:12: [site] jobs must be a whole number >= 0, got -2",
        "site.toml:13: 'indexnow' must be a section: [indexnow] with its keys below it, got [{}]",
    )


def test_site_toml_and_icon_map_problems_come_in_one_run(tmp_path: Path) -> None:
    found = site_problems(
        tmp_path,
        "[fetch]\ntimeout = 0\n[publish]\nkeep_releases = 0\n[indexnow]\nkey = 'short'\n",
        icon_map="A: ftp://x.org/a.png\n",
    )
    assert found == (
        f"site.toml:2: [fetch] timeout {SECONDS}, got 0",
        "site.toml:4: [publish] keep_releases must be a whole number >= 1, got 0",
        "site.toml:6: [indexnow] key must be 8-128 characters of A-Z, a-z, 0-9 and '-', got 'short'",
        "icon_map.yaml:1: icon 'A' url 'ftp://x.org/a.png' has scheme 'ftp'; only http and https are allowed",
    )


def test_a_toml_syntax_error_names_its_line_and_the_icon_map_is_still_checked(tmp_path: Path) -> None:
    found = site_problems(tmp_path, "[fetch]\ntimeout 5\n", icon_map="A: ftp://x.org/a.png\n")
    assert len(found) == 2, found
    assert found[0].startswith("site.toml:2: ") and found[0].endswith("; fix the TOML syntax"), found
    assert found[1].startswith("icon_map.yaml:1: icon 'A' url"), found


def test_deeply_nested_site_toml_is_a_config_error(tmp_path: Path) -> None:
    """was: RecursionError out of tomllib, a traceback."""
    assert site_problems(tmp_path, "a = " + "[" * 5000 + "]" * 5000 + "\n") == (
        "site.toml: nested too deeply to be a settings file",
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "[site] content must name the codes file (or an http(s) feed URL), got ''"),
        ("templates", "[site] content 'templates' is a folder; name the codes file in it"),
        ("ftp://x.org/codes.yaml", "[site] content 'ftp://x.org/codes.yaml' has scheme 'ftp'; only http and https"),
        ("https://user:pw@x.org/codes.json", "[site] content 'https://user:pw@x.org/codes.json' carries credentials"),
    ],
)
def test_bad_content_setting_is_an_error(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "templates").mkdir()
    found = site_problems(tmp_path, f"[site]\ncontent = {content!r}\n")
    assert len(found) == 1 and found[0].startswith(f"site.toml:2: {message}"), found


def test_cli_reports_every_site_toml_problem_with_its_line(site: Path) -> None:
    text = (site / "site.toml").read_text(encoding="utf-8")
    (site / "site.toml").write_text(text.replace("timeout = 10.0", "timeout = 0").replace("[publish]", "[publsh]"))
    lines = (site / "site.toml").read_text(encoding="utf-8").splitlines()
    result = run_cli(site, "build", "--offline")
    assert result.returncode == 78, result.stderr
    assert "Traceback" not in result.stderr
    assert (
        f"site.toml:{lines.index('[publsh]') + 1}: unknown section [publsh]; did you mean 'publish'?" in result.stderr
    )
    timeout = next(i for i, line in enumerate(lines) if line.startswith("timeout = 0")) + 1
    assert f"site.toml:{timeout}: [fetch] timeout {SECONDS}, got 0" in result.stderr
    assert not (site / "dist" / "current").exists()


# ---- codes.yaml: no default amount, every problem of a code at once (issue 10, item 7) ------------------


def test_a_reward_without_amount_is_an_error() -> None:
    text = "game: G\ncodes:\n  - code: C\n    added: 2026-11-01\n    rewards:\n      - {icon: A}\n      - icon: A\n"
    assert problems(lambda: load_content("codes.yaml", text, {"A"})) == (
        "codes.yaml:6: reward has no amount; write {icon: NAME, amount: N}",
        "codes.yaml:7: reward has no amount; write {icon: NAME, amount: N}",
    )


def test_every_problem_of_a_code_is_reported_at_once() -> None:
    text = (
        "game: G\n"
        "codes:\n"
        "  - code: C\n"
        "    added: 2026-02-30\n"
        "    expires: soon\n"
        "    rewards:\n"
        "      - {icon: Nope, amount: 0}\n"
        "      - {amount: 3}\n"
        "      - {icon: A, amount: [3], qty: 2}\n"
        "  - code: C\n"
        "    added: 2026-01-01\n"
        "    rewards: [{icon: A, amount: 1}]\n"
    )
    assert problems(lambda: load_content("codes.yaml", text, {"A"})) == (
        "codes.yaml:4: `added:` must be a date like 2026-11-27, got '2026-02-30'",
        "codes.yaml:5: `expires:` must be a date like 2026-11-27, got 'soon'",
        "codes.yaml:7: reward icon 'Nope' is not in icon_map.yaml; add it there or use one of: A",
        "codes.yaml:7: reward amount must be a whole number from 1, got '0'",
        "codes.yaml:8: reward has no icon; write {icon: NAME, amount: N}",
        "codes.yaml:9: a reward must be {icon: NAME, amount: N}, got key(s) amount, icon, qty",
        "codes.yaml:9: reward `amount:` must be a single value, not a list or mapping",
        "codes.yaml:10: duplicate code 'C' (first at line 3)",  # was hidden: the first C had problems
    )


def test_the_default_codes_load_with_their_amounts() -> None:
    from .conftest import REPO

    site = load_site(REPO)
    content = load_content(
        "codes.yaml", (REPO / "codes.yaml").read_text(encoding="utf-8"), {s.name for s in site.icons}
    )
    assert content.codes and all(r.amount >= 1 for c in content.codes for r in c.rewards)
