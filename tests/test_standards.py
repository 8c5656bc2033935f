"""Every page of the built default site against two real page checkers:

  Nu HTML checker  vnu.jar (npm vnu-jar, run on the machine's Java) over every *.html file of the
                   release: 0 errors; its warnings are printed (and counted in the summary).
  axe-core         axe.min.js (npm axe-core) injected into every page as nginx serves it, in
                   headless Chromium at 1280x800 and at a 390x844 phone viewport (device scale
                   factor 3): 0 violations, each one printed with its impact and target nodes.

Each checker is also shown able to fail, on a doctored copy of the page. The site is built once
and served once by the real nginx with deploy/nginx.conf (tests/nginx.py). The tools are
installed by .ci/run (Java from Debian, the two npm packages under .ci/node_modules); a missing
one skips locally but fails when CI is set.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .nginx import nginx_server, require_nginx, served_site  # noqa: F401 (nginx_server is a fixture)
from .test_browser import launched_chromium, require_chromium
from .tools import CI_NODE_MODULES, Page, built_default_site, html_pages, require

VNU_JAR = CI_NODE_MODULES / "vnu-jar" / "build" / "dist" / "vnu.jar"
AXE_JS = CI_NODE_MODULES / "axe-core" / "axe.min.js"
NU_TIMEOUT = 120  # seconds for one vnu run (a JVM start and a few pages: ~3 s)
TIMEOUT_MS = 10_000  # every Playwright wait
VIEWPORTS: dict[str, dict[str, Any]] = {
    "desktop-1280x800": {"viewport": {"width": 1280, "height": 800}, "device_scale_factor": 1},
    "phone-390x844@3x": {
        "viewport": {"width": 390, "height": 844},
        "device_scale_factor": 3,
        "is_mobile": True,
        "has_touch": True,
    },
}


# ---- the tools ---------------------------------------------------------------------------------


def require_vnu() -> str:
    java = shutil.which("java")
    require(java is not None, "java is not installed (apt-get install default-jre-headless)")
    require(VNU_JAR.is_file(), f"{VNU_JAR} is missing (npm install --prefix .ci)")
    return str(java)


def require_axe() -> None:
    require_chromium()
    require(AXE_JS.is_file(), f"{AXE_JS} is missing (npm install --prefix .ci)")


# ---- the Nu HTML checker -----------------------------------------------------------------------


def nu_check(files: dict[str, Path]) -> list[dict[str, Any]]:
    """Run vnu once over `files` (label -> path); its messages (JSON format), each with "file"
    set to the label of the file it is about."""
    java = require_vnu()
    done = subprocess.run(
        [
            java,
            "-jar",
            str(VNU_JAR),
            "--format",
            "json",
            "--stdout",
            "--exit-zero-always",
            *(str(path) for path in files.values()),
        ],
        capture_output=True,
        text=True,
        timeout=NU_TIMEOUT,
    )
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        report = None
    assert done.returncode == 0 and isinstance(report, dict) and "messages" in report, (
        f"vnu did not run (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    )
    by_url = {}
    for label, path in files.items():
        uri = path.resolve().as_uri()  # file:///x; vnu writes file:/x
        by_url[uri] = by_url[uri.replace("file:///", "file:/", 1)] = label
    return [
        {**message, "file": by_url.get(message.get("url", ""), message.get("url", "?"))}
        for message in report["messages"]
    ]


def nu_errors(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # "non-document-error": the checker could not read or process the document (I/O, schema)
    return [m for m in messages if m.get("type") in ("error", "non-document-error")]


def nu_warnings(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("type") == "info" and m.get("subType") == "warning"]


def nu_line(message: dict[str, Any]) -> str:
    kind = message.get("type", "?") + (f"/{message['subType']}" if message.get("subType") else "")
    where = f"{message.get('file', '?')}:{message.get('lastLine', '?')}:{message.get('firstColumn', message.get('lastColumn', '?'))}"
    extract = (message.get("extract") or "").replace("\n", " ")
    return f"{where}: {kind}: {message.get('message', '')}" + (f"\n      {extract}" if extract else "")


# ---- axe-core ----------------------------------------------------------------------------------

ALL_IMAGES_SETTLED = """() => {
  const pending = [...document.images].filter(img => !img.complete);
  if (pending.length) pending[0].scrollIntoView({block: "center"});
  return pending.length === 0;
}"""

AXE_RUN = """async () => {
  await document.fonts.ready;
  const result = await axe.run(document);
  const brief = rule => ({
    id: rule.id, impact: rule.impact, help: rule.help, helpUrl: rule.helpUrl,
    nodes: rule.nodes.map(node => ({target: node.target, html: node.html,
                                    summary: node.failureSummary || ""})),
  });
  return {version: axe.version, violations: result.violations.map(brief),
          incomplete: result.incomplete.map(brief), passes: result.passes.length};
}"""


def axe_check(browser: Any, base: str, page_info: Page, options: dict[str, Any]) -> dict[str, Any]:
    """Load `page_info.url` from nginx in a fresh context with `options` (viewport and so on),
    let every (lazy) image settle, inject axe-core and return its brief result."""
    context = browser.new_context(**options, bypass_csp=True, service_workers="block")
    try:
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        response = page.goto(base + page_info.url, wait_until="load", timeout=TIMEOUT_MS)
        status = response.status if response else None
        assert status == page_info.status, f"{page_info.url} answered {status}, expected {page_info.status}"
        page.wait_for_function(ALL_IMAGES_SETTLED, timeout=TIMEOUT_MS, polling=50)
        page.evaluate("() => scrollTo(0, 0)")
        page.add_script_tag(path=str(AXE_JS))
        return page.evaluate(AXE_RUN)
    finally:
        context.close()


def axe_report(label: str, rules: list[dict[str, Any]]) -> list[str]:
    lines = []
    for rule in rules:
        lines.append(f"{label}: {rule['id']} ({rule['impact']}) {rule['help']} [{len(rule['nodes'])} node(s)]")
        for node in rule["nodes"]:
            reasons = [
                line.strip() for line in node["summary"].splitlines() if line.strip() and not line.startswith("Fix ")
            ]
            lines.append(f"      {' '.join(map(str, node['target']))}" + (f"  -- {reasons[0]}" if reasons else ""))
    return lines


# ---- doctoring ---------------------------------------------------------------------------------

IMG_TAG = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
ALT_ATTR = re.compile(r"""\salt(?=[\s=/>])(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s>]+))?""", re.IGNORECASE)
CONTENT_START = (re.compile(r"<main\b[^>]*>", re.IGNORECASE), re.compile(r"<body\b[^>]*>", re.IGNORECASE))


def doctor(html: str, *, img_id: str, insert: str) -> str:
    """The first <img> loses its alt attribute and gets id=`img_id`; `insert` goes right after
    the opening <main> (or <body>)."""
    first = IMG_TAG.search(html)
    assert first, "the page has no <img> to doctor"
    tag = ALT_ATTR.sub("", first.group(0))
    tag = tag[:4] + f' id="{img_id}"' + tag[4:]
    html = html[: first.start()] + tag + html[first.end() :]
    start = CONTENT_START[0].search(html) or CONTENT_START[1].search(html)
    assert start, "the page has neither <main> nor <body>"
    return html[: start.end()] + insert + html[start.end() :]


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_site(warm_cache: Path) -> Iterator[Path]:
    with built_default_site(warm_cache, "test-standards-") as root:
        yield root


@pytest.fixture(scope="module")
def release(built_site: Path) -> Path:
    return (built_site / "dist" / "current").resolve()


@pytest.fixture(scope="module")
def pages(release: Path) -> list[Page]:
    found = html_pages(release)
    names = [page.name for page in found]
    assert "index.html" in names and "404.html" in names, names
    return found


@pytest.fixture(scope="module")
def server(built_site: Path) -> Iterator[str]:
    require_nginx()
    with served_site(built_site) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_axe()
    with launched_chromium() as chromium:
        yield chromium


# ---- tests: Nu HTML checker --------------------------------------------------------------------


DOCTORED = "doctored copy of index.html"


@pytest.fixture(scope="module")
def nu_messages(pages: list[Page], release: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """One vnu run (one JVM start) over every page of the release plus a doctored copy of
    index.html whose first <img> has no alt and which holds a duplicate id."""
    html = (release / "index.html").read_text(encoding="utf-8")
    doctored = tmp_path_factory.mktemp("nu") / "doctored.html"
    doctored.write_text(
        doctor(html, img_id="doctored-img", insert='<p id="doctored">a</p><p id="doctored">b</p>'), encoding="utf-8"
    )
    return nu_check({**{page.name: page.file for page in pages}, DOCTORED: doctored})


def test_every_page_passes_the_nu_html_checker(
    pages: list[Page], nu_messages: list[dict[str, Any]], record_figure: Callable[[str, Any], None]
) -> None:
    messages = [m for m in nu_messages if m["file"] != DOCTORED]
    errors, warnings = nu_errors(messages), nu_warnings(messages)
    for message in warnings:
        print("Nu warning:", nu_line(message))
    record_figure(
        "Nu HTML checker",
        f"{len(pages)} pages ({', '.join(p.name for p in pages)}): {len(errors)} errors, {len(warnings)} warnings",
    )
    assert not errors, f"the Nu HTML checker found {len(errors)} error(s):\n" + "\n".join(map(nu_line, messages))


def test_nu_html_checker_reports_a_doctored_page(nu_messages: list[dict[str, Any]]) -> None:
    """The checker is really checking: an <img> without alt and a duplicate id are errors."""
    messages = [m for m in nu_messages if m["file"] == DOCTORED]
    errors = nu_errors(messages)
    report = "\n".join(map(nu_line, messages))
    print(report)
    assert errors, "the Nu HTML checker found nothing wrong with a doctored page"
    assert any("alt" in m.get("message", "") and "img" in m.get("message", "") for m in errors), report
    assert any("duplicate id" in m.get("message", "").lower() for m in errors), report


# ---- tests: axe-core ---------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.nginx
@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_axe_finds_no_violations(
    browser: Any, server: str, pages: list[Page], viewport: str, record_figure: Callable[[str, Any], None]
) -> None:
    lines: list[str] = []
    found: dict[str, list[str]] = {}
    needs_review = 0
    for page in pages:
        result = axe_check(browser, server, page, VIEWPORTS[viewport])
        label = f"{viewport} {page.name} ({page.url})"
        lines += axe_report(label, result["violations"])
        found[page.name] = [f"{rule['id']}/{rule['impact']}x{len(rule['nodes'])}" for rule in result["violations"]]
        needs_review += len(result["incomplete"])
        for line in axe_report(label + " needs review", result["incomplete"]):
            print("axe", line)
    for line in lines:
        print("axe", line)
    record_figure(
        f"axe-core {result['version']} at {viewport}",
        "; ".join(f"{name}: {', '.join(ids) or 'no violations'}" for name, ids in found.items())
        + f" ({needs_review} needing review)",
    )
    total = sum(len(ids) for ids in found.values())
    assert total == 0, f"axe-core found {total} violation(s) at {viewport}:\n" + "\n".join(lines)


@pytest.mark.browser
@pytest.mark.nginx
def test_axe_reports_a_doctored_page(
    browser: Any, built_site: Path, release: Path, nginx_server: Callable[..., str]
) -> None:  # noqa: F811
    """axe is really checking: an image without alt and low-contrast text are violations, each
    pinned to the node that was doctored."""
    parent = built_site / "doctored"
    parent.mkdir(exist_ok=True)
    parent.chmod(0o755)  # the nginx workers (nobody when root) must traverse it
    copy = parent / "axe"
    shutil.copytree(release, copy)  # regular files, not links into the live release
    html = (copy / "index.html").read_text(encoding="utf-8")
    low_contrast = '<p id="doctored-contrast" style="color:#777;background-color:#888">hard to read</p>'
    (copy / "index.html").write_text(doctor(html, img_id="doctored-img", insert=low_contrast), encoding="utf-8")
    for twin in ("index.html.gz", "index.html.br"):  # gzip_static / brotli_static would serve the original
        (copy / twin).unlink(missing_ok=True)
    base = nginx_server(built_site, root=copy)

    result = axe_check(browser, base, Page("index.html", copy / "index.html", "/", 200), VIEWPORTS["desktop-1280x800"])
    report = "\n".join(axe_report("doctored index.html", result["violations"]))
    print(report)
    by_id = {rule["id"]: rule for rule in result["violations"]}
    assert "image-alt" in by_id, report
    assert any("doctored-img" in node["html"] for node in by_id["image-alt"]["nodes"]), report
    assert "color-contrast" in by_id, report
    assert any("doctored-contrast" in node["html"] for node in by_id["color-contrast"]["nodes"]), report
