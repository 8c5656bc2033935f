"""The pre-switch gate: a release that names a file it lacks is never made live.

Also the one HTML URL extractor, shared by the gate and the tests.
"""

from __future__ import annotations

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
                    self.urls += [(tag, key, part.strip().split(" ")[0]) for part in value.split(",") if part.strip()]
                else:
                    self.urls.append((tag, key, value.strip()))


def urls_in(html: str) -> list[tuple[str, str, str]]:
    """(tag, attribute, URL) for every URL a page names in src, href, srcset (each candidate),
    poster or data, entities decoded, in document order."""
    parser = _References()
    parser.feed(html)
    parser.close()
    return parser.urls


def local_references(html: str) -> list[str]:
    """Release-relative paths of every same-site URL a page names (absolute or root-relative)."""
    paths = []
    for _tag, _attribute, url in urls_in(html):
        parts = urlsplit(url)
        if parts.scheme or parts.netloc or not parts.path.startswith("/"):
            continue  # external, mailto:, fragment-only or relative: not ours to check here
        path = unquote(parts.path).lstrip("/")
        paths.append(path + "index.html" if path.endswith("/") or not path else path)
    return paths


def check_release(root: Path, required: tuple[str, ...] = ("index.html",)) -> None:
    """Refuse a release with a dangling local URL, a non-regular file or a required file missing."""
    problems = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            problems.append(f"{relative}: not a regular file or directory")
        elif path.suffix == ".html":
            for ref in local_references(path.read_text(encoding="utf-8", errors="replace")):
                target = (root / ref).resolve()
                if root.resolve() not in target.parents or not target.is_file():
                    problems.append(f"{relative} names /{ref}, which is not in the release")
    problems += [f"{path} is missing" for path in required if not (root / path).is_file()]
    if problems:
        raise PublishError("the new release failed its check; the live site is unchanged", tuple(problems))
