"""icon_map.yaml, site.toml and codes.yaml -> frozen values.

Every problem is reported with FILE:LINE, and all of them at once: a user fixing a config file
should see the whole list in one run, as MkDocs does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import tomllib
import unicodedata
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError
from .model import (
    Code,
    Content,
    EncodeSettings,
    FetchSettings,
    IconSpec,
    IndexNowSettings,
    PublishSettings,
    RenderSettings,
    Reward,
    SiteConfig,
)

MAX_DEPTH = 50  # a site file needs 5
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 6 ms, not 146, for 500 icons
INDEXNOW_KEY = re.compile(r"^[A-Za-z0-9-]{8,128}$")
MAX_URL_LENGTH = 2048
MAX_NAME_LENGTH = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")  # incl. lone surrogates
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$|^\[[0-9a-f:.]+\]$")


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
        problems.append(f"site.toml: [indexnow] key must be 8-128 characters of A-Z, a-z, 0-9 and '-', got {indexnow.key[:20]!r}")
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
    values = {}
    for key, value in table.items():
        if key not in known:
            problems.append(f"site.toml: [{name}] unknown key {key!r}; known: {', '.join(known)}")
        elif cls is EncodeSettings and key in _OPTION_PARSERS:
            try:
                values[key] = _OPTION_PARSERS[key](value)
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


# ---- icon_map.yaml ------------------------------------------------------------------------------


def load_icon_map(path: Path, defaults: EncodeSettings = EncodeSettings()) -> tuple[IconSpec, ...]:
    """Parse icon_map.yaml: `Name: URL` or `Name: {url: ..., alt: ..., avif: false, ...}`."""
    root = _compose(path)
    if root is None:
        raise ConfigError(f"{path.name}: is empty; map each icon name to its source URL")
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path.name}:{_line(root)}: expected a mapping of icon name -> url")
    problems: list[str] = []
    specs: list[IconSpec] = []
    seen: dict[str, int] = {}
    slugs: dict[str, str] = {}
    for key, value in root.value:
        where = f"{path.name}:{_line(key)}"
        name = key.value if isinstance(key, yaml.ScalarNode) else ""
        if problem := name_problem(name):
            problems.append(f"{where}: icon name {problem}")
            continue
        if name in seen:
            problems.append(f"{where}: duplicate icon name {name!r} (first at line {seen[name]}); keep one")
            continue
        seen[name] = _line(key)
        spec = _icon_spec(name, value, where, defaults, problems)
        if spec is None:
            continue
        if spec.slug in slugs:
            problems.append(f"{where}: icon {name!r} has the same file name {spec.slug!r} as {slugs[spec.slug]!r}; rename one")
            continue
        slugs[spec.slug] = name
        specs.append(spec)
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in {path.name}", tuple(problems))
    return tuple(specs)


def _icon_spec(name: str, node: yaml.Node, where: str, defaults: EncodeSettings, problems: list[str]) -> IconSpec | None:
    options: dict[str, Any] = {}
    if isinstance(node, yaml.ScalarNode):
        options["url"] = node.value
    elif isinstance(node, yaml.MappingNode):
        for k, v in _fields(where.split(":")[0], node, problems).items():
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
    if not isinstance(alt, str) or _CONTROL.search(alt):
        problems.append(f"{where}: icon {name!r} alt must be plain text")
        return None
    settings = _encode_options(name, options, where, defaults, problems)
    if settings is None:
        return None
    return IconSpec(name, slugify(name), url, alt, settings, int(where.rsplit(":", 1)[1]))


MAX_DISPLAY = 1024  # CSS px; an icon box larger than this is not an icon
MAX_DENSITY = 4.0

_OPTION_PARSERS = {
    "ssim_floor": lambda s: _ranged(_number(s), 0.5, 1.0),
    "avif": lambda s: _boolean(s),
    "lossless_only": lambda s: _boolean(s),
    "png_level": lambda s: _whole(s, 0, 6),
    "display": lambda s: _whole(s, 0, MAX_DISPLAY),
    "densities": lambda s: _densities(s),
}


def _encode_options(name: str, options: dict[str, Any], where: str, defaults: EncodeSettings, problems: list[str]) -> EncodeSettings | None:
    values: dict[str, Any] = {}
    for key, raw in options.items():
        parser = _OPTION_PARSERS.get(key)
        if parser is None:
            problems.append(f"{where}: icon {name!r} unknown option {key!r}; known: url, alt, {', '.join(_OPTION_PARSERS)}")
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
        raise ValueError("must be a number")
    return float(value)


def _whole(value: Any, low: int, high: int) -> int:
    """A whole number from TOML (int) or YAML (text), in [low, high]: no bools, no 40.5."""
    if isinstance(value, bool) or not (isinstance(value, int) or re.fullmatch(r"[0-9]{1,9}", str(value))):
        raise ValueError(f"must be a whole number from {low} to {high}")
    return int(_ranged(int(value), low, high))


def _densities(value: Any) -> tuple[float, ...]:
    """[1, 2, 3] from TOML (a list) or YAML (a sequence node): ascending, no repeats."""
    items = [v.value if isinstance(v, yaml.ScalarNode) else v for v in getattr(value, "value", value)] \
        if isinstance(value, (list, yaml.SequenceNode)) else None
    message = f"must be a list of 1 to 6 screen densities from 1 to {MAX_DENSITY:g}, like [1, 2, 3]"
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


def name_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not name.strip():
        return "must be a non-empty string"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters; at most {MAX_NAME_LENGTH}"
    if _CONTROL.search(name):
        return f"{name!r} contains control characters"
    return None


def url_problem(url: str) -> str | None:
    """Why this URL may not be fetched (or linked), or None. Only plain http(s) to a named host."""
    if len(url) > MAX_URL_LENGTH:
        return f"is {len(url)} characters long; at most {MAX_URL_LENGTH}"
    if _CONTROL.search(url) or any(c.isspace() for c in url):
        return f"{url[:80]!r} contains spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"{url[:80]!r} is not a valid URL ({error})"
    if parts.scheme not in ("http", "https"):
        return f"{url[:80]!r} has scheme {parts.scheme or 'none'!r}; only http and https are allowed"
    if parts.username is not None or parts.password is not None:
        return f"{url[:80]!r} carries credentials; remove the user:password@ part"
    host = parts.hostname or ""
    if not host.isascii():
        return f"{url[:80]!r} has a non-ASCII host; write it in punycode (xn--...) if it is really meant"
    if not _HOST.match(host) and not _HOST.match(f"[{host}]"):
        return f"{url[:80]!r} has no valid host name"
    if port == 0:
        return f"{url[:80]!r} has port 0"
    return None


def slugify(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:60].strip("-")
    if not slug:
        slug = "icon-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return slug


# ---- codes.yaml --------------------------------------------------------------------------------


def load_content(label: str, text: str, icon_names: set[str]) -> Content:
    """Parse the codes data (YAML or JSON, which is YAML too) and check every reward's icon."""
    root = _compose_text(label, text)
    problems: list[str] = []
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{label}:{_line(root) if root else 1}: expected a mapping with `game:` and `codes:`")
    top = _fields(label, root, problems)
    game = top.get("game")
    codes_node = top.get("codes")
    if not isinstance(game, yaml.ScalarNode) or not game.value.strip() or _CONTROL.search(game.value):
        problems.append(f"{label}:{_line(root)}: `game:` must name the game in plain text")
    if not isinstance(codes_node, yaml.SequenceNode):
        problems.append(f"{label}:{_line(codes_node or root)}: `codes:` must be a list of codes")
        codes_node = yaml.SequenceNode("tag:yaml.org,2002:seq", [])
    codes = []
    seen: dict[str, int] = {}
    for item in codes_node.value:
        code = _code(label, item, icon_names, problems)
        if code is None:
            continue
        if code.code in seen:
            problems.append(f"{label}:{_line(item)}: duplicate code {code.code!r} (first at line {seen[code.code]})")
            continue
        seen[code.code] = _line(item)
        codes.append(code)
    unknown = set(top) - {"game", "codes"}
    if unknown:
        problems.append(f"{label}:{_line(root)}: unknown key(s) {', '.join(sorted(unknown))}; known: game, codes")
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in {label}; the last good site stays live", tuple(problems))
    return Content(game.value, tuple(codes))  # type: ignore[union-attr]


def _code(label: str, node: yaml.Node, icon_names: set[str], problems: list[str]) -> Code | None:
    where = f"{label}:{_line(node)}"
    if not isinstance(node, yaml.MappingNode):
        problems.append(f"{where}: each code must be a mapping with code, added and rewards")
        return None
    before = len(problems)
    fields_ = _fields(label, node, problems)
    code = _scalar(fields_, "code", where, problems)
    if code is not None and (name_problem(code) or not code.strip()):
        problems.append(f"{where}: code {name_problem(code)}")
    added = _date(fields_, "added", where, problems, required=True)
    expires = _date(fields_, "expires", where, problems, required=False)
    note = _scalar(fields_, "note", where, problems, required=False) or ""
    if _CONTROL.search(note):
        problems.append(f"{where}: note must be plain text (no control characters)")
    rewards = _rewards(fields_.get("rewards"), where, label, icon_names, problems)
    unknown = set(fields_) - {"code", "added", "expires", "note", "rewards"}
    if unknown:
        problems.append(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}; known: code, added, expires, note, rewards")
    if len(problems) > before:
        return None
    return Code(code, added, expires, rewards, note)  # type: ignore[arg-type]


def _scalar(fields_: dict[str, yaml.Node], key: str, where: str, problems: list[str], required: bool = True) -> str | None:
    node = fields_.get(key)
    if node is None:
        if required:
            problems.append(f"{where}: missing `{key}:`")
        return None
    if not isinstance(node, yaml.ScalarNode):
        problems.append(f"{label_of(node, where)}: `{key}:` must be text")
        return None
    return node.value


def _date(fields_: dict[str, yaml.Node], key: str, where: str, problems: list[str], required: bool) -> dt.date | None:
    text = _scalar(fields_, key, where, problems, required)
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        problems.append(f"{label_of(fields_[key], where)}: `{key}:` must be a date like 2026-11-27, got {text[:40]!r}")
        return None


def _rewards(node: yaml.Node | None, where: str, label: str, icon_names: set[str], problems: list[str]) -> tuple[Reward, ...]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        problems.append(f"{where}: `rewards:` must be a non-empty list of {{icon: NAME, amount: N}}")
        return ()
    rewards = []
    for item in node.value:
        at = f"{label}:{_line(item)}"
        if not isinstance(item, yaml.MappingNode):
            problems.append(f"{at}: a reward must be {{icon: NAME, amount: N}}")
            continue
        fields_ = _fields(label, item, problems)
        unknown = set(fields_) - {"icon", "amount"}
        if unknown or not all(isinstance(v, yaml.ScalarNode) for v in fields_.values()):
            problems.append(f"{at}: a reward must be {{icon: NAME, amount: N}}, got key(s) {', '.join(sorted(fields_))}")
            continue
        icon, amount = fields_["icon"].value if "icon" in fields_ else None, fields_["amount"].value if "amount" in fields_ else "1"
        if icon not in icon_names:
            known = ", ".join(sorted(icon_names)) or "none"
            problems.append(f"{at}: reward icon {icon!r} is not in icon_map.yaml; add it there or use one of: {known}")
            continue
        if not re.fullmatch(r"[0-9]{1,9}", amount) or int(amount) == 0:
            problems.append(f"{at}: reward amount must be a whole number from 1, got {amount[:20]!r}")
            continue
        rewards.append(Reward(icon, int(amount)))
    return tuple(rewards)


def label_of(node: yaml.Node, where: str) -> str:
    return f"{where.rsplit(':', 1)[0]}:{_line(node)}"


# ---- YAML with line numbers ---------------------------------------------------------------------


def _compose(path: Path) -> yaml.Node | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path.name}: not found in {path.parent}; is this a site folder? (use --site DIR)") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path.name}: is not UTF-8 text ({error.reason} at byte {error.start})") from None
    return _compose_text(path.name, text)


def _compose_text(label: str, text: str) -> yaml.Node | None:
    """YAML -> node tree (which keeps line numbers and duplicate keys, unlike safe_load)."""
    try:
        _check_shape(label, text)
        root = yaml.compose(text, Loader=_FAST_LOADER)
    except (yaml.YAMLError, RecursionError):
        root = _compose_for_errors(label, text)
    _join_surrogate_pairs(root)
    return root


def _check_shape(label: str, text: str) -> None:
    """Refuse, from the event stream (flat, fast), what the composers cannot survive: nesting
    deep enough to crash libyaml's recursive composer (a segfault at ~25,000 levels), and
    aliases, which can make a few bytes stand for an exponential tree. Site files need neither."""
    depth = 0
    for event in yaml.parse(text, Loader=_FAST_LOADER):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"{label}:{event.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            raise ConfigError(f"{label}:{event.start_mark.line + 1}: YAML aliases (*name) are not supported; "
                              "write the value out")


def _compose_for_errors(label: str, text: str) -> yaml.Node | None:
    """The pure-Python parser, whose messages name what it found ("found ','") where libyaml's
    only say what it missed: used once the fast parser has refused the text."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError(f"{label}:{line}: {error.problem or error.context}; fix the syntax (YAML, or JSON)") from None
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, max(0, error.position)) + 1
        character = f"#x{error.character:04x}" if isinstance(error.character, int) else repr(error.character)
        raise ConfigError(f"{label}:{line}: unacceptable character {character}; remove it") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{label}: {error}") from None
    except RecursionError:
        raise ConfigError(f"{label}: nested too deeply to be a site file") from None


def _join_surrogate_pairs(root: yaml.Node | None) -> None:
    """JSON writes characters beyond U+FFFF as escaped surrogate pairs ("\\ud83c\\udf81"), which
    PyYAML decodes half by half. Join each pair into its character; a lone half stays, and the
    plain-text checks reject it."""
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            if any("\ud800" <= c <= "\udfff" for c in node.value):
                node.value = node.value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)


def _fields(label: str, node: yaml.MappingNode, problems: list[str]) -> dict[str, yaml.Node]:
    """A mapping's text keys -> value nodes; a key that is not text, or repeated, is a problem."""
    fields_: dict[str, yaml.Node] = {}
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode):
            problems.append(f"{label}:{_line(key)}: a key must be plain text")
        elif key.value in fields_:
            problems.append(f"{label}:{_line(key)}: duplicate key {key.value!r} (first at line {_line(fields_[key.value])})")
        else:
            fields_[key.value] = value
    return fields_


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1
