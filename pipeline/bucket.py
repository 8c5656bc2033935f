"""The object-storage Target: a release -> an S3-compatible bucket, in an order no reader can see.

    [publish]
    target = "s3://BUCKET/PREFIX"     # PREFIX optional
    endpoint = "http://127.0.0.1:8333" # empty: AWS
    region = "us-east-1"

S3 has no rename, so a publish is many single-object PUTs, each atomic on its own. The order makes
the half-done states invisible to a reader who starts from a page:

  1. every hashed asset (assets/...) the new release names that the bucket lacks, with
     Cache-Control: public, max-age=31536000, immutable and its Content-Type, each PUT carrying
     x-amz-checksum-sha256, which the server verifies (BadDigest otherwise);
  2. the other files that changed (JSON, XML, TXT, the IndexNow key, favicon.ico), no-cache;
  3. the state object, marking the new release as pending (a crash from here on is repaired by
     the next run, even one whose inputs went back to the old release);
  4. the HTML pages that changed, no-cache;
  5. retention: DELETE the hashed assets no release in the window names (never one the new
     pages name) and the pages the new release dropped;
  6. the state object again: the new release is live.

The state object (PREFIX/.pipeline-state.json) holds the records of the retained releases in the
format of the local ones (retention.Record: path -> sha256 of what was uploaded), so a run
compares by content hash with one GET: a run with nothing new does 1 GET and no PUT.

Every request is bounded (per-request timeout; the publish has a deadline) and retried on
connection errors, timeouts, 429 and 5xx, a few times with exponential backoff; a failure names
the endpoint, the key and the reason, and leaves the live pages as they were (steps 1-3) or
finished by the next run (steps 4-6). Credentials come only from AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN) or AWS_PROFILE (static keys in the shared
credentials file), never from site.toml.

The client is obstore (Rust object_store): imported only here, only when a target is set.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import PublishError
from .model import MIME, PublishResult, PublishSettings
from .retention import Record, kept_records

if TYPE_CHECKING:
    from obstore.store import S3Store

log = logging.getLogger(__name__)
T = TypeVar("T")
Checkpoint = Callable[[str], None]

STATE_KEY = ".pipeline-state.json"
IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"
ATTEMPTS = 4  # per request: the first try and 3 retries
BACKOFF = 0.25  # seconds before the first retry; doubled each time, never past the deadline
WORKERS = 8  # concurrent uploads
PAGE_TYPES = (".html", ".json", ".xml", ".txt")  # whose old bytes are read for the changed-page check
TARGET = re.compile(r"^s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(.*))?$")
TYPES = {
    **MIME,
    "ico": "image/x-icon",
    "svg": "image/svg+xml",
    "woff2": "font/woff2",
    "webmanifest": "application/manifest+json",
}
TEXT = ("text/", "application/json", "application/xml", "image/svg+xml", "application/manifest+json")


class BucketError(PublishError):
    """The bucket could not be brought up to date (exit 73, as any failed publish)."""


@dataclass(frozen=True)
class Location:
    bucket: str
    prefix: str  # "" or "site/v1" (no slashes at the ends)

    def url(self, key: str = "") -> str:
        return "s3://" + "/".join(p for p in (self.bucket, self.prefix, key) if p)


def parse_target(target: str) -> Location:
    match = TARGET.match(target)
    if not match:
        raise ValueError(f"target must look like s3://BUCKET/PREFIX, got {target!r}")
    return Location(match.group(1), (match.group(2) or "").strip("/"))


def content_type(path: str) -> str:
    mime = TYPES.get(path.rsplit(".", 1)[-1].lower(), "application/octet-stream")
    return mime + "; charset=utf-8" if mime.startswith(TEXT) else mime


def credentials(environ: Mapping[str, str]) -> tuple[str, str, str]:
    """(access key, secret key, session token or "") from the environment or AWS_PROFILE."""
    key, secret = environ.get("AWS_ACCESS_KEY_ID", ""), environ.get("AWS_SECRET_ACCESS_KEY", "")
    if key and secret:
        return key, secret, environ.get("AWS_SESSION_TOKEN", "")
    profile = environ.get("AWS_PROFILE", "")
    if profile:
        path = Path(environ.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials")
        parser = configparser.ConfigParser()
        try:
            parser.read_string(path.read_text(encoding="utf-8"))
        except (OSError, configparser.Error) as error:
            raise BucketError(f"AWS_PROFILE={profile}: cannot read {path} ({error}); nothing was uploaded") from None
        section = parser[profile] if parser.has_section(profile) else None
        if section and section.get("aws_access_key_id") and section.get("aws_secret_access_key"):
            return section["aws_access_key_id"], section["aws_secret_access_key"], section.get("aws_session_token", "")
        raise BucketError(
            f"AWS_PROFILE={profile}: {path} has no [{profile}] with aws_access_key_id and aws_secret_access_key "
            "(only static keys are read); nothing was uploaded"
        )
    raise BucketError(
        "no credentials for the bucket: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE "
        "(never in site.toml); nothing was uploaded"
    )


# ---- errors, retries ----------------------------------------------------------------------------

_STATUS = re.compile(r"status code: (\d{3})|\b(\d{3}) (?:Forbidden|Not Found|Service Unavailable|Bad Gateway|Internal)")
_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")


def _classify(error: BaseException) -> tuple[int, str, str]:
    """(HTTP status or 0, S3 error code or "", a short reason) of a client error."""
    text = str(error)
    status_match, code_match = _STATUS.search(text), _CODE.search(text)
    status = int(next(g for g in status_match.groups() if g)) if status_match else 0
    code = code_match.group(1) if code_match else ""
    name = type(error).__name__
    if not status and name == "NotFoundError":
        status = 404
    if not status and name in ("PermissionDeniedError", "UnauthenticatedError"):
        status = 403
    if status:
        reason = f"HTTP {status}" + (f" {code}" if code else "")
    elif "refused" in text.lower():
        reason = "connection refused"
    elif "timed out" in text.lower() or "timeout" in text.lower():
        reason = "timed out"
    else:
        reason = " ".join(text.split())[:200]
    return status, code, reason


def _retryable(status: int) -> bool:
    return status == 0 or status == 429 or status >= 500


# ---- the target ---------------------------------------------------------------------------------


class S3Bucket:
    """The second Target (structurally a publish.Target): a bucket behind a CDN."""

    def __init__(self, settings: PublishSettings, environ: Mapping[str, str] | None = None) -> None:
        self.location = parse_target(settings.target)
        self.endpoint = settings.endpoint or f"https://s3.{settings.region or 'us-east-1'}.amazonaws.com"
        self.settings = settings
        self.environ = os.environ if environ is None else environ
        self.requests: Counter[str] = Counter()  # GET / PUT / DELETE, for the bench and the log
        self._lock = threading.Lock()
        self._deadline = 0.0
        self._store: S3Store | None = None

    # ---- the client -----------------------------------------------------------------------------

    def _client(self) -> S3Store:
        if self._store is None:
            from obstore.store import S3Store  # only here: a local build never pays for it

            key, secret, token = credentials(self.environ)
            timeout = timedelta(seconds=self.settings.upload_timeout)
            self._store = S3Store(
                self.location.bucket,
                prefix=self.location.prefix or None,
                config={
                    "access_key_id": key,
                    "secret_access_key": secret,
                    **({"session_token": token} if token else {}),
                    "region": self.settings.region or "us-east-1",
                    "endpoint": self.endpoint,
                    "checksum_algorithm": "sha256",  # x-amz-checksum-sha256 on every PUT, verified by the server
                },
                client_options={
                    "allow_http": self.endpoint.startswith("http://"),
                    "timeout": timeout,
                    "connect_timeout": timeout,
                },
                retry_config={"max_retries": 0, "retry_timeout": timeout},  # retries are ours: counted, bounded
            )
        return self._store

    def _call(self, verb: str, key: str, action: Callable[[S3Store], T], stage: str) -> T:
        """One request with bounded retries; BucketError naming the endpoint and key when it fails."""
        store = self._client()
        for attempt in range(ATTEMPTS):
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise self._failure(
                    stage,
                    f"{verb} {self.location.url(key)}: the publish deadline of {self.settings.upload_deadline:g}s "
                    f"passed (the object store at {self.endpoint} answers too slowly or not at all)",
                )
            with self._lock:
                self.requests[verb] += 1
            try:
                return action(store)
            except Exception as error:  # noqa: BLE001 - obstore raises its own tree; classified here
                status, code, reason = _classify(error)
                if status == 403:
                    raise self._failure(
                        stage,
                        f"the object store at {self.endpoint} refused the credentials ({reason}) for "
                        f"{self.location.url(key)}: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) "
                        "and that the key may read, write and delete in this bucket",
                    ) from None
                if code == "NoSuchBucket":
                    raise self._failure(
                        stage,
                        f"bucket {self.location.bucket!r} does not exist at {self.endpoint}; create it first "
                        "(the pipeline never creates buckets)",
                    ) from None
                if status == 404 and verb == "GET":
                    raise
                if not _retryable(status) or attempt + 1 == ATTEMPTS:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    where = "cannot reach the object store at " if status == 0 else "the object store at "
                    raise self._failure(
                        stage, f"{verb} {self.location.url(key)} failed{tries}: {where}{self.endpoint} ({reason})"
                    ) from None
                pause = min(BACKOFF * 2**attempt, max(0.0, self._deadline - time.monotonic()))
                log.info("bucket: %s %s: %s; retrying in %.2fs", verb, key, reason, pause)
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _failure(self, stage: str, message: str) -> BucketError:
        after = {
            "read": "nothing was uploaded",
            "assets": "the pages in the bucket are unchanged (the live release stays complete); run again",
            "pages": "some pages may already be the new ones, and every asset they name is uploaded; "
            "the next run finishes the publish",
            "retention": "the new pages are live; the next run finishes the clean-up",
        }[stage]
        return BucketError(f"publishing to {self.location.url()}: {message}; {after}")

    # ---- requests ----------------------------------------------------------------------------------

    def _get(self, key: str, stage: str) -> bytes | None:
        import obstore

        def action(store: S3Store) -> bytes:
            return bytes(obstore.get(store, key).bytes())

        try:
            return self._call("GET", key, action, stage)
        except Exception as error:  # noqa: BLE001
            if _classify(error)[0] == 404:
                return None
            raise

    def _put_all(self, items: list[tuple[str, bytes, str]], stage: str) -> None:
        """Upload concurrently; the first failure stops the rest (those in flight end within the
        request timeout) and is raised."""
        if not items:
            return
        import obstore

        def one(key: str, data: bytes, cache: str) -> None:
            attributes: dict[str, str] = {"Content-Type": content_type(key), "Cache-Control": cache}
            self._call("PUT", key, lambda store: obstore.put(store, key, data, attributes=attributes), stage)

        with ThreadPoolExecutor(min(WORKERS, len(items)), thread_name_prefix="bucket-put") as pool:
            futures = [pool.submit(one, *item) for item in items]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
            for future in futures:
                if future.done() and not future.cancelled() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]

    def _delete(self, keys: list[str]) -> None:
        import obstore

        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            chunk = keys[start : start + 1000]

            def action(store: S3Store, chunk: list[str] = chunk) -> None:
                obstore.delete(store, chunk)

            self._call("DELETE", chunk[0], action, "retention")

    # ---- the state object --------------------------------------------------------------------------

    def _read_state(self) -> tuple[list[Record], str, Record | None]:
        raw = self._get(STATE_KEY, "read")
        if raw is None:
            return [], "", None
        try:
            state = json.loads(raw)
            records = [_record(r) for r in state["records"]]
            pending = _record(state["pending"]) if state.get("pending") else None
            return records, str(state["live"]), pending
        except (ValueError, KeyError, TypeError) as error:
            raise BucketError(
                f"{self.location.url(STATE_KEY)} is damaged ({error}); delete it and run again "
                "(the next run then uploads every file once)"
            ) from None

    def _write_state(self, records: list[Record], live: str, pending: Record | None, stage: str) -> None:
        state = {
            "version": 1,
            "live": live,
            "records": [r.__dict__ for r in records],
            "pending": pending.__dict__ if pending else None,
        }
        data = (json.dumps(state, sort_keys=True, separators=(",", ":")) + "\n").encode()
        self._put_all([(STATE_KEY, data, NO_CACHE)], stage)

    # ---- publish -----------------------------------------------------------------------------------

    def publish(
        self,
        files: dict[str, bytes],
        settings: PublishSettings,
        now: float,
        checkpoint: Checkpoint,
        required: tuple[str, ...],
    ) -> PublishResult:
        """Bring the bucket to `files` (which passed the local gate) in the order above."""
        self._deadline = time.monotonic() + settings.upload_deadline
        missing = [p for p in required if p not in files]
        if missing:
            raise BucketError(f"the release lacks {', '.join(missing)}; nothing was uploaded")
        records, live, pending = self._read_state()
        built = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
        live_record = next((r for r in records if r.name == live), None)
        if live_record is not None and live_record.built == built and pending is None:
            log.info("bucket: %s is up to date (%s)", self.location.url(), live)
            return PublishResult(False, live, {}, 0, 0)

        known = live_record.built if live_record else {}
        in_doubt = pending.built if pending else {}  # a run that died in step 4 may have written these
        held = {
            p: h
            for r in [*records, *([pending] if pending else [])]
            for p, h in r.built.items()
            if p.startswith("assets/")
        }

        def changed(path: str) -> bool:
            return known.get(path) != built[path] or (path in in_doubt and in_doubt[path] != built[path])

        assets = [p for p in sorted(files) if p.startswith("assets/") and held.get(p) != built[p]]
        others = [p for p in sorted(files) if not p.startswith("assets/") and not p.endswith(".html") and changed(p)]
        pages = [p for p in sorted(files) if not p.startswith("assets/") and p.endswith(".html") and changed(p)]
        dropped = sorted(p for p in {*known, *in_doubt} if p not in built and not p.startswith("assets/"))
        seq = max((r.seq for r in [*records, *([pending] if pending else [])]), default=0) + 1
        record = Record(f"r{seq:06d}", seq, now, built, sorted(p for p in built if p.startswith("assets/")))

        before: dict[str, bytes | None] = {}
        for path in [*others, *pages, *dropped]:  # what readers saw, for the changed-page check
            before[path] = self._get(path, "read") if path in known and path.endswith(PAGE_TYPES) else None

        self._put_all([(p, files[p], IMMUTABLE) for p in assets], "assets")
        self._put_all([(p, files[p], NO_CACHE) for p in others], "assets")
        checkpoint("bucket_before_pages")
        history = [*records, *([pending] if pending and pending.name not in {r.name for r in records} else [])]
        self._write_state(records, live, record, "assets")
        # index.html last, alone: the page most readers start from changes after every other page.
        self._put_all([(p, files[p], NO_CACHE) for p in pages if p != "index.html"], "pages")
        self._put_all([(p, files[p], NO_CACHE) for p in pages if p == "index.html"], "pages")

        everything = [*history, record]
        kept = kept_records(everything, settings, now)
        if record not in kept:
            kept.append(record)
        keep = {a for r in kept for a in r.assets} | set(record.assets)
        doomed = sorted({a for r in everything for a in r.assets} - keep)
        if doomed or dropped:
            self._delete(doomed + dropped)
        self._write_state(kept, record.name, None, "retention")
        uploaded = len(assets) + len(others) + len(pages)
        log.info(
            "bucket: %s -> %s: %d uploaded (%d assets, %d other, %d pages), %d deleted; requests %s",
            self.location.url(),
            record.name,
            uploaded,
            len(assets),
            len(others),
            len(pages),
            len(doomed) + len(dropped),
            dict(self.requests),
        )
        return PublishResult(
            True, record.name, before, uploaded, sum(len(files[p]) for p in [*assets, *others, *pages])
        )


def _record(raw: Any) -> Record:
    return Record(str(raw["name"]), int(raw["seq"]), float(raw["created"]), dict(raw["built"]), list(raw["assets"]))
