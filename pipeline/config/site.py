"""site.toml -> SiteConfig: the settings, and the icon map they give defaults to.

TOML is read as plain values (no line numbers in tomllib), so its problems name the table and
key instead; the icon map's problems join the same list, so one run shows every problem.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..model import EncodeSettings, FetchSettings, IndexNowSettings, PublishSettings, RenderSettings, SiteConfig
from .icons import OPTION_PARSERS, load_icon_map
from .loader import url_problem

INDEXNOW_KEY = re.compile(r"^[A-Za-z0-9-]{8,128}$")


def load_site(root: Path) -> SiteConfig:
    """Read the site folder laid out as the repo is: site.toml (optional), icon_map.yaml, content."""
    root = root.resolve()
    settings = _read_toml(root / "site.toml")
    problems: list[str] = []
    site = settings.get("site", {})
    title = str(site.get("title", "Redeem codes"))
    base_url = str(site.get("base_url", "http://localhost")).rstrip("/")
    if problem := url_problem(base_url):
        problems.append(f"site.toml: [site] base_url {problem}")
    content = str(site.get("content", "codes.yaml"))
    if content.startswith(("http://", "https://")) and (problem := url_problem(content)):
        problems.append(f"site.toml: [site] content {problem}")
    fetch = _section(settings, "fetch", FetchSettings, problems)
    publish = _section(settings, "publish", PublishSettings, problems)
    defaults = _section(settings, "encode", EncodeSettings, problems)
    indexnow = _section(settings, "indexnow", IndexNowSettings, problems)
    render = _section(settings, "render", RenderSettings, problems)
    if indexnow.key and not INDEXNOW_KEY.match(indexnow.key):
        problems.append("site.toml: [indexnow] key must be 8-128 characters of A-Z, a-z, 0-9 and '-', "
                        f"got {indexnow.key[:20]!r}")
    if indexnow.key and (problem := url_problem(indexnow.endpoint)):
        problems.append(f"site.toml: [indexnow] endpoint {problem}")
    jobs = site.get("jobs", 0)
    if not isinstance(jobs, int) or jobs < 0:
        problems.append(f"site.toml: [site] jobs must be a whole number >= 0, got {jobs!r}")
    try:
        icons = load_icon_map(root / "icon_map.yaml", defaults)
    except ConfigError as error:
        problems.extend(error.problems or (str(error),))
        icons = ()
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in the site configuration; nothing was built", tuple(problems))
    return SiteConfig(root, title, base_url, content, icons, fetch, publish, indexnow, render, jobs)


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path.name}: {error}; fix the TOML syntax") from None


def _section(settings: dict[str, Any], name: str, cls: type, problems: list[str]) -> Any:
    """Build a settings dataclass from a [name] table, checking key names and value types."""
    table = settings.get(name, {})
    defaults = cls()
    known = {f.name: getattr(defaults, f.name) for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            problems.append(f"site.toml: [{name}] unknown key {key!r}; known: {', '.join(known)}")
        elif cls is EncodeSettings and key in OPTION_PARSERS:
            try:
                values[key] = OPTION_PARSERS[key](value)
            except (TypeError, ValueError) as error:
                problems.append(f"site.toml: [{name}] {key} {error}, got {value!r}")
        elif not _same_type(value, known[key]):
            problems.append(f"site.toml: [{name}] {key} must be {type(known[key]).__name__}, got {value!r}")
        else:
            values[key] = value
    return cls(**values)


def _same_type(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and value >= 0
    return isinstance(value, type(default)) and (not isinstance(value, int) or value >= 0)
