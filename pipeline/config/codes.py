"""codes.yaml (or the same data as JSON, from a file or a feed URL) -> Content.

Read after the site config, so every reward's icon is checked against the icon map; a problem
fails the run before anything is published, so the last good site stays live.
"""

from __future__ import annotations

import datetime as dt
import re

import yaml

from ..errors import ConfigError
from ..model import Code, Content, Reward
from .loader import CONTROL, compose_text, fields_of, label_of, line_of, name_problem


def load_content(label: str, text: str, icon_names: set[str]) -> Content:
    """Parse the codes data (YAML or JSON, which is YAML too) and check every reward's icon."""
    root = compose_text(label, text)
    problems: list[str] = []
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{label}:{line_of(root) if root else 1}: expected a mapping with `game:` and `codes:`")
    top = fields_of(label, root, problems)
    game = top.get("game")
    codes_node = top.get("codes")
    name: str = game.value if isinstance(game, yaml.ScalarNode) else ""
    if not name.strip() or CONTROL.search(name):
        problems.append(f"{label}:{line_of(root)}: `game:` must name the game in plain text")
    if not isinstance(codes_node, yaml.SequenceNode):
        problems.append(f"{label}:{line_of(codes_node or root)}: `codes:` must be a list of codes")
        codes_node = yaml.SequenceNode("tag:yaml.org,2002:seq", [])
    codes = []
    seen: dict[str, int] = {}
    for item in codes_node.value:
        written, code = _code(label, item, icon_names, problems)
        if written is not None and written in seen:  # judged on the text: a code with other problems counts too
            problems.append(f"{label}:{line_of(item)}: duplicate code {written!r} (first at line {seen[written]})")
            continue
        if written is not None:
            seen[written] = line_of(item)
        if code is not None:
            codes.append(code)
    unknown = set(top) - {"game", "codes"}
    if unknown:
        problems.append(f"{label}:{line_of(root)}: unknown key(s) {', '.join(sorted(unknown))}; known: game, codes")
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in {label}; the last good site stays live", tuple(problems))
    return Content(name, tuple(codes))


def _code(label: str, node: yaml.Node, icon_names: set[str], problems: list[str]) -> tuple[str | None, Code | None]:
    """(the code's text if it has one, the Code if it has no problem); every field is checked,
    so one bad field never hides another."""
    where = f"{label}:{line_of(node)}"
    if not isinstance(node, yaml.MappingNode):
        problems.append(f"{where}: each code must be a mapping with code, added and rewards")
        return None, None
    before = len(problems)
    fields = fields_of(label, node, problems)
    code = _scalar(fields, "code", where, problems)
    if code is not None and (name_problem(code) or not code.strip()):
        problems.append(f"{where}: code {name_problem(code)}")
    added = _date(fields, "added", where, problems, required=True)
    expires = _date(fields, "expires", where, problems, required=False)
    note = _scalar(fields, "note", where, problems, required=False) or ""
    if CONTROL.search(note):
        problems.append(f"{where}: note must be plain text (no control characters)")
    rewards = _rewards(fields.get("rewards"), where, label, icon_names, problems)
    unknown = set(fields) - {"code", "added", "expires", "note", "rewards"}
    if unknown:
        problems.append(
            f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
            "known: code, added, expires, note, rewards"
        )
    if len(problems) > before or code is None or added is None:  # a missing code or date is a problem already
        return code, None
    return code, Code(code, added, expires, rewards, note)


def _scalar(
    fields: dict[str, yaml.Node], key: str, where: str, problems: list[str], required: bool = True
) -> str | None:
    node = fields.get(key)
    if node is None:
        if required:
            problems.append(f"{where}: missing `{key}:`")
        return None
    if not isinstance(node, yaml.ScalarNode):
        problems.append(f"{label_of(node, where)}: `{key}:` must be text")
        return None
    text: str = node.value
    return text


def _date(fields: dict[str, yaml.Node], key: str, where: str, problems: list[str], required: bool) -> dt.date | None:
    text = _scalar(fields, key, where, problems, required)
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        problems.append(f"{label_of(fields[key], where)}: `{key}:` must be a date like 2026-11-27, got {text[:40]!r}")
        return None


def _rewards(
    node: yaml.Node | None, where: str, label: str, icon_names: set[str], problems: list[str]
) -> tuple[Reward, ...]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        problems.append(f"{where}: `rewards:` must be a non-empty list of {{icon: NAME, amount: N}}")
        return ()
    rewards = []
    for item in node.value:
        reward = _reward(label, item, icon_names, problems)
        if reward is not None:
            rewards.append(reward)
    return tuple(rewards)


def _reward(label: str, node: yaml.Node, icon_names: set[str], problems: list[str]) -> Reward | None:
    """One {icon: NAME, amount: N}; every problem it has is reported, not only the first."""
    at = f"{label}:{line_of(node)}"
    if not isinstance(node, yaml.MappingNode):
        problems.append(f"{at}: a reward must be {{icon: NAME, amount: N}}")
        return None
    before = len(problems)
    fields = fields_of(label, node, problems)
    if set(fields) - {"icon", "amount"}:
        problems.append(f"{at}: a reward must be {{icon: NAME, amount: N}}, got key(s) {', '.join(sorted(fields))}")
    for key, value in fields.items():
        if key in ("icon", "amount") and not isinstance(value, yaml.ScalarNode):
            problems.append(f"{label_of(value, at)}: reward `{key}:` must be a single value, not a list or mapping")
    icon, amount = fields.get("icon"), fields.get("amount")
    if icon is None:
        problems.append(f"{at}: reward has no icon; write {{icon: NAME, amount: N}}")
    elif isinstance(icon, yaml.ScalarNode) and icon.value not in icon_names:
        known = ", ".join(sorted(icon_names)) or "none"
        problems.append(
            f"{label_of(icon, at)}: reward icon {icon.value!r} is not in icon_map.yaml; "
            f"add it there or use one of: {known}"
        )
    if amount is None:
        problems.append(f"{at}: reward has no amount; write {{icon: NAME, amount: N}}")
    elif isinstance(amount, yaml.ScalarNode) and (
        not re.fullmatch(r"[0-9]{1,9}", amount.value) or int(amount.value) == 0
    ):
        problems.append(
            f"{label_of(amount, at)}: reward amount must be a whole number from 1, got {amount.value[:20]!r}"
        )
    if len(problems) > before or not isinstance(icon, yaml.ScalarNode) or not isinstance(amount, yaml.ScalarNode):
        return None
    return Reward(icon.value, int(amount.value))
