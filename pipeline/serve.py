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

The HTTP side (the files of the live release, the live-reload script and its event stream, the
error overlay) is preview_server.py; this module is the loop that feeds it: a rebuild per batch
of changes, and the locks and signals around them.

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
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from . import build, config
from .errors import ConfigError, Interrupted, LockedError, PipelineError, describe_os_error
from .lock import exclusive
from .model import PublishSettings, SiteConfig
from .preview_server import PreviewServer, State

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
