"""Stage 5: pages and CSS -> smaller bytes. Pure: htmlmin and rcssmin.

htmlmin keeps <pre> and <textarea> verbatim and does not touch <script> bodies, so inline JSON
and the ICON_MAP constant survive byte for byte (tests/test_minify.py holds that).
"""

from __future__ import annotations

from collections.abc import Callable

import htmlmin
import rcssmin

from .model import Minified, Page

VERSION = f"1; htmlmin2 {htmlmin.__version__}"  # bump when minify_html's options change
Memo = Callable[[bytes, Callable[[bytes], bytes]], bytes]


def minify_css(css: str) -> str:
    return str(rcssmin.cssmin(css))


def minify_html(html: str) -> str:
    return str(
        htmlmin.minify(
            html,
            remove_comments=True,
            remove_empty_space=True,
            reduce_empty_attributes=True,
            remove_optional_attribute_quotes=False,  # keeps attribute values safe for any later tooling
            convert_charrefs=False,  # True decodes attribute text a second time: alt="A&amp;lt;B" became "A<B"
        )
    )


def _minify_html_bytes(html: bytes) -> bytes:
    return minify_html(html.decode("utf-8")).encode("utf-8")


def minify_pages(pages: tuple[Page, ...], memo: Memo = lambda data, make: make(data)) -> Minified:
    """`memo(data, make)` may return a remembered make(data): on a 500-icon page, htmlmin costs
    ~0.1 s a run, and an hourly run mostly renders the same page again."""
    out = []
    before = after = 0
    for page in pages:
        if page.path.endswith(".html"):
            small = memo(page.data, _minify_html_bytes)
            before, after = before + len(page.data), after + len(small)
            out.append(Page(page.path, small))
        else:
            out.append(page)
    return Minified(tuple(out), before, after)
