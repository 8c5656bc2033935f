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
    specs = load_icon_map(write(tmp_path, "A: https://x.org/a.png\nB Icon:\n  url: https://x.org/b.png\n  alt: Bee\n  avif: false\n"))
    assert [(s.name, s.slug, s.alt, s.line, s.settings.avif) for s in specs] == [
        ("A", "a", "A", 1, True), ("B Icon", "b-icon", "Bee", 2, False)]


def test_all_problems_reported_at_once_with_lines(tmp_path: Path) -> None:
    text = ("Good: https://x.org/g.png\n"
            "Script: javascript:alert(1)\n"
            "NoUrl:\n  alt: nothing\n"
            "Good: https://x.org/again.png\n"
            "Creds: https://user:pw@x.org/a.png\n"
            "Homoglyph: https://exаmple.com/a.png\n"
            "Ftp: ftp://x.org/a.png\n"
            "Opt:\n  url: https://x.org/o.png\n  quality: 140\n")
    found = problems(lambda: load_icon_map(write(tmp_path, text)))
    assert found == (
        "icon_map.yaml:2: icon 'Script' url 'javascript:alert(1)' has scheme 'javascript'; only http and https are allowed",
        "icon_map.yaml:3: icon 'NoUrl' has no url; add `url: https://...`",
        "icon_map.yaml:5: duplicate icon name 'Good' (first at line 1); keep one",
        "icon_map.yaml:6: icon 'Creds' url 'https://user:pw@x.org/a.png' carries credentials; remove the user:password@ part",
        "icon_map.yaml:7: icon 'Homoglyph' url 'https://exаmple.com/a.png' has a non-ASCII host; write it in punycode (xn--...) if it is really meant",
        "icon_map.yaml:8: icon 'Ftp' url 'ftp://x.org/a.png' has scheme 'ftp'; only http and https are allowed",
        "icon_map.yaml:9: icon 'Opt' unknown option 'quality'; known: url, alt, ssim_floor, avif, lossless_only, png_level, display, densities",
    )


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    found = problems(lambda: load_icon_map(write(tmp_path, "A: https://x.org/a.png\nB: [unclosed\nC: d\n")))
    assert len(found) == 1 and found[0].startswith("icon_map.yaml:3:") and "fix the syntax (YAML, or JSON)" in found[0]


def test_option_out_of_range_says_the_range(tmp_path: Path) -> None:
    found = problems(lambda: load_icon_map(write(tmp_path, "A:\n  url: https://x.org/a.png\n  ssim_floor: 1.5\n")))
    assert found == ("icon_map.yaml:1: icon 'A' option ssim_floor must be between 0.5 and 1.0, got '1.5'",)


def test_names_that_slug_alike_are_refused(tmp_path: Path) -> None:
    found = problems(lambda: load_icon_map(write(tmp_path, "Ether Battery: https://x.org/a.png\nether-battery: https://x.org/b.png\n")))
    assert found == ("icon_map.yaml:2: icon 'ether-battery' has the same file name 'ether-battery' as 'Ether Battery'; rename one",)


@pytest.mark.parametrize("url", ["https://x.org/" + "a" * 3000, "http://x.org/a b.png", "https:///nohost.png", "data:image/png;base64,AA"])
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
        "codes.yaml:14: duplicate code 'GOOD' (first at line 3)",
        "codes.yaml:17: missing `code:`",
        "codes.yaml:17: `rewards:` must be a non-empty list of {icon: NAME, amount: N}",
        "codes.yaml:17: unknown field(s) colour; known: code, added, expires, note, rewards",
    )


def test_codes_accepts_json() -> None:
    content = load_content("codes.json", '{"game": "G", "codes": [{"code": "X", "added": "2026-01-02", '
                                         '"rewards": [{"icon": "A", "amount": 3}]}]}', {"A"})
    assert content.codes[0].rewards[0].amount == 3 and content.game == "G"


def test_unknown_settings_key(tmp_path: Path, site: Path) -> None:
    (site / "site.toml").write_text('[fetch]\ntimeout = "soon"\ncolour = 1\n')
    found = problems(lambda: load_site(site))
    assert found == ("site.toml: [fetch] timeout must be float, got 'soon'",
                     "site.toml: [fetch] unknown key 'colour'; known: timeout, deadline, max_bytes, max_redirects, concurrency, allow_private")


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
        "C: {url: 'https://x.org/c.png', display: 0}\n")
    site = load_site(tmp_path)
    assert [(s.settings.display, s.settings.densities) for s in site.icons] == [
        (48, (1.0, 2.0)), (64, (1.0, 1.5)), (0, (1.0, 2.0))]


def test_defaults_are_40_px_at_three_densities_and_six_eager_icons(tmp_path: Path) -> None:
    (tmp_path / "icon_map.yaml").write_text("A: https://x.org/a.png\n")
    site = load_site(tmp_path)
    assert (site.icons[0].settings.display, site.icons[0].settings.densities, site.render.eager) == (40, (1, 2, 3), 6)


@pytest.mark.parametrize(("toml", "message"), [
    ("[encode]\ndisplay = -1", "[encode] display must be between 0 and 1024, got -1"),
    ("[encode]\ndisplay = 40.5", "[encode] display must be a whole number from 0 to 1024, got 40.5"),
    ("[encode]\ndisplay = true", "[encode] display must be a whole number from 0 to 1024, got True"),
    ("[encode]\ndensities = []", "[encode] densities must be a list of 1 to 6 screen densities from 1 to 4"),
    ("[encode]\ndensities = [1, 8]", "[encode] densities must be a list of 1 to 6 screen densities from 1 to 4"),
    ("[encode]\ndensities = 2", "[encode] densities must be a list of 1 to 6 screen densities from 1 to 4"),
    ("[encode]\ndensities = ['2x']", "[encode] densities must be a list of 1 to 6 screen densities from 1 to 4"),
    ("[encode]\nssim_floor = 5.0", "[encode] ssim_floor must be between 0.5 and 1.0, got 5.0"),
    ("[encode]\npng_level = 99", "[encode] png_level must be between 0 and 6, got 99"),
    ("[render]\neager = -1", "[render] eager must be int, got -1"),
])
def test_bad_display_densities_and_encode_values_are_errors(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "site.toml").write_text(toml + "\n")
    (tmp_path / "icon_map.yaml").write_text("A: https://x.org/a.png\n")
    found = problems(lambda: load_site(tmp_path))
    assert any(message in problem for problem in found), found


def test_bad_per_icon_densities_name_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "A: https://x.org/a.png\nB:\n  url: https://x.org/b.png\n  densities: [0.5]\n"
                           "C:\n  url: https://x.org/c.png\n  display: big\n")
    assert problems(lambda: load_icon_map(path)) == (
        "icon_map.yaml:2: icon 'B' option densities must be a list of 1 to 6 screen densities from 1 to 4, like [1, 2, 3],"
        " got [0.5]",
        "icon_map.yaml:5: icon 'C' option display must be a whole number from 0 to 1024, got 'big'",
    )
