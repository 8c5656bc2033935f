"""Stage 4: SiteView -> pages. Pure given the templates folder.

Jinja2 with autoescape and StrictUndefined. Templates get `ICON_MAP` (name -> IconRef),
`icon(name)`, `picture(name, class="icon", alt=none)` (built in; a site's own macro of that name
shadows it), `asset_url(logical)`, `icon_loading()`, `content_security_policy`, the content and
the site.
Every template error, an unknown icon included, is reported as templates/FILE:LINE.
Besides the HTML pages (every templates/*.html not starting with "_"), this stage writes
codes.json, sitemap.xml and robots.txt.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape as xml_escape

from markupsafe import Markup, escape

from .errors import TemplateError
from .model import IconRef, Page, SiteView

if TYPE_CHECKING:  # Jinja2 (~30 ms to import) is imported where pages are made: a run that reuses them never pays
    import jinja2

# The pages' Content-Security-Policy, as the <meta http-equiv> every page carries for hosts that
# send no header. deploy/nginx.conf sends the same policy plus `frame-ancestors 'none'` (which a
# <meta> policy cannot carry) as a header; tests/test_security.py keeps the two equal. The pages
# have no inline script or style, so no 'unsafe-inline' and no per-release hash: their code is
# templates/*.js, fingerprinted, and ICON_MAP is a JSON data block (never run, so not governed).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'"
)


class UnknownName(LookupError):
    """A template asked for an icon or asset that does not exist."""


def render_pages(
    templates_dir: Path, view: SiteView, bytecode_dir: Path | None = None, eager: int = 6
) -> tuple[Page, ...]:
    """`bytecode_dir`: where Jinja2 may keep compiled templates (saves ~30 ms a run).
    `eager`: how many icons, in document order, each page loads at once (the first screen)."""
    env = environment(templates_dir, view, bytecode_dir, eager)
    names = sorted(n for n in env.list_templates(extensions=["html"]) if not Path(n).name.startswith("_"))
    if "index.html" not in names:
        raise TemplateError(f"{templates_dir.name}/index.html is missing; every site needs a home page")
    pages = [Page(name, render_page(env, templates_dir, name).encode("utf-8")) for name in names]
    pages.append(Page("codes.json", codes_json(view).encode("utf-8")))
    pages.append(Page("sitemap.xml", sitemap(view, [p.path for p in pages if p.path.endswith(".html")]).encode()))
    pages.append(Page("robots.txt", f"User-agent: *\nAllow: /\nSitemap: {view.base_url}/sitemap.xml\n".encode()))
    return tuple(pages)


def environment(
    templates_dir: Path, view: SiteView, bytecode_dir: Path | None = None, eager: int = 6
) -> jinja2.Environment:
    """The Jinja2 environment the pages render in (also what a server rendering per request,
    like the bench's Flask baseline, would hold)."""
    import jinja2

    if bytecode_dir is not None:
        bytecode_dir.mkdir(parents=True, exist_ok=True)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        bytecode_cache=jinja2.FileSystemBytecodeCache(str(bytecode_dir)) if bytecode_dir else None,
        autoescape=jinja2.select_autoescape(["html", "xml"], default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )

    def icon(name: str) -> IconRef:
        try:
            return view.icons[name]
        except KeyError:
            raise UnknownName(f"icon {name!r} is not in icon_map.yaml; add it there or fix the name") from None

    def asset_url(logical: str) -> str:
        try:
            return view.assets[logical].url
        except KeyError:
            raise UnknownName(f"asset {logical!r} does not exist; known: {', '.join(sorted(view.assets))}") from None

    def integrity(logical: str) -> str:
        return view.assets[logical].integrity if logical in view.assets else asset_url(logical)

    loading = _LoadingOrder(eager)

    def picture(name: str, *args: object, **kwargs: object) -> Markup:
        return picture_markup(icon(name), loading, *args, **kwargs)

    env.globals.update(
        icon_loading=loading,  # a global: imported macros see globals, not the page's context
        site=view,
        ICON_MAP=view.icons,
        icon_map_json=icon_map_json(view.icons),
        content_security_policy=CONTENT_SECURITY_POLICY,
        icon=icon,
        picture=picture,  # built in; a template's own `picture` (imported or defined) shadows it
        asset_url=asset_url,
        integrity=integrity,
        active=[c for c in view.content.codes if c.active_on(view.today)],
        expired=[c for c in view.content.codes if not c.active_on(view.today)],
    )
    return env


def render_page(env: jinja2.Environment, templates_dir: Path, name: str, **context: object) -> str:
    """One page (`context` overrides globals, as a per-request server would pass today's codes);
    a template error becomes a TemplateError naming templates/FILE:LINE."""
    import jinja2

    loading = env.globals["icon_loading"]
    assert isinstance(loading, _LoadingOrder)
    loading.restart()
    try:
        return env.get_template(name).render(**context)
    except jinja2.TemplateSyntaxError as error:
        where = f"{templates_dir.name}/{error.name or name}:{error.lineno}"
        raise TemplateError(f"{where}: syntax error: {error.message}") from None
    except (jinja2.TemplateError, UnknownName, TypeError, ValueError, AttributeError, KeyError) as error:
        raise TemplateError(f"{_template_line(error, templates_dir, name)}: {_message(error)}") from None


def _template_line(error: BaseException, templates_dir: Path, name: str) -> str:
    """The chain of template lines the error passed through, outermost first (Jinja maps its
    frames to template lines): "templates/_base.html:14 -> templates/index.html:29"."""
    root = templates_dir.resolve()
    chain: list[str] = []
    for frame, line in traceback.walk_tb(error.__traceback__):
        filename = Path(frame.f_code.co_filename)
        if filename.suffix == ".html" and root in filename.resolve().parents:
            where = f"{templates_dir.name}/{filename.resolve().relative_to(root).as_posix()}:{line}"
            if not chain or chain[-1] != where:
                chain.append(where)
    return " -> ".join(chain) or f"{templates_dir.name}/{name}"


def _message(error: BaseException) -> str:
    import jinja2

    text = error.args[0] if isinstance(error, UnknownName) else str(error)
    if isinstance(error, jinja2.UndefinedError):
        return f"{text}; pass it in or fix the name"
    return text


def picture_markup(ref: IconRef, loading: Callable[[], str], *args: object, **kwargs: object) -> Markup:
    """`picture(name, class="icon", alt=none)`, built in: exactly the markup of the `picture`
    macro in templates/_macros.html (tests/test_static.py keeps the two equal), every value
    escaped. Jinja passes `class` as a keyword argument; like a macro's, the arguments may also
    come by position, and an unknown or repeated one is an error."""
    params = dict(zip(("class", "alt"), args, strict=False))
    if len(args) > 2:
        raise TypeError(f"picture() takes at most 3 positional arguments ({len(args) + 1} given)")
    for key, value in kwargs.items():
        if key not in ("class", "alt"):
            raise TypeError(f"picture() takes no keyword argument {key!r}")
        if key in params:
            raise TypeError(f"picture() got multiple values for argument {key!r}")
        params[key] = value
    css_class, alt = params.get("class", "icon"), params.get("alt")
    sources = "".join(f'<source type="{escape(s.mime)}" srcset="{escape(s.srcset)}">' for s in ref.sources)
    srcset = f' srcset="{escape(ref.img_srcset)}"' if ref.img_srcset else ""
    return Markup(
        f'<picture>{sources}<img src="{escape(ref.fallback)}"{srcset} width="{escape(ref.width)}"'
        f' height="{escape(ref.height)}" alt="{escape(ref.alt if alt is None else alt)}"'
        f' class="{escape(css_class)}" loading="{escape(loading())}" decoding="async">\n</picture>'
    )


class _LoadingOrder:
    """`icon_loading()` in a template: "eager" for the first N icons a page draws, then "lazy".
    Jinja renders a page top to bottom (blocks included), so call order is document order."""

    def __init__(self, eager: int) -> None:
        self.eager = self.left = eager

    def restart(self) -> None:
        self.left = self.eager

    def __call__(self) -> str:
        self.left -= 1
        return "eager" if self.left >= 0 else "lazy"


def icon_map_json(icons: dict[str, IconRef]) -> str:
    """ICON_MAP as a JSON object, for `|safe` inside <script> (index.html puts it in a
    <script type="application/json"> data block that site.js parses): <, >, & and U+2028/9 are
    escaped, so no name or alt text can close the script element or break a JS string."""
    data = {
        name: {
            "alt": ref.alt,
            "width": ref.width,
            "height": ref.height,
            "png": ref.fallback,
            **{s.mime.split("/")[1]: s.url for s in ref.sources},
            "srcset": {s.mime.split("/")[1]: s.srcset for s in (*ref.sources, ref.png)},
        }
        for name, ref in sorted(icons.items())
    }
    return _html_safe_json(data)


def codes_json(view: SiteView) -> str:
    data = {
        "game": view.content.game,
        "codes": [
            {
                "code": c.code,
                "added": c.added.isoformat(),
                "expires": c.expires.isoformat() if c.expires else None,
                "active": c.active_on(view.today),
                "note": c.note,
                "rewards": [
                    {"icon": r.icon, "amount": r.amount, "png": view.icons[r.icon].fallback} for r in c.rewards
                ],
            }
            for c in view.content.codes
        ],
    }
    return json.dumps(data, ensure_ascii=False, indent=1) + "\n"


def sitemap(view: SiteView, html_paths: list[str]) -> str:
    urls = [view.base_url + "/" + ("" if p == "index.html" else p) for p in html_paths if p != "404.html"]
    body = "".join(f"<url><loc>{xml_escape(u)}</loc></url>" for u in urls)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{body}</urlset>\n'


def _html_safe_json(data: object) -> str:
    text = json.dumps(data, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace("'", "\\u0027")
