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
        "icon_map.yaml:9: icon 'Opt' unknown option 'quality'; known: url, alt, ssim_floor, avif, lossless_only, png_level",
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
