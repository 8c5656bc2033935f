"""Changed page URLs -> an IndexNow ping, through a durable outbox.

Only URLs whose visible content changed are queued, and a URL is never sent twice for the same
content: the outbox remembers the content hash last accepted for each URL. Unsent URLs survive
a failed ping, a crash or a restart (the outbox is written with temp file + fsync + rename).

Answers, per the protocol (https://www.indexnow.org/documentation):
    200, 202        accepted: the batch leaves the outbox
    429             too many requests: keep everything, back off (Retry-After, capped)
    400, 403, 422   our request is wrong (bad body, key not verified, URLs not on this host):
                    stop and report; the URLs stay queued for after the fix
    5xx, timeout    keep everything; the next run tries again
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from .errors import ConfigError
from .files import write_atomic
from .model import IndexNowSettings, PingResult

BATCH = 10_000  # the protocol's limit per POST
PAGE_TYPES = (".html", ".json", ".xml", ".txt")  # what a reader or a crawler sees as content
NOT_CONTENT = {"manifest.json"}
MAX_BACKOFF = 3600.0  # a huge Retry-After, or a clock that jumped, never locks us out longer


# ---- what changed, as a reader sees it -------------------------------------------------------

_ASSET_URL = re.compile(rb"/assets/[^\"'\s<>(),]+")
_VOLATILE = re.compile(rb'(<meta name="build" content=|integrity=)"[^"]*"')
_UNSEEN = re.compile(rb'<source\b[^>]*>|\s+srcset="[^"]*"')


def visible(page: bytes) -> bytes:
    """The page with what a reader cannot see blanked out: asset URLs (hashes, densities), srcsets,
    which formats a <picture> offers, SRI and the build id. An icon re-encoded, at other densities
    or in another format, is the same icon to the reader."""
    return _UNSEEN.sub(b"", _VOLATILE.sub(rb'\1""', _ASSET_URL.sub(b"/assets/", page)))


def changed_pages(replaced: dict[str, bytes | None], files: dict[str, bytes]) -> tuple[str, ...]:
    """Of the files a release added, changed or dropped (`replaced`: path -> the bytes it had
    before, None if new), the pages whose visible content is new, gone or different. A page that
    differs only in asset hashes (an icon re-encoded, the CSS changed) or its build id is not a
    content change: search engines need not hear about it."""
    changed = []
    for path, old in sorted(replaced.items()):
        if not path.endswith(PAGE_TYPES) or path in NOT_CONTENT:
            continue
        if old is None or path not in files or visible(old) != visible(files[path]):
            changed.append(path)
    return tuple(changed)


# ---- the outbox and the ping ------------------------------------------------------------------


@dataclass
class Outbox:
    pending: dict[str, str] = field(default_factory=dict)  # url -> content hash to announce
    sent: dict[str, str] = field(default_factory=dict)  # url -> content hash last accepted
    retry_after: float = 0.0  # wall-clock seconds

    @classmethod
    def load(cls, path: Path) -> Outbox:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(dict(raw["pending"]), dict(raw["sent"]), float(raw["retry_after"]))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{path}: the IndexNow outbox is damaged ({error}); delete it to start afresh") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"pending": self.pending, "sent": self.sent, "retry_after": self.retry_after}, indent=1)
        write_atomic(path, (data + "\n").encode())

    def queue(self, changed: dict[str, str]) -> None:
        for url, digest in changed.items():
            if self.sent.get(url) != digest:
                self.pending[url] = digest


def ping(
    outbox_path: Path,
    changed: dict[str, str],
    base_url: str,
    settings: IndexNowSettings,
    client: httpx.Client,
    now: float,
) -> PingResult:
    """Queue `changed` (public URL -> content hash), then send what the outbox holds."""
    outbox = Outbox.load(outbox_path)
    outbox.queue(changed)
    try:
        if not outbox.pending:
            return PingResult()
        if now < outbox.retry_after <= now + MAX_BACKOFF:
            return PingResult(
                pending=len(outbox.pending),
                problem=f"IndexNow asked us to wait; {len(outbox.pending)} URL(s) stay queued "
                f"for {outbox.retry_after - now:.0f}s more",
            )
        return _send(outbox, base_url, settings, client, now)
    finally:
        outbox.save(outbox_path)


def _send(outbox: Outbox, base_url: str, settings: IndexNowSettings, client: httpx.Client, now: float) -> PingResult:
    sent: list[str] = []
    urls = sorted(outbox.pending)
    for start in range(0, len(urls), BATCH):
        batch = urls[start : start + BATCH]
        body = {
            "host": urlsplit(base_url).hostname,
            "key": settings.key,
            "keyLocation": f"{base_url}/{settings.key}.txt",
            "urlList": batch,
        }
        try:
            response = client.post(settings.endpoint, json=body, timeout=settings.timeout)
        except httpx.HTTPError as error:
            return _stopped(
                outbox,
                sent,
                f"IndexNow endpoint {settings.endpoint} unreachable ({type(error).__name__}); "
                "the URLs stay queued for the next run",
            )
        status = response.status_code
        if status in (200, 202):
            for url in batch:
                outbox.sent[url] = outbox.pending.pop(url)
            sent += batch
        elif status == 429:
            outbox.retry_after = now + min(_retry_after(response), MAX_BACKOFF)
            return _stopped(
                outbox,
                sent,
                f"IndexNow answered 429 (too many requests); backing off "
                f"{outbox.retry_after - now:.0f}s with the URLs queued",
            )
        elif status in (400, 403, 422):
            why = {
                400: "the request was malformed",
                403: f"the key was not verified: is {body['keyLocation']} served with exactly the key?",
                422: f"the URLs do not belong to {body['host']} or the key does not match",
            }[status]
            return _stopped(
                outbox, sent, f"IndexNow refused the ping with {status}: {why}; fix it, the URLs stay queued"
            )
        else:
            return _stopped(outbox, sent, f"IndexNow answered {status}; the URLs stay queued for the next run")
    outbox.retry_after = 0.0
    return PingResult(tuple(sent), len(outbox.pending))


def _stopped(outbox: Outbox, sent: list[str], problem: str) -> PingResult:
    return PingResult(tuple(sent), len(outbox.pending), problem)


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else 600.0
