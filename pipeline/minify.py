"""Stage 5: pages and CSS -> smaller bytes. Pure: htmlmin and rcssmin.

htmlmin keeps <pre> and <textarea> verbatim and does not touch <script> bodies, so inline JSON
and the ICON_MAP constant survive byte for byte (tests/test_minify.py holds that).
"""

from __future__ import annotations

import rcssmin

from .model import Minified, Page


def minify_css(css: str) -> str:
    return str(rcssmin.cssmin(css))


def minify_html(html: str) -> str:
    import htmlmin  # ~10 ms to import: only where pages are made (build.py remembers them)

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


def minify_pages(pages: tuple[Page, ...]) -> Minified:
    out = []
    before = after = 0
    for page in pages:
        if page.path.endswith(".html"):
            small = minify_html(page.data.decode("utf-8")).encode("utf-8")
            before, after = before + len(page.data), after + len(small)
            out.append(Page(page.path, small))
        else:
            out.append(page)
    return Minified(tuple(out), before, after)
