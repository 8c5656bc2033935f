"""A load probe for the atomic swap: fetch pages and every asset they name, while releases change.

    with Probe(base) as probe:          # base = "http://127.0.0.1:<port>"
        ...publish releases...
    report = probe.report()             # counts and the first few errors of each kind
    assert probe.clean, report

Each probe thread owns one httpx.Client (short timeouts, no redirects, no proxies from the
environment) and loops until the stop Event is set. Even-numbered threads accept gzip (nginx then
sends the prebuilt .gz files, gzip_static), odd ones ask for identity, so both copies of every
page are read while they are swapped:

  1. GET /            -> 200, ends with </html> (else "torn"), has <meta name="build" content=...>
  2. GET every local URL the page names (pipeline.gate.urls_in: src, href, each srcset candidate,
     poster, data) -> 200 (404 = "missing")
  3. GET /codes.json  -> 200 and parses as JSON (else "torn")

Everything it saw is kept for the retention check: build id -> the asset URLs that page named
(one entry per distinct page), and the first page seen with its HTML.

Bounded: `stop()` sets the Event and joins each thread with a timeout; a thread that does not end
is reported (AssertionError) rather than waited for forever. Requests go to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from pipeline.gate import urls_in

BUILD_META = re.compile(r"""<meta\s+name=["']?build["']?\s+content=["']?([^"'\s>]+)""", re.IGNORECASE)
KEEP_EXAMPLES = 20  # error lists keep this many examples; the counters count everything


def local_urls(html: str) -> list[str]:
    """The same-site paths a page names (root-relative, no scheme or host), deduplicated, in order.
    The URLs come from pipeline.gate.urls_in, the extractor the pre-switch gate uses."""
    seen: dict[str, None] = {}
    for _tag, _attribute, url in urls_in(html):
        parts = urlsplit(url)
        if parts.scheme or parts.netloc or not parts.path.startswith("/"):
            continue
        seen.setdefault(parts.path, None)
    return list(seen)


def asset_urls(html: str) -> list[str]:
    """The hashed assets a page names (local URLs under /assets/)."""
    return [u for u in local_urls(html) if u.startswith("/assets/")]


def build_id(html: str) -> str | None:
    found = BUILD_META.search(html)
    return found.group(1) if found else None


def is_complete(html: str) -> bool:
    return html.rstrip().endswith("</html>")


@dataclass
class ProbeStats:
    requests: int = 0
    pages: int = 0  # GET / answered 200
    non_200: list[tuple[str, int]] = field(default_factory=list)  # (url, status), 404s of assets excluded
    non_200_count: int = 0
    torn: list[str] = field(default_factory=list)  # url + why
    torn_count: int = 0
    no_build: int = 0  # pages without <meta name="build" content=...>
    missing_assets: list[str] = field(default_factory=list)  # asset URLs that answered 404
    missing_count: int = 0
    transport_errors: list[str] = field(default_factory=list)  # timeouts, resets, refused
    transport_count: int = 0


class Probe:
    def __init__(
        self,
        base: str,
        threads: int = 2,
        timeout: float = 2.0,
        join_timeout: float = 10.0,
        pause: float = 0.0,
        paths: tuple[str, ...] = ("/", "/codes.json"),
    ) -> None:
        host = urlsplit(base).hostname
        if host != "127.0.0.1":
            raise ValueError(f"the probe only talks to 127.0.0.1, not {host!r}")
        self.base = base.rstrip("/")
        self.threads_wanted = threads
        self.timeout = timeout
        self.join_timeout = join_timeout
        self.pause = pause  # seconds between rounds, to leave CPU to the builder
        self.paths = paths
        self.stop_event = threading.Event()
        self.stats = ProbeStats()
        self.pages_seen: dict[str, tuple[str, ...]] = {}  # build id -> asset URLs of that page
        self.first_page: tuple[str, str] | None = None  # (build id, html)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._crashes: list[BaseException] = []
        self.started = self.stopped = 0.0

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Probe:
        self.started = time.monotonic()
        for n in range(self.threads_wanted):
            thread = threading.Thread(target=self._run, args=(n,), name=f"probe-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + self.join_timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.stopped = time.monotonic()
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise AssertionError(f"probe thread(s) {alive} did not stop within {self.join_timeout}s")
        if self._crashes:
            raise AssertionError(f"a probe thread crashed: {self._crashes[0]!r}") from self._crashes[0]

    def __enter__(self) -> Probe:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> None:
        """Block until at least `count` requests were made (so the probe is really running)."""
        deadline = time.monotonic() + timeout
        while self.stats.requests < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"the probe made only {self.stats.requests} requests in {timeout}s")
            time.sleep(0.01)

    # ---- results -------------------------------------------------------------------------------

    @property
    def errors(self) -> int:
        s = self.stats
        return s.non_200_count + s.torn_count + s.no_build + s.missing_count + s.transport_count

    @property
    def clean(self) -> bool:
        return self.errors == 0

    def report(self) -> dict[str, object]:
        with self._lock:
            s = self.stats
            seconds = (self.stopped or time.monotonic()) - self.started if self.started else 0.0
            return {
                "requests": s.requests,
                "pages": s.pages,
                "seconds": round(seconds, 2),
                "requests_per_second": round(s.requests / seconds, 1) if seconds else 0.0,
                "distinct_pages": len(self.pages_seen),
                "errors": self.errors,
                "non_200": s.non_200_count,
                "torn": s.torn_count,
                "no_build_meta": s.no_build,
                "missing_assets": s.missing_count,
                "transport_errors": s.transport_count,
                "examples": {
                    "non_200": list(s.non_200),
                    "torn": list(s.torn),
                    "missing_assets": list(s.missing_assets),
                    "transport": list(s.transport_errors),
                },
            }

    # ---- the loop ------------------------------------------------------------------------------

    def _run(self, number: int) -> None:
        try:
            timeout = httpx.Timeout(self.timeout)
            limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
            headers = {"Accept-Encoding": "gzip" if number % 2 == 0 else "identity"}
            with httpx.Client(
                base_url=self.base,
                timeout=timeout,
                limits=limits,
                trust_env=False,
                follow_redirects=False,
                headers=headers,
            ) as client:
                while not self.stop_event.is_set():
                    self._round(client)
                    if self.pause:
                        self.stop_event.wait(self.pause)
        except BaseException as error:  # noqa: BLE001 - reported by stop()
            self._crashes.append(error)

    def _get(self, client: httpx.Client, path: str) -> httpx.Response | None:
        try:
            response = client.get(path)
        except httpx.HTTPError as error:
            with self._lock:
                self.stats.requests += 1
                self.stats.transport_count += 1
                self._example(self.stats.transport_errors, f"{path}: {error!r}")
            return None
        with self._lock:
            self.stats.requests += 1
        return response

    def _get_ok(self, client: httpx.Client, path: str) -> httpx.Response | None:
        """The response if it is a 200; anything else is counted and gives None."""
        response = self._get(client, path)
        if response is not None and response.status_code != 200:
            self._bad_status(path, response.status_code)
            return None
        return response

    def _example(self, bucket: list, item: object) -> None:
        if len(bucket) < KEEP_EXAMPLES:
            bucket.append(item)

    def _round(self, client: httpx.Client) -> None:
        for path in self.paths:
            if self.stop_event.is_set():
                return
            if path.endswith(".json"):
                self._json(client, path)
            else:
                self._page(client, path)

    def _bad_status(self, path: str, status: int) -> None:
        with self._lock:
            self.stats.non_200_count += 1
            self._example(self.stats.non_200, (path, status))

    def _torn(self, what: str) -> None:
        with self._lock:
            self.stats.torn_count += 1
            self._example(self.stats.torn, what)

    def _page(self, client: httpx.Client, path: str) -> None:
        response = self._get_ok(client, path)
        if response is None:
            return
        html = response.text
        with self._lock:
            self.stats.pages += 1
        if not is_complete(html):
            self._torn(f"{path}: {len(html)} chars, ends {html[-40:]!r}")
        build = build_id(html)
        if build is None:
            with self._lock:
                self.stats.no_build += 1
        urls = local_urls(html)
        if build is not None:
            with self._lock:
                self.pages_seen.setdefault(build, tuple(u for u in urls if u.startswith("/assets/")))
                if self.first_page is None:
                    self.first_page = (build, html)
        for url in urls:
            if self.stop_event.is_set():
                return
            answer = self._get(client, url)
            if answer is None:
                continue
            if answer.status_code == 404:
                with self._lock:
                    self.stats.missing_count += 1
                    self._example(self.stats.missing_assets, f"{url} (named by build {build})")
            elif answer.status_code != 200:
                self._bad_status(url, answer.status_code)

    def _json(self, client: httpx.Client, path: str) -> None:
        response = self._get_ok(client, path)
        if response is None:
            return
        try:
            json.loads(response.content)
        except ValueError as error:
            self._torn(f"{path}: not JSON ({error}); {len(response.content)} bytes")
