"""The pre-switch gate: a release that names a file it lacks is never made live.

Also the one HTML URL extractor, shared by the gate and the tests.
"""

from __future__ import annotations

import os
import posixpath
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import PublishError

URL_ATTRIBUTES = {"src", "href", "srcset", "poster", "data"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in URL_ATTRIBUTES and value:
                if key == "srcset":
                    self.urls += [(tag, key, part.split()[0]) for part in value.split(",") if part.strip()]
                else:
                    self.urls.append((tag, key, value.strip()))


def urls_in(html: str) -> list[tuple[str, str, str]]:
    """(tag, attribute, URL) for every URL a page names in src, href, srcset (each candidate),
    poster or data, entities decoded, in document order."""
    parser = _References()
    parser.feed(html)
    parser.close()
    return parser.urls


class MalformedUrl(ValueError):
    """A URL in a page that no browser could resolve to a file of ours."""


def local_references(html: str, page: str = "index.html") -> list[str]:
    """Release-relative paths of every same-site URL a page names: root-relative ones, and
    relative ones resolved against the page's own path (`page`, release-relative). Raises
    MalformedUrl for a URL that cannot be parsed, holds a control character, or climbs above
    the site's root."""
    paths = []
    for _tag, _attribute, url in urls_in(html):
        try:
            parts = urlsplit(url)
        except ValueError as error:
            raise MalformedUrl(f"{url[:80]!r} is not a valid URL ({error})") from None
        if parts.scheme or parts.netloc or not parts.path:
            continue  # external, mailto:, data:, or a fragment of this page
        path = unquote(parts.path)
        if _CONTROL.search(path):
            raise MalformedUrl(f"{url[:80]!r} holds a control character")
        joined = path if path.startswith("/") else posixpath.join("/" + posixpath.dirname(page), path)
        if _climbs_out(joined):
            raise MalformedUrl(f"{url[:80]!r} climbs above the site's root")
        resolved = posixpath.normpath(joined).lstrip("/")
        paths.append(posixpath.join(resolved, "index.html") if path.endswith("/") or not resolved else resolved)
    return paths


def _climbs_out(path: str) -> bool:
    depth = 0
    for part in path.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def check_release(root: Path, required: tuple[str, ...] = ("index.html",)) -> None:
    """Refuse a release with a dangling or malformed local URL, a non-regular file or a required
    file missing."""
    files, others = _entries(root)
    problems = []
    for relative in sorted(files | others.keys()):
        if relative in others:
            problems.append(f"{relative}: {others[relative]}")
        elif relative.endswith(".html"):
            html = (root / relative).read_text(encoding="utf-8", errors="replace")
            problems += _page_problems(files, relative, html)
    problems += [f"{path} is missing" for path in required if path not in files]
    if problems:
        raise PublishError("the new release failed its check; the live site is unchanged", tuple(problems))


def _entries(root: Path) -> tuple[set[str], dict[str, str]]:
    """The release-relative paths of the regular files under `root`, and of anything else that is
    not a directory (a symlink, a FIFO...) with what is wrong with it. From the directory entries'
    types: no stat per file, which matters for a release of ~30,000 files."""
    files: set[str] = set()
    others: dict[str, str] = {}
    folders = [""]
    while folders:
        folder = folders.pop()
        with os.scandir(root / folder) as entries:
            for entry in entries:
                relative = f"{folder}/{entry.name}" if folder else entry.name
                if entry.is_dir(follow_symlinks=False):
                    folders.append(relative)
                elif entry.is_file(follow_symlinks=False):
                    files.add(relative)
                else:
                    others[relative] = "not a regular file or directory"
    return files, others


def _page_problems(files: set[str], relative: str, html: str) -> list[str]:
    """A reference resolves when it names one of the release's regular files: `local_references`
    has normalised it and refused any that climbs out, and no directory on the way can be a
    symlink (each one is a problem of its own)."""
    try:
        references = local_references(html, relative)
    except MalformedUrl as error:
        return [f"{relative} names {error}; fix the template"]
    return [f"{relative} names /{ref}, which is not in the release" for ref in references if ref not in files]
