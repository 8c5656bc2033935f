"""Which releases stay: the last K by sequence number, plus any made within the window.

    releases/rNNNNNN.json   the Record of one release: its files' hashes, the assets it made

Hashed assets must outlive the release that made them (a page served an hour ago still names
them), so a release is kept, and its assets carried into every later release, while it is among
the last `keep_releases` or younger than `retention_hours`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .model import PublishSettings

log = logging.getLogger(__name__)
RELEASE = re.compile(r"^r(\d{6,})$")


@dataclass(frozen=True)
class Record:
    """releases/rNNNNNN.json."""

    name: str
    seq: int
    created: float  # wall-clock seconds; used only for the retention window, never for ordering
    built: dict[str, str]  # path -> sha256 of the files this build produced
    assets: list[str]  # the hashed assets this build made; later releases carry them while it is kept


def load_records(releases: Path) -> list[Record]:
    records = []
    for path in releases.glob("r*.json"):
        if not RELEASE.match(path.stem) or not (releases / path.stem).is_dir():
            continue
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            records.append(
                Record(raw["name"], int(raw["seq"]), float(raw["created"]), dict(raw["built"]), list(raw["assets"]))
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a record we cannot read: its release is never carried forward
    return sorted(records, key=lambda r: r.seq)


def kept_records(records: list[Record], settings: PublishSettings, now: float) -> list[Record]:
    """The last K by sequence number (never by clock), plus any created within the window.
    A clock that jumped back makes records look newer, which only keeps more."""
    by_seq = sorted(records, key=lambda r: r.seq)
    recent = by_seq[-max(2, settings.keep_releases) :]
    window = now - settings.retention_hours * 3600
    return [r for r in by_seq if r in recent or r.created >= window]


def retained_assets(records: list[Record], settings: PublishSettings, now: float) -> set[str]:
    """The hashed assets the next release must carry."""
    return {a for r in kept_records(records, settings, now) for a in r.assets}


def collect_garbage(
    releases: Path, live: str | None, records: list[Record], settings: PublishSettings, now: float
) -> None:
    """Remove every release (and record) retention no longer keeps; never the live one."""
    keep = {r.name for r in kept_records(records, settings, now)} | ({live} if live else set())
    for entry in sorted(releases.iterdir()):
        name = entry.name.removesuffix(".json")
        if RELEASE.match(name) and name not in keep:
            if entry.is_dir():
                log.info("retention: removed release %s", name)
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def remove_never_live(releases: Path, live: str | None) -> None:
    """Releases numbered after the live one were renamed into place by a run that died (or was
    stopped) before its switch: never served, so nothing can need them, and they must not count
    among the last K that retention keeps. Safe: the caller holds the lock."""
    live_match = RELEASE.match(live) if live else None
    if live_match is None:
        return
    live_seq = int(live_match.group(1))
    for entry in releases.iterdir():
        match = RELEASE.match(entry.name.removesuffix(".json"))
        if match and int(match.group(1)) > live_seq:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
