"""YAML with line numbers, and the text checks every input file shares.

The readers compose YAML to nodes rather than safe_load it so that every problem can name its
FILE:LINE, and so that a duplicate key is seen instead of silently keeping the last one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..errors import ConfigError

MAX_DEPTH = 50  # a site file needs 5
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 6 ms, not 146, for 500 icons
MAX_URL_LENGTH = 2048
MAX_NAME_LENGTH = 100
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")  # incl. lone surrogates
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # a regex, not a loop per character: 5,000 icons' scalars add up
_SPACE = re.compile(r"\s")  # for str patterns, exactly str.isspace()
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$|^\[[0-9a-f:.]+\]$")


def compose(path: Path) -> yaml.Node | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path.name}: not found in {path.parent}; is this a site folder? (use --site DIR)") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path.name}: is not UTF-8 text ({error.reason} at byte {error.start})") from None
    return compose_text(path.name, text)


def compose_text(label: str, text: str) -> yaml.Node | None:
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
                raise ConfigError(f"{label}:{_mark_line(event.start_mark)}: nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            raise ConfigError(
                f"{label}:{_mark_line(event.start_mark)}: YAML aliases (*name) are not supported; write the value out"
            )


def _compose_for_errors(label: str, text: str) -> yaml.Node | None:
    """The pure-Python parser, whose messages name what it found ("found ','") where libyaml's
    only say what it missed: used once the fast parser has refused the text."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        line = _mark_line(error.problem_mark or error.context_mark)
        raise ConfigError(f"{label}:{line}: {error.problem or error.context}; fix the syntax (YAML, or JSON)") from None
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, max(0, error.position)) + 1
        character = f"#x{error.character:04x}" if isinstance(error.character, int) else repr(error.character)
        raise ConfigError(f"{label}:{line}: unacceptable character {character}; remove it") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{label}: {error}") from None
    except RecursionError:
        raise ConfigError(f"{label}: nested too deeply to be a site file") from None


def _mark_line(mark: yaml.error.Mark | yaml._yaml.Mark | None) -> int:
    return mark.line + 1 if mark else 1


def _join_surrogate_pairs(root: yaml.Node | None) -> None:
    """JSON writes characters beyond U+FFFF as escaped surrogate pairs ("\\ud83c\\udf81"), which
    PyYAML decodes half by half. Join each pair into its character; a lone half stays, and the
    plain-text checks reject it."""
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            if _SURROGATE.search(node.value):
                node.value = node.value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)


def fields_of(label: str, node: yaml.MappingNode, problems: list[str]) -> dict[str, yaml.Node]:
    """A mapping's text keys -> value nodes; a key that is not text, or repeated, is a problem."""
    fields: dict[str, yaml.Node] = {}
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode):
            problems.append(f"{label}:{line_of(key)}: a key must be plain text")
        elif key.value in fields:
            first = line_of(fields[key.value])
            problems.append(f"{label}:{line_of(key)}: duplicate key {key.value!r} (first at line {first})")
        else:
            fields[key.value] = value
    return fields


def line_of(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def label_of(node: yaml.Node, where: str) -> str:
    return f"{where.rsplit(':', 1)[0]}:{line_of(node)}"


# ---- the text checks ----------------------------------------------------------------------------


def name_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not name.strip():
        return "must be a non-empty string"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters; at most {MAX_NAME_LENGTH}"
    if CONTROL.search(name):
        return f"{name!r} contains control characters"
    return None


def url_problem(url: str) -> str | None:
    """Why this URL may not be fetched (or linked), or None. Only plain http(s) to a named host."""
    if len(url) > MAX_URL_LENGTH:
        return f"is {len(url)} characters long; at most {MAX_URL_LENGTH}"
    if CONTROL.search(url) or _SPACE.search(url):
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
