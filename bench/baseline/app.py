"""The architecture this project replaces, for bench/serve.py: a Flask app that renders the page
on every request.

Same templates, same data: the site folder's config and content are read once with
pipeline.config (as pipeline/build.py does), and the icons point at the hashed URLs of an already
built release (its manifest.json, the very bytes build.py hashes into the build id), so the
SiteView is the one the build rendered. Per request, as a typical Flask site does, the view picks
today's date, splits the codes into active/expired and renders templates/index.html with Jinja2
(the pipeline's own environment: autoescape, StrictUndefined, the same globals; compiled templates
are cached by Jinja, as Flask's are). Nothing is minified or cached per response.

    BASELINE_SITE=/path/to/site  gunicorn -c bench/baseline/gunicorn.conf.py

`BASELINE_SITE` is the site folder (config, templates, dist/current). `render_once(site)` gives
the bytes of one render, for the bench's same-page check (minified, they must equal the built
index.html byte for byte).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flask import Flask, Response  # noqa: E402

from pipeline import config, render  # noqa: E402
from pipeline.build import build_id, content_document  # noqa: E402
from pipeline.model import Candidate, IconRef, IconSource, ManifestEntry, SiteView  # noqa: E402

ICON_FORMATS = ("avif", "webp")  # encode_icon's order: AVIF (where kept) before WebP; PNG is the fallback


def load_view(site_dir: Path, today: dt.date | None = None) -> SiteView:
    """The SiteView build.py renders, rebuilt from the site's config and its live release."""
    site = config.load_site(Path(site_dir))
    document = content_document(site, None)  # a local codes file (a feed would need its cached copy)
    content = config.load_content(document.label, document.text, {spec.name for spec in site.icons})
    manifest_bytes = (site.dist_dir / "current" / "manifest.json").read_bytes()
    manifest = json.loads(manifest_bytes)
    entries = {
        logical: ManifestEntry(logical, e["url"], e["size"], e["integrity"], e["type"], e.get("width"), e.get("height"))
        for logical, e in manifest.items()
    }
    icons: dict[str, IconRef] = {}
    for spec in site.icons:  # the build's order: icon_map.yaml's
        first = entries[f"icons/{spec.slug}.png"]  # the first density: its size is the CSS box
        by_format = {fmt: _densities(entries, spec.slug, fmt) for fmt in (*ICON_FORMATS, "png")}
        sources = tuple(source for fmt in ICON_FORMATS if (source := by_format[fmt]) is not None)
        icons[spec.name] = IconRef(spec.name, spec.alt, first.width or 0, first.height or 0, sources, by_format["png"])
    today = today or dt.date.today()
    return SiteView(site.title, site.base_url, content, icons, entries, build_id(manifest_bytes, content, today), today)


def _densities(entries: dict[str, ManifestEntry], slug: str, fmt: str) -> IconSource | None:
    """One format of an icon at every density, from the manifest's logical names
    ("icons/denny.webp" is the first density, "icons/denny@1.6x.webp" another)."""
    found = sorted(
        (1.0 if logical == f"icons/{slug}.{fmt}" else float(logical.split("@")[1][: -len(fmt) - 2]), e)
        for logical, e in entries.items()
        if logical == f"icons/{slug}.{fmt}" or (logical.startswith(f"icons/{slug}@") and logical.endswith("." + fmt))
    )
    if not found:
        return None
    return IconSource(found[0][1].mime, tuple(Candidate(e.url, d, e.width or 0, e.height or 0) for d, e in found))


class IndexPage:
    """One Jinja2 environment for the process (as Flask's app.jinja_env); a render per call."""

    def __init__(self, site_dir: Path) -> None:
        self.view = load_view(site_dir)
        site = config.load_site(Path(site_dir))
        self.templates = site.templates_dir
        self.env = render.environment(self.templates, self.view, eager=site.render.eager)

    def render(self) -> bytes:
        today = dt.date.today()
        codes = self.view.content.codes
        active = [c for c in codes if c.active_on(today)]
        expired = [c for c in codes if not c.active_on(today)]
        return render.render_page(self.env, self.templates, "index.html", active=active, expired=expired).encode(
            "utf-8"
        )


def render_once(site_dir: Path) -> bytes:
    return IndexPage(site_dir).render()


def create_app(site_dir: str | os.PathLike[str] | None = None) -> Flask:
    page = IndexPage(Path(site_dir or os.environ["BASELINE_SITE"]))
    app = Flask(__name__)

    @app.get("/")
    def index() -> Response:
        return Response(page.render(), mimetype="text/html", headers={"Cache-Control": "no-cache"})

    return app
