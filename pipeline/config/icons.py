"""icon_map.yaml -> IconSpecs.

An icon's encode options are parsed here, not in site.py, because the same option may be written
in YAML (per icon, as text) or TOML (site-wide [encode] defaults, typed): one parser reads both.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..model import EncodeSettings, IconSpec
from .loader import CONTROL, compose, fields_of, line_of, name_problem, url_problem

MAX_DISPLAY = 1024  # CSS px; an icon box larger than this is not an icon
MAX_DENSITY = 4.0
SSIM_FLOOR = (0.5, 1.0)  # the ranges of the encode options, for site.py's messages too
PNG_LEVEL = (0, 6)
DENSITIES_EXPECTED = f"must be a list of 1 to 6 screen densities from 1 to {MAX_DENSITY:g}, like [1, 2, 3]"
_DEFAULTS = EncodeSettings()


def load_icon_map(path: Path, defaults: EncodeSettings = _DEFAULTS) -> tuple[IconSpec, ...]:
    """Parse icon_map.yaml: `Name: URL` or `Name: {url: ..., alt: ..., avif: false, ...}`."""
    root = compose(path)
    if root is None:
        raise ConfigError(f"{path.name}: is empty; map each icon name to its source URL")
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path.name}:{line_of(root)}: expected a mapping of icon name -> url")
    problems: list[str] = []
    specs: list[IconSpec] = []
    seen: dict[str, int] = {}
    slugs: dict[str, str] = {}
    for key, value in root.value:
        where = f"{path.name}:{line_of(key)}"
        name = key.value if isinstance(key, yaml.ScalarNode) else ""
        if problem := name_problem(name):
            problems.append(f"{where}: icon name {problem}")
            continue
        if name in seen:
            problems.append(f"{where}: duplicate icon name {name!r} (first at line {seen[name]}); keep one")
            continue
        seen[name] = line_of(key)
        spec = _icon_spec(name, value, where, defaults, problems)
        if spec is None:
            continue
        if spec.slug in slugs:
            problems.append(
                f"{where}: icon {name!r} has the same file name {spec.slug!r} as {slugs[spec.slug]!r}; rename one"
            )
            continue
        slugs[spec.slug] = name
        specs.append(spec)
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in {path.name}", tuple(problems))
    return tuple(specs)


def _icon_spec(
    name: str, node: yaml.Node, where: str, defaults: EncodeSettings, problems: list[str]
) -> IconSpec | None:
    options: dict[str, Any] = {}
    if isinstance(node, yaml.ScalarNode):
        options["url"] = node.value
    elif isinstance(node, yaml.MappingNode):
        for k, v in fields_of(where.split(":")[0], node, problems).items():
            options[k] = v.value if isinstance(v, yaml.ScalarNode) else v
    else:
        problems.append(f"{where}: icon {name!r} must be a URL or a mapping with a url")
        return None
    url = options.pop("url", None)
    alt = options.pop("alt", name)
    if not isinstance(url, str) or not url:
        problems.append(f"{where}: icon {name!r} has no url; add `url: https://...`")
        return None
    if problem := url_problem(url):
        problems.append(f"{where}: icon {name!r} url {problem}")
        return None
    if not isinstance(alt, str) or CONTROL.search(alt):
        problems.append(f"{where}: icon {name!r} alt must be plain text")
        return None
    settings = _encode_options(name, options, where, defaults, problems)
    if settings is None:
        return None
    return IconSpec(name, slugify(name), url, alt, settings, int(where.rsplit(":", 1)[1]))


OPTION_PARSERS: dict[str, Callable[[Any], object]] = {
    "ssim_floor": lambda s: _ranged(_number(s), *SSIM_FLOOR),
    "avif": lambda s: _boolean(s),
    "lossless_only": lambda s: _boolean(s),
    "png_level": lambda s: _whole(s, *PNG_LEVEL),
    "display": lambda s: _whole(s, 0, MAX_DISPLAY),
    "densities": lambda s: _densities(s),
}


def _encode_options(
    name: str, options: dict[str, Any], where: str, defaults: EncodeSettings, problems: list[str]
) -> EncodeSettings | None:
    values: dict[str, Any] = {}
    for key, raw in options.items():
        parser = OPTION_PARSERS.get(key)
        if parser is None:
            known = ", ".join(OPTION_PARSERS)
            problems.append(f"{where}: icon {name!r} unknown option {key!r}; known: url, alt, {known}")
            return None
        try:
            values[key] = parser(raw)
        except (TypeError, ValueError) as error:
            problems.append(f"{where}: icon {name!r} option {key} {error}, got {_shown(raw)}")
            return None
    return EncodeSettings(**{**defaults.__dict__, **values})


def _shown(raw: Any) -> str:
    """A YAML value as the user wrote it, for messages."""
    if isinstance(raw, yaml.SequenceNode):
        return "[" + ", ".join(v.value if isinstance(v, yaml.ScalarNode) else "..." for v in raw.value) + "]"
    return "a mapping" if isinstance(raw, yaml.MappingNode) else repr(raw)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("must be a number")
    return float(value)


def _whole(value: Any, low: int, high: int) -> int:
    """A whole number from TOML (int) or YAML (text), in [low, high]: no bools, no 40.5."""
    if isinstance(value, bool) or not (isinstance(value, int) or re.fullmatch(r"[0-9]{1,9}", str(value))):
        raise ValueError(f"must be a whole number from {low} to {high}")
    return int(_ranged(int(value), low, high))


def _densities(value: Any) -> tuple[float, ...]:
    """[1, 2, 3] from TOML (a list) or YAML (a sequence node): ascending, no repeats."""
    nodes = value.value if isinstance(value, yaml.SequenceNode) else value if isinstance(value, list) else None
    items = None if nodes is None else [v.value if isinstance(v, yaml.ScalarNode) else v for v in nodes]
    message = DENSITIES_EXPECTED
    if not items or len(items) > 6:
        raise ValueError(message)
    try:
        numbers = sorted({_ranged(_number(item), 1.0, MAX_DENSITY) for item in items})
    except (TypeError, ValueError):
        raise ValueError(message) from None
    return tuple(numbers)


def _ranged(value: float, low: float, high: float) -> float:
    if not low <= value <= high:
        raise ValueError(f"must be between {low} and {high}")
    return value


def _boolean(value: Any) -> bool:
    if str(value).lower() in ("true", "yes", "on"):
        return True
    if str(value).lower() in ("false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def slugify(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:60].strip("-")
    if not slug:
        import hashlib  # here, not at the top: only such names need it, and it is 3 ms of OpenSSL at import

        slug = "icon-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return slug
