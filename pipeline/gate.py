"""The pre-switch gate: a release that names a file it lacks is never made live.

Also the one HTML URL extractor, shared by the gate and the tests.
"""

from __future__ import annotations

import posixpath
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import PublishError

URL_ATTRIBUTES = {"src", "href", "srcset", "poster", "data"}


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
        if any(ord(c) < 0x20 or c == "\x7f" for c in path):
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
    problems = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            problems.append(f"{relative}: not a regular file or directory")
        elif path.suffix == ".html":
            problems += _page_problems(root, relative, path.read_text(encoding="utf-8", errors="replace"))
    problems += [f"{path} is missing" for path in required if not (root / path).is_file()]
    if problems:
        raise PublishError("the new release failed its check; the live site is unchanged", tuple(problems))


def _page_problems(root: Path, relative: str, html: str) -> list[str]:
    try:
        references = local_references(html, relative)
    except MalformedUrl as error:
        return [f"{relative} names {error}; fix the template"]
    problems = []
    for ref in references:
        target = (root / ref).resolve()
        if root.resolve() not in target.parents or not target.is_file():
            problems.append(f"{relative} names /{ref}, which is not in the release")
    return problems
