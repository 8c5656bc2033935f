"""`pipeline check`: every input validated as `build` reads it, with nothing fetched, encoded,
rendered or written, in a fraction of a second.

    site.toml + icon_map.yaml   config.load_site, as build               -> ConfigError (78)
    the codes file              read as build reads it, config.load_content -> ConfigError (78)
    templates/*.html            compiled by Jinja2, as render does       -> TemplateError (65)

The messages are build's own: the same readers raise them, and the few lines build has of its
own (a missing codes file, a template that does not compile, a missing index.html) are
reproduced here word for word, which tests/test_init.py compares against a real build. Where
build stops at the first failing stage, check goes on to the next independent one (the
templates do not depend on the config), and reports every error; the first is build's, and so is
the exit code.

Templates are compiled, not rendered. Rendering needs the encoded icons (their sizes, formats and
hashed URLs), and rendering with made-up ones would mean a second copy of render's environment
that drifts from it (the globals and built-in helpers render gives templates change with the
project) and so reports errors that build would not. Compiling catches what is written wrong:
syntax, unknown filters and tests, and `extends`/`include`/`import` of a template that does not
exist; an unknown variable or icon name is found by `build` (and by the live preview). The
compiling environment mirrors render.environment's options, filters and tests; a test holds the
two together. Codes served by a feed are not fetched: only build and its last good copy know them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2
from jinja2 import nodes

from . import config
from .errors import ConfigError, PipelineError, TemplateError
from .model import IMAGE_EXTENSIONS, SiteConfig


@dataclass(frozen=True)
class Checked:
    errors: tuple[PipelineError, ...]  # in build's order: the first is the one build reports
    icons: int
    codes: int | None  # None: the codes come from a feed, which check does not fetch
    templates: int  # the .html templates compiled, partials included
    notes: tuple[str, ...] = ()  # worth knowing, not wrong: an icon with no copy in icons/ yet

    @property
    def exit_code(self) -> int:
        return self.errors[0].exit_code if self.errors else 0


def check_site(root: Path) -> Checked:
    errors: list[PipelineError] = []
    notes: list[str] = []
    site: SiteConfig | None = None
    codes: int | None = 0
    try:
        site = config.load_site(root)
    except ConfigError as error:
        errors.append(error)
    if site is not None:
        notes += _missing_copies(site)
        if site.content_is_feed:
            codes = None
        else:
            try:
                content = config.load_content(site.content, _codes_text(site), {s.name for s in site.icons})
                codes = len(content.codes)
            except ConfigError as error:
                errors.append(error)
    templates_dir = site.templates_dir if site is not None else root.resolve() / "templates"
    compiled, template_errors = check_templates(templates_dir)
    errors += template_errors
    return Checked(tuple(errors), len(site.icons) if site else 0, codes, compiled, tuple(notes))


def _codes_text(site: SiteConfig) -> str:
    """The codes file's text, with build's messages (build.content_document)."""
    path = site.root / site.content
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{site.content}: not found in {path.parent}; set [site] content in site.toml") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{site.content}: is not UTF-8 text ({error.reason} at byte {error.start})") from None


def _missing_copies(site: SiteConfig) -> list[str]:
    """Icons with no last good copy in icons/: fine for `build`, which fetches them, but
    `build --offline` would stop at them."""
    missing = []
    for spec in site.icons:
        if not any((site.icons_dir / f"{spec.slug}.{ext}").is_file() for ext in IMAGE_EXTENSIONS):
            missing.append(
                f"icon {spec.name!r} has no copy in icons/ yet: `pipeline build` will fetch it from "
                f"{spec.url} (`--offline` would stop there)"
            )
    return missing


# ---- templates ------------------------------------------------------------------------------------


def environment(templates_dir: Path) -> jinja2.Environment:
    """Compiles as render.environment does (same options; filters and tests are Jinja2's own)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        autoescape=jinja2.select_autoescape(["html", "xml"], default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def check_templates(templates_dir: Path) -> tuple[int, list[TemplateError]]:
    """(how many .html templates compiled, one error per template that does not), pages and
    partials alike; a page without index.html is build's error too."""
    env = environment(templates_dir)
    label = templates_dir.name
    try:
        names = sorted(env.list_templates(extensions=["html"]))
    except OSError:
        names = []
    errors: list[TemplateError] = []
    if "index.html" not in names:
        errors.append(TemplateError(f"{label}/index.html is missing; every site needs a home page"))
    for name in names:
        try:
            source = env.loader.get_source(env, name)[0] if env.loader else ""
            tree = env.parse(source, name, name)
            env.compile(tree, name, name, raw=True)  # code generation (no bytecode): unknown filters, tests
        except jinja2.TemplateSyntaxError as error:  # as render_page words it
            errors.append(TemplateError(f"{label}/{error.name or name}:{error.lineno}: syntax error: {error.message}"))
            continue
        except (jinja2.TemplateError, OSError, ValueError) as error:  # unreadable, not UTF-8
            errors.append(TemplateError(f"{label}/{name}: {error}"))
            continue
        for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
            if missing := _missing(env, node):
                errors.append(TemplateError(f"{label}/{name}:{node.lineno}: {missing}"))
    return len(names), errors


def _missing(env: jinja2.Environment, node: nodes.Node) -> str | None:
    """Why a template named by a constant in extends/include/import cannot be loaded (render
    fails on it), in Jinja's words; `include ... ignore missing` and names computed at render
    time are left alone."""
    target = getattr(node, "template", None)
    if getattr(node, "ignore_missing", False) or not isinstance(target, nodes.Const) or env.loader is None:
        return None
    if not isinstance(target.value, str):
        return None
    try:
        env.loader.get_source(env, target.value)
    except jinja2.TemplateNotFound as error:
        return str(error)
    except (OSError, ValueError):
        return None  # exists: reported in its own turn if it cannot be read
    return None
