"""site.toml -> SiteConfig: the settings, and the icon map they give defaults to.

Every key has a rule (`SECTIONS`: its type and range), so a value is taken as written or refused,
never guessed at; an unknown section or key is refused with the nearest known name. tomllib gives
values without positions, so `key_lines` scans the text (valid TOML by then) for the line of every
table header and key, and each problem names `site.toml:LINE`. The icon map's problems join the
same list: one run shows every problem of both files.
"""

from __future__ import annotations

import bisect
import difflib
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..model import EncodeSettings, FetchSettings, IndexNowSettings, PublishSettings, RenderSettings, SiteConfig
from .icons import DENSITIES_EXPECTED, MAX_DISPLAY, OPTION_PARSERS, PNG_LEVEL, SSIM_FLOOR, load_icon_map
from .loader import CONTROL, url_problem

LABEL = "site.toml"
INDEXNOW_KEY = re.compile(r"^[A-Za-z0-9-]{8,128}$")
S3_TARGET = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")  # as pipeline/bucket.py parses it
MAX_SECONDS = 3600.0  # a timeout beyond an hour is a typo; far beyond, the socket layer overflows


@dataclass(frozen=True)
class Rule:
    """What one key takes: its TOML type and, for numbers, the range."""

    kind: str  # "whole", "number", "bool", "text" or "densities"
    low: float | None = None
    high: float | None = None
    above: bool = False  # `low` itself is out of range (a timeout of 0)
    unit: str = ""  # " of seconds": said in the message

    def typed(self, value: Any) -> bool:
        if self.kind == "bool" or isinstance(value, bool):
            return self.kind == "bool" and isinstance(value, bool)
        if self.kind == "whole":
            return isinstance(value, int)
        if self.kind == "number":
            return isinstance(value, (int, float)) and math.isfinite(value)
        if self.kind == "text":
            return isinstance(value, str)
        return isinstance(value, list) and all(
            isinstance(item, (int, float)) and not isinstance(item, bool) for item in value
        )

    def ranged(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return False
        return self.high is None or value <= self.high

    def expected(self) -> str:
        if self.kind == "bool":
            return "must be true or false"
        if self.kind == "text":
            return "must be text in quotes"
        if self.kind == "densities":
            return DENSITIES_EXPECTED
        noun = ("a whole number" if self.kind == "whole" else "a number") + self.unit
        low, high = f"{self.low or 0:g}", "" if self.high is None else f"{self.high:g}"
        if self.above:
            return f"must be {noun} > {low}" + (f" and at most {high}" if high else "")
        return f"must be {noun} from {low} to {high}" if high else f"must be {noun} >= {low}"


TEXT, BOOL = Rule("text"), Rule("bool")
SECONDS = Rule("number", 0, MAX_SECONDS, above=True, unit=" of seconds")
SECTIONS: dict[str, dict[str, Rule]] = {
    "site": {"title": TEXT, "base_url": TEXT, "content": TEXT, "jobs": Rule("whole", 0)},
    "fetch": {
        "timeout": SECONDS,
        "deadline": SECONDS,
        "max_bytes": Rule("whole", 1),
        "max_redirects": Rule("whole", 0, 20),
        "concurrency": Rule("whole", 1, 64),
        "allow_private": BOOL,
    },
    "encode": {  # the types; the ranges are checked by the icon option parsers, as for a per-icon option
        "ssim_floor": Rule("number", *SSIM_FLOOR),
        "avif": BOOL,
        "lossless_only": BOOL,
        "png_level": Rule("whole", *PNG_LEVEL),
        "display": Rule("whole", 0, MAX_DISPLAY),
        "densities": Rule("densities"),
    },
    "render": {"eager": Rule("whole", 0)},
    "publish": {
        "keep_releases": Rule("whole", 1),
        "retention_hours": Rule("number", 0, unit=" of hours"),
        "target": TEXT,
        "endpoint": TEXT,
        "region": TEXT,  # the bucket (pipeline/bucket.py)
        "upload_timeout": SECONDS,
        "upload_deadline": SECONDS,
    },
    "indexnow": {"key": TEXT, "endpoint": TEXT, "timeout": SECONDS},
}
SETTINGS: dict[str, type] = {
    "fetch": FetchSettings,
    "encode": EncodeSettings,
    "render": RenderSettings,
    "publish": PublishSettings,
    "indexnow": IndexNowSettings,
}


def load_site(root: Path) -> SiteConfig:
    """Read the site folder laid out as the repo is: site.toml (optional), icon_map.yaml, content."""
    root = root.resolve()
    problems: list[str] = []
    settings, lines = _read_toml(root / LABEL, problems)

    def at(*path: str) -> str:
        line = lines.get(path)
        return f"{LABEL}:{line}:" if line else f"{LABEL}:"

    values = _check(settings, at, problems)
    site = values.pop("site")
    base_url = str(site.get("base_url", "http://localhost")).rstrip("/")
    if "base_url" in site and (problem := url_problem(base_url)):
        problems.append(f"{at('site', 'base_url')} [site] base_url {problem}")
    title = str(site.get("title", "Redeem codes"))
    if CONTROL.search(title):
        problems.append(f"{at('site', 'title')} [site] title must be plain text (no control characters)")
    content = str(site.get("content", "codes.yaml"))
    if problem := _content_problem(root, content):
        problems.append(f"{at('site', 'content')} [site] content {problem}")
    indexnow = values["indexnow"]
    if "key" in indexnow and indexnow["key"] and not INDEXNOW_KEY.match(indexnow["key"]):
        problems.append(
            f"{at('indexnow', 'key')} [indexnow] key must be 8-128 characters of A-Z, a-z, 0-9 and '-', "
            f"got {indexnow['key'][:20]!r}"
        )
    if "endpoint" in indexnow and (problem := url_problem(indexnow["endpoint"])):
        problems.append(f"{at('indexnow', 'endpoint')} [indexnow] endpoint {problem}")
    publish = values["publish"]
    if publish.get("target") and not S3_TARGET.match(publish["target"]):
        problems.append(
            f"{at('publish', 'target')} [publish] target must look like s3://BUCKET/PREFIX, "
            f"got {publish['target'][:80]!r}"
        )
    if publish.get("endpoint") and (problem := url_problem(publish["endpoint"])):
        problems.append(f"{at('publish', 'endpoint')} [publish] endpoint {problem}")
    parts = {name: cls(**values[name]) for name, cls in SETTINGS.items()}
    try:
        icons = load_icon_map(root / "icon_map.yaml", parts["encode"])
    except ConfigError as error:
        problems.extend(error.problems or (str(error),))
        icons = ()
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in the site configuration; nothing was built", tuple(problems))
    return SiteConfig(
        root,
        title,
        base_url,
        content,
        icons,
        parts["fetch"],
        parts["publish"],
        parts["indexnow"],
        parts["render"],
        site.get("jobs", 0),
    )


def _read_toml(path: Path, problems: list[str]) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """The settings and the line of each key; a file that cannot be read or parsed is one problem
    (and no settings), so the icon map is still checked in the same run."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, {}
    except UnicodeDecodeError as error:
        problems.append(f"{path.name}: is not UTF-8 text ({error.reason} at byte {error.start})")
        return {}, {}
    except OSError as error:
        problems.append(f"{path.name}: cannot be read ({error.strerror or error})")
        return {}, {}
    try:
        return tomllib.loads(text), key_lines(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        if found := re.search(r" \(at line (\d+), column (\d+)\)$", message):
            message = f"{found.group(1)}: {message[: found.start()]} (column {found.group(2)})"
        else:
            message = f" {message}"
        problems.append(f"{path.name}:{message}; fix the TOML syntax")
    except RecursionError:
        problems.append(f"{path.name}: nested too deeply to be a settings file")
    return {}, {}


def _check(settings: dict[str, Any], at: Callable[..., str], problems: list[str]) -> dict[str, dict[str, Any]]:
    """Section -> the keys given in it, each checked against its rule; anything else is a problem."""
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    known = ", ".join(SECTIONS)
    for name, table in settings.items():
        if name not in SECTIONS:
            if isinstance(table, dict):
                hint = _did_you_mean(name, SECTIONS)
                problems.append(f"{at(name)} unknown section [{name}]; {hint}known: {known}")
            elif owners := [section for section, rules in SECTIONS.items() if name in rules]:
                where = " or ".join(f"[{section}]" for section in owners)
                problems.append(f"{at(name)} {name!r} is outside any section; put it under {where}")
            else:
                problems.append(f"{at(name)} unknown key {name!r} outside any section; sections: {known}")
        elif not isinstance(table, dict):
            problems.append(
                f"{at(name)} {name!r} must be a section: [{name}] with its keys below it, got {_shown(table)}"
            )
        else:
            for key, value in table.items():
                checked = _value(name, key, value, at(name, key), problems)
                if checked is not None:
                    values[name][key] = checked
    return values


def _value(section: str, key: str, value: Any, where: str, problems: list[str]) -> Any:
    """The value to use, or None after adding its problem."""
    rules = SECTIONS[section]
    rule = rules.get(key)
    if rule is None:
        hint = _did_you_mean(key, rules)
        elsewhere = [f"[{name}]" for name, others in SECTIONS.items() if key in others]
        if elsewhere:
            hint += f"{key!r} belongs in {' or '.join(elsewhere)}; "
        problems.append(f"{where} [{section}] unknown key {key!r}; {hint}known: {', '.join(rules)}")
        return None
    if not rule.typed(value):
        problems.append(f"{where} [{section}] {key} {rule.expected()}, got {_shown(value)}")
        return None
    if section == "encode":  # the same parser as the per-icon option, with its messages
        try:
            return OPTION_PARSERS[key](value)
        except (TypeError, ValueError) as error:
            problems.append(f"{where} [{section}] {key} {error}, got {_shown(value)}")
            return None
    if rule.kind in ("whole", "number") and not rule.ranged(value):
        problems.append(f"{where} [{section}] {key} {rule.expected()}, got {_shown(value)}")
        return None
    return value


def _did_you_mean(name: str, choices: Any) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _content_problem(root: Path, content: str) -> str | None:
    """Why the codes data named by [site] content cannot be read; a missing file is the build's
    to report (it says where it looked)."""
    if "://" in content:  # a URL, never a file name: only http(s) is fetched
        return url_problem(content)
    if not content.strip() or CONTROL.search(content):
        return f"must name the codes file (or an http(s) feed URL), got {_shown(content)}"
    try:
        if (root / content).is_dir():
            return f"{content[:80]!r} is a folder; name the codes file in it"
    except (OSError, ValueError) as error:
        return f"{content[:80]!r} is not a usable file name ({getattr(error, 'strerror', None) or error})"
    return None


# ---- where each key is ------------------------------------------------------------------------------

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_BASIC = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_LITERAL = re.compile(r"'[^'\n]*'")
_SCALAR = re.compile(r"[^,\]}#\n]+")  # numbers, booleans, dates and times (which may hold a space)


class _Stop(Exception):
    """The scan met something it does not follow: keep the lines found so far."""


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """(section, key, ...) -> the line it is first written on, for every table header, key and
    key of an inline table (not those inside arrays). For text tomllib has accepted; on anything
    else it stops early and returns what it found, never raising."""
    scan = _Scanner(text)
    try:
        scan.document()
    except (_Stop, IndexError, ValueError, RecursionError):
        pass
    return scan.lines


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text, self.i = text, 0
        self.newlines = [i for i, c in enumerate(text) if c == "\n"]
        self.lines: dict[tuple[str, ...], int] = {}

    def document(self) -> None:
        text = self.text
        table: tuple[str, ...] = ()
        while True:
            self.blank(newlines=True)
            if self.i >= len(text):
                return
            start = self.i
            if text[self.i] == "[":
                brackets = 2 if text.startswith("[[", self.i) else 1
                self.i += brackets
                table = self.key()
                self.expect("]" * brackets)
                self.record(table, start)
            else:
                path = table + self.key()
                self.expect("=")
                self.record(path, start)
                self.value(path)

    def record(self, path: tuple[str, ...], at: int) -> None:
        line = bisect.bisect_left(self.newlines, at) + 1
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], line)

    def blank(self, newlines: bool = False) -> None:
        text = self.text
        while self.i < len(text):
            c = text[self.i]
            if c in " \t" or (newlines and c in "\r\n"):
                self.i += 1
            elif c == "#" and newlines:
                end = text.find("\n", self.i)
                self.i = len(text) if end < 0 else end
            else:
                return

    def expect(self, token: str) -> None:
        self.blank()
        if not self.text.startswith(token, self.i):
            raise _Stop
        self.i += len(token)
        self.blank()

    def key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self.blank()
            for pattern in (_BARE, _BASIC, _LITERAL):
                if found := pattern.match(self.text, self.i):
                    break
            else:
                raise _Stop
            raw, self.i = found.group(), found.end()
            parts.append(_basic_string(raw) if raw.startswith('"') else raw.strip("'"))
            self.blank()
            if not self.text.startswith(".", self.i):
                return tuple(parts)
            self.i += 1

    def value(self, path: tuple[str, ...] | None) -> None:
        """Step over one value; the keys of an inline table are recorded under `path`."""
        text, start = self.text, self.i
        if text.startswith(('"""', "'''"), start):
            quote = text[start : start + 3]
            self.i = start + 3
            while not text.startswith(quote, self.i):
                if self.i >= len(text):
                    raise _Stop
                self.i += 2 if quote == '"""' and text[self.i] == "\\" else 1
            self.i += 3
            for _ in range(2):  # up to two quotes of the content may touch the closing three
                if text.startswith(quote[0], self.i):
                    self.i += 1
        elif text[start] in "\"'":
            found = (_BASIC if text[start] == '"' else _LITERAL).match(text, start)
            if not found:
                raise _Stop
            self.i = found.end()
        elif text[start] == "{":
            self.items("}", path, table=True)
        elif text[start] == "[":
            self.items("]", None, table=False)
        elif found := _SCALAR.match(text, start):
            self.i = found.end()
        else:
            raise _Stop

    def items(self, close: str, path: tuple[str, ...] | None, table: bool) -> None:
        """An inline table (its keys recorded under `path`, unless None: inside an array) or an array."""
        self.i += 1
        while True:
            self.blank(newlines=True)
            if self.text.startswith(close, self.i):
                self.i += 1
                return
            if self.text.startswith(",", self.i):
                self.i += 1
            elif not table:
                self.value(None)
            else:
                start = self.i
                inner = self.key()
                self.expect("=")
                if path is not None:
                    self.record(path + inner, start)
                self.value(None if path is None else path + inner)


def _basic_string(raw: str) -> str:
    """A quoted key as TOML reads it (escapes and all)."""
    try:
        value = tomllib.loads(f"k = {raw}")["k"]
    except tomllib.TOMLDecodeError:
        return raw[1:-1]
    return value if isinstance(value, str) else raw[1:-1]
