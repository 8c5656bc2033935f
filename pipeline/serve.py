"""`pipeline serve`: a live preview of the site on 127.0.0.1 while you edit it.

    inputs --watchfiles--> build.run(preview site, offline) --> .cache/preview/dist/current
                                                                  |
    browser <-- ThreadingHTTPServer (127.0.0.1) <-- files of that release + /__pipeline/reload.js

The preview is an ordinary offline build whose output and private state live under
.cache/preview/ (`PreviewSite`): its releases in .cache/preview/dist/, its own lock, its own
Jinja2 bytecode; dist/ is never opened. It does not take the site's build lock (.cache/pipeline.lock),
so an hourly `pipeline refresh` or a manual `pipeline build` never finds it held (exit 75) because
of a preview. What the two share is safe to share without that lock:

- the encode cache (.cache/encode): entries are written to a temp name and renamed, checked by hash
  on read, and pruned only after the retention window; a race costs one re-encode, never a wrong
  file. The preview reaches it through the symlink .cache/preview/encode -> ../encode.
- the feed's last good copy (.cache/feed): read only, since a preview build never fetches. Being
  offline, it never writes icons/ or the IndexNow outbox either, and it publishes to no remote
  target (`preview_of` keeps only the local publish settings).

Only another `pipeline serve` of the same site is kept out, by .cache/preview/serve.lock.

Pages are served with one tag added before </body>, `<script src="/__pipeline/reload.js"
data-release="rNNNNNN">`: an external script (a strict `script-src 'self'` allows it; nothing
inline), added as the page is served, so no file on disk carries it. The script listens on
/__pipeline/events (Server-Sent Events: the live release and the last error). A tab reloads when
the live release is not the one its page came from; while the last rebuild failed it draws the
error over the last good page (as text), and removes it once a rebuild succeeds.

The watcher (watchfiles, inotify) batches a burst of saves into one set of changes, so a burst
is one rebuild. It watches each folder that holds an input without recursing into the others:
the site folder (site.toml, icon_map.yaml, the codes file, and templates/ static/ icons/ coming
or going), every folder under templates/, static/ and icons/, and the codes file's folder; dist/,
.cache/ and anything else in the site folder are never watched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import html
import json
import logging
import mimetypes
import os
import signal
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from . import build, config
from .errors import ConfigError, Interrupted, LockedError, PipelineError, describe_os_error
from .lock import exclusive
from .model import PublishSettings, SiteConfig

if TYPE_CHECKING:
    from watchfiles import Change

log = logging.getLogger(__name__)

Say = Callable[[str], None]  # one line to the user (cli prints it to stderr)

PREVIEW = "preview"  # under .cache/: the preview's releases and private state
SHARED_STATE = ("encode", build.FEED_COPY.split("/")[0])  # under .cache/: read (and safely written) by both
INPUT_DIRS = ("templates", "static", "icons")
INPUT_FILES = ("site.toml", "icon_map.yaml")
STEP_MS = 50  # a change is reported once no other arrives for this long (watchfiles' `step`)
DEBOUNCE_MS = 800  # ... or once changes have kept arriving for this long
TICK_MS = 300  # the watcher hands back control this often when nothing changes
KEEPALIVE = 15.0  # seconds between SSE comments on an idle stream (a closed tab is noticed then)
PREFIX = "/__pipeline/"
IMMUTABLE = "public, max-age=31536000, immutable"  # as nginx serves assets/: their names change with them
SCRIPT_TAG = '<script src="/__pipeline/reload.js" data-release="{release}"></script>'
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".xml": "application/xml",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".avif": "image/avif",
    ".webp": "image/webp",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


class ServeError(PipelineError):
    exit_code = 69  # EX_UNAVAILABLE: the port is taken, or watchfiles is not installed


class CacheError(PipelineError):
    exit_code = 74  # EX_IOERR: .cache/ could not be written, as for `pipeline build`


@dataclasses.dataclass(frozen=True)
class PreviewSite(SiteConfig):
    """The site as the preview builds it: the same inputs, output and private state under
    .cache/preview/ (so the lock build.run takes is .cache/preview/pipeline.lock)."""

    @property
    def cache_dir(self) -> Path:
        return self.root / ".cache" / PREVIEW

    @property
    def dist_dir(self) -> Path:
        return self.cache_dir / "dist"


def preview_of(site: SiteConfig) -> PreviewSite:
    """`site` as a preview: published to .cache/preview/dist/ and nowhere else. Of the publish
    settings only the local ones are kept, so a remote target ([publish] target = "s3://...") or any
    other publish destination added later falls back to its default: none."""
    local = PublishSettings(keep_releases=site.publish.keep_releases, retention_hours=site.publish.retention_hours)
    fields = {f.name: getattr(site, f.name) for f in dataclasses.fields(site)}
    return PreviewSite(**{**fields, "publish": local})


def serve(root: Path, port: int, say: Say) -> None:
    """Build, serve and rebuild on every change until SIGINT or SIGTERM; then return."""
    try:
        import watchfiles  # noqa: F401  (here, so a missing one is said before anything starts)
    except ImportError:
        raise ServeError("pipeline serve needs watchfiles: pip install 'pipeline[serve]'") from None
    root = root.resolve()
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder; pass the site folder with --site DIR")
    try:
        _share_state(root)
    except OSError as error:
        raise CacheError(f"cannot prepare the preview in {root / '.cache'}: {describe_os_error(error)}") from None
    stop = threading.Event()
    dist = root / ".cache" / PREVIEW / "dist"
    with _one_serve_per_site(root), _stop_on_signals(stop), _listen(port, dist) as server:
        server.state.update(server.live()[0], "")  # a preview left by an earlier session, if any
        rebuild = Rebuild(root, server.state, say, stop)
        rebuild(set())
        if stop.is_set():
            return
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        thread.start()
        say(
            f"pipeline serve: previewing {root} at http://127.0.0.1:{server.server_port}/ "
            "(offline; dist/ is left alone); Ctrl-C stops"
        )
        try:
            _watch(rebuild, stop)
        finally:
            server.state.close()
            server.shutdown()
            thread.join(5)


# ---- building --------------------------------------------------------------------------------


class Rebuild:
    """One preview build per call; a failure keeps the last good preview and becomes the state
    the pages show. Never raises for a bad input (nor for a bug: the server stays up)."""

    def __init__(self, root: Path, state: State, say: Say, stop: threading.Event) -> None:
        self.root, self.state, self.say, self.stop = root, state, say, stop
        self.content = "codes.yaml"  # the codes file, as the last site.toml that loaded names it
        self.committed = False

    def __call__(self, changes: set[tuple[Change, str]]) -> None:
        started = time.perf_counter()
        self.committed = False
        error = ""
        try:
            site = config.load_site(self.root)
            self.content = site.content
            request = build.BuildRequest(
                preview_of(site), today=dt.date.today(), now=time.time(), offline=True, checkpoint=self._checkpoint
            )
            report = build.run(request)
        except PipelineError as failure:
            if isinstance(failure, Interrupted) and self.stop.is_set():
                return
            error = str(failure)
        except OSError as failure:  # .cache/ could not be written: as `pipeline build` says it
            error = f"nothing was published: {describe_os_error(failure)}"
        except Exception as failure:  # a bug, not the input: say so, keep serving the last good preview
            log.debug("preview build failed", exc_info=True)
            error = f"internal error (please report it): {type(failure).__name__}: {failure}"
        seconds = time.perf_counter() - started
        if error:
            self.say(f"pipeline: error: {error}")
            kept = self.state.release
            self.say(f"pipeline serve: rebuild failed; {'still previewing ' + kept if kept else 'no preview yet'}")
            self.state.update(kept, error)
            return
        result = report.publish
        if result.switched:
            changed = ", ".join(report.changed_pages) or "assets only"
            self.say(f"pipeline serve: rebuilt in {seconds:.2f}s: previewing {result.release} (changed: {changed})")
        else:
            self.say(f"pipeline serve: rebuilt in {seconds:.2f}s: nothing changed; still previewing {result.release}")
        self.state.update(result.release, "")

    def _checkpoint(self, name: str) -> None:
        """Ctrl-C / SIGTERM stop a rebuild at its next checkpoint, unless its switch has begun."""
        if name == "before_switch":
            self.committed = True
        if self.stop.is_set() and not self.committed:
            raise Interrupted("stopped by a signal")


def _share_state(root: Path) -> None:
    """.cache/preview/{encode,feed} -> the site's own (see the module docstring)."""
    cache = root / ".cache"
    (cache / PREVIEW).mkdir(parents=True, exist_ok=True)
    (cache / "encode").mkdir(exist_ok=True)  # the cache mkdirs through the link; a dangling feed link reads as none
    for name in SHARED_STATE:
        link = cache / PREVIEW / name
        if not link.is_symlink() and not link.exists():
            link.symlink_to(Path("..") / name, target_is_directory=True)


@contextlib.contextmanager
def _one_serve_per_site(root: Path) -> Iterator[None]:
    try:
        with exclusive(root / ".cache" / PREVIEW / "serve.lock"):
            yield
    except LockedError as error:
        raise LockedError(str(error).replace("another build", "another pipeline serve of this site")) from None


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---- watching --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Watched:
    """What to watch for a site: folders (each without its subfolders) and what in them counts."""

    folders: tuple[Path, ...]
    trees: tuple[Path, ...]  # templates/, static/, icons/: anything under them counts
    files: frozenset[Path]  # elsewhere only these: the input files and the input folders themselves

    @classmethod
    def of(cls, root: Path, content: str) -> Watched:
        trees = tuple(root / name for name in INPUT_DIRS if (root / name).is_dir())
        folders = {root}
        for tree in trees:
            folders |= {tree, *(p for p in tree.rglob("*") if p.is_dir() and not p.is_symlink())}
        files = {root / name for name in (*INPUT_FILES, *INPUT_DIRS)}
        if "://" not in content:  # a feed's last good copy changes with the refresh, not an edit
            codes = root / content
            files.add(codes)
            if codes.parent.is_dir():
                folders.add(codes.parent)
        return cls(tuple(sorted(folders)), trees, frozenset(files))

    def relevant(self, change: Change, path: str) -> bool:
        where = Path(path)
        if where.name.startswith(".") and where.name.endswith(".tmp"):  # files.write_atomic's temp files
            return False
        if any(where == tree or tree in where.parents for tree in self.trees):
            return _editor_files()(change, path)  # editor swap and backup files do not count
        return where in self.files


@functools.cache
def _editor_files() -> Callable[[Change, str], bool]:
    from watchfiles import DefaultFilter

    return DefaultFilter()


def _watch(rebuild: Rebuild, stop: threading.Event) -> None:
    """Rebuild on every batch of relevant changes until `stop`. When the set of folders changes
    (static/ made, a folder added under templates/), the watcher starts again on the new set;
    after a folder was added, one more rebuild picks up what was written in it before it was
    watched."""
    import watchfiles

    pending = False
    while not stop.is_set():
        watched = Watched.of(rebuild.root, rebuild.content)
        batches = watchfiles.watch(
            *watched.folders,
            watch_filter=watched.relevant,
            recursive=False,
            debounce=DEBOUNCE_MS,
            step=STEP_MS,
            rust_timeout=TICK_MS,
            yield_on_timeout=True,
            stop_event=stop,
            raise_interrupt=False,
        )
        try:
            with contextlib.closing(batches):
                for changes in batches:
                    if changes or pending:
                        pending = False
                        log.debug("changes: %s", sorted(path for _, path in changes))
                        rebuild(changes)
                        now = Watched.of(rebuild.root, rebuild.content)
                        if now != watched:
                            pending = not set(now.folders) <= set(watched.folders)  # files may be in new ones
                            break
        except FileNotFoundError as error:  # a watched folder went away as the watcher started: look again
            log.debug("watcher restarts: %s", error)
            pending = True
            stop.wait(TICK_MS / 1000)
        except OSError as error:  # e.g. the inotify watch limit (fs.inotify.max_user_watches)
            rebuild.say(f"pipeline serve: cannot watch the site's folders ({describe_os_error(error)}); retrying")
            pending = True
            stop.wait(5.0)


# ---- serving ---------------------------------------------------------------------------------


class State:
    """The live preview release and the last rebuild's error, as the pages' script hears them,
    and when that last changed (wall-clock seconds: what a test compares a reload with)."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.release = ""
        self.error = ""
        self.since = time.time()
        self.version = 0
        self.closing = False

    def update(self, release: str, error: str) -> None:
        with self.changed:
            if (release, error) != (self.release, self.error):
                self.release, self.error, self.since = release, error, time.time()
                self.version += 1
                self.changed.notify_all()

    def close(self) -> None:
        with self.changed:
            self.closing = True
            self.changed.notify_all()

    def after(self, version: int, timeout: float) -> tuple[int, str]:
        """(version, JSON) once the version is not `version` (or after `timeout`)."""
        with self.changed:
            self.changed.wait_for(lambda: self.version != version or self.closing, timeout)
            return self.version, self.json()

    def json(self) -> str:
        with self.changed:
            return json.dumps({"release": self.release, "error": self.error or None, "since": self.since})


class PreviewServer(ThreadingHTTPServer):
    daemon_threads = True  # an open event stream never holds up the stop

    def __init__(self, address: tuple[str, int], dist: Path) -> None:
        self.dist = dist
        self.state = State()
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # without HTTPServer's getfqdn(): a DNS lookup
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: object, client_address: object) -> None:
        log.debug("request from %s failed", client_address, exc_info=True)

    def live(self) -> tuple[str, Path | None]:
        """The live preview release: its name and folder (None before the first good build)."""
        try:
            target = os.readlink(self.dist / "current")
        except OSError:
            return "", None
        return PurePosixPath(target).name, self.dist / target


@contextlib.contextmanager
def _listen(port: int, dist: Path) -> Iterator[PreviewServer]:
    try:
        server = PreviewServer(("127.0.0.1", port), dist)
    except OSError as error:
        raise ServeError(
            f"cannot listen on 127.0.0.1:{port}: {error.strerror or error}; pick another with --port N (0: any)"
        ) from None
    try:
        yield server
    finally:
        server.server_close()


class Handler(BaseHTTPRequestHandler):
    server: PreviewServer
    server_version = "pipeline-serve"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _answer(self, body: bool) -> None:
        path = urlsplit(self.path).path
        if path == PREFIX + "reload.js":
            self._send(HTTPStatus.OK, TYPES[".js"], RELOAD_JS.encode(), body)
        elif path == PREFIX + "status":
            self._send(HTTPStatus.OK, TYPES[".json"], self.server.state.json().encode(), body)
        elif path == PREFIX + "events":
            self._events() if body else self._send(HTTPStatus.OK, "text/event-stream", b"", body)
        else:
            self._file(path, body)

    def _file(self, path: str, body: bool) -> None:
        release, folder = self.server.live()
        if folder is None:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, TYPES[".html"], _no_preview(self.server.state.error), body)
            return
        parts = unquote(path).split("/")
        if any(part == ".." or "\0" in part or "\\" in part for part in parts):
            self._send(HTTPStatus.BAD_REQUEST, TYPES[".txt"], b"bad path\n", body)
            return
        target = folder.joinpath(*(part for part in parts if part not in ("", ".")))
        if target.is_dir():
            if not path.endswith("/"):
                self.send_response(HTTPStatus.MOVED_PERMANENTLY)
                self.send_header("Location", path + "/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            target = target / "index.html"
        status = HTTPStatus.OK
        if not _file_inside(target, folder):
            status, target = HTTPStatus.NOT_FOUND, folder / "404.html"
            if not target.is_file():
                self._send(status, TYPES[".txt"], b"not found\n", body)
                return
        try:
            data = target.read_bytes()
        except OSError:  # the release was collected between the lookup and the read
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, TYPES[".txt"], b"rebuilding; reload\n", body)
            return
        kind = TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".html":
            data = inject(data, release)
        hashed = status == HTTPStatus.OK and path.startswith("/assets/")  # fingerprinted: a reload keeps them
        self._send(status, kind, data, body, IMMUTABLE if hashed else "no-store")

    def _events(self) -> None:
        """Server-Sent Events: the state now, then each change, until the tab or the server goes."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        state, version = self.server.state, -1
        try:
            self.wfile.write(b"retry: 500\n\n")
            while True:
                seen, data = state.after(version, KEEPALIVE)
                if state.closing:
                    return
                if seen == version:
                    self.wfile.write(b": idle\n\n")
                else:
                    self.wfile.write(f"data: {data}\n\n".encode())
                version = seen
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return

    def _send(self, status: HTTPStatus, kind: str, data: bytes, body: bool, cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        if body:
            self.wfile.write(data)


def _file_inside(target: Path, folder: Path) -> bool:
    try:
        return target.is_file() and target.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def inject(page: bytes, release: str) -> bytes:
    """The page with the reload script's tag before its last </body> (at the end if it has none)."""
    tag = SCRIPT_TAG.format(release=html.escape(release)).encode()
    at = page.lower().rfind(b"</body>")
    return page + tag if at < 0 else page[:at] + tag + page[at:]


def _no_preview(error: str) -> bytes:
    text = html.escape(error or "the first build is still running")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>pipeline serve: no preview yet</title>'
        "</head><body><h1>No preview yet</h1><p>The page reloads by itself after the first good build.</p>"
        f"<pre>{text}</pre>{SCRIPT_TAG.format(release='')}</body></html>"
    ).encode()


RELOAD_JS = """\
// pipeline serve: reload this preview after a good rebuild; draw a failed one over the page.
(() => {
  "use strict";
  const script = document.currentScript;
  const release = (script && script.dataset.release) || "";
  const id = "__pipeline-overlay";

  function hide() {
    const box = document.getElementById(id);
    if (box) box.remove();
  }

  function show(error) {
    let box = document.getElementById(id);
    if (!box) {
      box = document.createElement("div");
      box.id = id;
      box.setAttribute("role", "alert");
      Object.assign(box.style, {
        position: "fixed", top: "0", left: "0", right: "0", zIndex: "2147483647", maxHeight: "60vh",
        overflow: "auto", margin: "0", padding: "12px 16px", background: "#3d0b0b", color: "#fff",
        font: "14px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace",
        borderBottom: "3px solid #e5484d", boxShadow: "0 2px 12px rgba(0, 0, 0, 0.5)", textAlign: "left",
      });
      const title = document.createElement("strong");
      title.textContent = "pipeline serve: the rebuild failed; below is the last good preview";
      const text = document.createElement("pre");
      Object.assign(text.style, { margin: "8px 0 0", whiteSpace: "pre-wrap", font: "inherit", color: "inherit" });
      box.append(title, text);
      (document.body || document.documentElement).append(box);
    }
    box.querySelector("pre").textContent = error;
  }

  const events = new EventSource("/__pipeline/events");
  events.onmessage = (event) => {
    const state = JSON.parse(event.data);
    if (state.release && state.release !== release) {
      events.close();
      location.reload();
      return;
    }
    if (state.error) show(state.error);
    else hide();
  };
})();
"""
