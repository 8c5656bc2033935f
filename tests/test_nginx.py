"""deploy/nginx.conf, served by the real nginx over the site the pipeline builds.

Every request goes to 127.0.0.1 with a 5 s timeout, through http.client: no automatic
decompression, no redirects followed, so what nginx sent is what the test sees.
"""

from __future__ import annotations

import gzip
import http.client
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import brotli
import pytest

from . import probe
from .conftest import REPO, run_cli
from .nginx import SHIPPED_CONF, check_config, nginx_server, require_nginx  # noqa: F401 (fixture)

pytestmark = pytest.mark.nginx

TIMEOUT = 5.0
IMMUTABLE = "public, max-age=31536000, immutable"
ASSET_TYPES = {
    ".avif": "image/avif",
    ".webp": "image/webp",
    ".png": "image/png",
    ".css": "text/css",
    ".js": "application/javascript",
}
PAGE_TYPES = {
    "/index.html": "text/html",
    "/codes.json": "application/json",
    "/sitemap.xml": "text/xml",
    "/robots.txt": "text/plain",
}  # 404.html is served for every 404; manifest.json is not public


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def media_type(self) -> str:
        return (self.header("content-type") or "").split(";")[0].strip()


def get(base: str, path: str, **headers: str) -> Reply:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers={k.replace("_", "-"): v for k, v in headers.items()})
        response = conn.getresponse()
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()


def asset_urls(html: bytes) -> set[str]:
    return set(probe.asset_urls(html.decode("utf-8")))


def build(site: Path) -> None:
    result = run_cli(site, "build", "--offline")
    assert result.returncode == 0, result.stderr


@pytest.fixture
def served(site: Path, nginx_server) -> tuple[str, Path]:  # noqa: F811
    """(base URL, the live release dir) for a fresh copy of the default site, built and served."""
    build(site)
    return nginx_server(site), (site / "dist" / "current").resolve()


# ---- the shipped file ----------------------------------------------------------------------------


def test_shipped_config_is_valid_as_is(tmp_path: Path) -> None:
    require_nginx()
    result = check_config(tmp_path, SHIPPED_CONF.read_text(encoding="utf-8"))
    assert result.returncode == 0, result.stderr
    code = re.sub(r"#.*", "", SHIPPED_CONF.read_text(encoding="utf-8"))
    assert "open_file_cache" not in code, "open_file_cache can serve the old release after a swap"
    for match in re.finditer(r"\btypes\s*\{", code):  # server level would replace all of mime.types
        depth = code[: match.start()].count("{") - code[: match.start()].count("}")
        assert depth >= 2, "a `types {}` block outside a location replaces every inherited MIME type"
    # The harness's main config loads no dynamic module, so the check above proves the block works
    # on a stock nginx. brotli_static in particular must not come back: with disable_symlinks it
    # never finds a .br (google/ngx_brotli#134), so it would serve nothing while looking right.
    assert "brotli_static" not in code and "load_module" not in code


# ---- pages and assets ----------------------------------------------------------------------------


def test_home_page_is_html_and_revalidated(served: tuple[str, Path]) -> None:
    base, live = served
    reply = get(base, "/")
    assert reply.status == 200
    assert reply.media_type == "text/html"
    assert reply.header("cache-control") == "no-cache"
    assert reply.header("content-encoding") is None
    assert reply.body == (live / "index.html").read_bytes()
    etag = reply.header("etag")
    assert etag
    again = get(base, "/", If_None_Match=etag)
    assert again.status == 304 and again.body == b""
    assert again.header("cache-control") == "no-cache"


def test_every_page_has_its_type_and_is_revalidated(served: tuple[str, Path]) -> None:
    base, live = served
    for path, media_type in PAGE_TYPES.items():
        reply = get(base, path)
        assert (path, reply.status, reply.media_type) == (path, 200, media_type)
        assert reply.header("cache-control") == "no-cache", path
        assert reply.body == (live / path.lstrip("/")).read_bytes(), path


def test_every_asset_the_page_names_is_served_immutable(served: tuple[str, Path]) -> None:
    base, live = served
    urls = asset_urls(get(base, "/").body)
    assert {".webp", ".png", ".css", ".js"} <= {Path(u).suffix for u in urls} <= set(ASSET_TYPES), urls
    # The default icons all go as WebP (AVIF does not beat it on any of them), so an AVIF is put in
    # place to check its type and caching: older mime.types lack image/avif.
    avif = "/assets/icons/probe.0123456789.avif"
    (live / avif.lstrip("/")).write_bytes(b"\x00\x00\x00\x1cftypavif")
    urls.add(avif)
    for url in sorted(urls):
        reply = get(base, url)
        assert (url, reply.status) == (url, 200)
        assert reply.media_type == ASSET_TYPES[Path(url).suffix], url
        assert reply.header("cache-control") == IMMUTABLE, url
        assert reply.header("etag"), url
        assert reply.body == (live / url.lstrip("/")).read_bytes(), url


def test_gzip_static_serves_the_precompressed_files(served: tuple[str, Path]) -> None:
    base, live = served
    css = next(u for u in asset_urls((live / "index.html").read_bytes()) if u.endswith(".css"))
    for path, file in (("/", "index.html"), ("/codes.json", "codes.json"), (css, css.lstrip("/"))):
        reply = get(base, path, Accept_Encoding="gzip")
        assert reply.status == 200, path
        assert reply.header("content-encoding") == "gzip", path
        assert reply.header("vary") == "Accept-Encoding", path
        assert reply.body == (live / f"{file}.gz").read_bytes(), path  # the build's file, byte for byte
        assert gzip.decompress(reply.body) == (live / file).read_bytes(), path
    assert get(base, css, Accept_Encoding="gzip").header("cache-control") == IMMUTABLE
    # No .gz next to robots.txt (too small to gain) and no on-the-fly gzip: sent as is.
    assert not (live / "robots.txt.gz").exists()
    plain = get(base, "/robots.txt", Accept_Encoding="gzip")
    assert plain.status == 200 and plain.header("content-encoding") is None
    assert plain.body == (live / "robots.txt").read_bytes()


ENCODINGS = {"br": brotli.decompress, "gzip": gzip.decompress, None: lambda body: body}


@pytest.mark.parametrize("accept", ["br", "gzip", None], ids=["br", "gzip", "identity"])
@pytest.mark.parametrize("page", ["/", "css", "/codes.json"])
def test_each_encoding_gets_its_precompressed_file(served: tuple[str, Path], page: str, accept: str | None) -> None:
    """br gets the .br, gzip the .gz, neither the file itself; the same bytes once decoded, and
    the same type, cache policy and Vary whichever variant is sent."""
    base, live = served
    path = (
        page if page != "css" else next(u for u in asset_urls((live / "index.html").read_bytes()) if u.endswith(".css"))
    )
    file = live / ("index.html" if path == "/" else path.lstrip("/"))
    plain = get(base, path)
    reply = get(base, path, **({"Accept_Encoding": accept} if accept else {}))
    assert reply.status == 200
    assert reply.header("content-encoding") == accept
    assert ENCODINGS[accept](reply.body) == file.read_bytes() == plain.body
    if accept:
        suffix = {"br": ".br", "gzip": ".gz"}[accept]
        assert reply.body == file.with_name(file.name + suffix).read_bytes()  # the build's file, as is
    assert reply.header("vary") == "Accept-Encoding"
    assert reply.header("content-type") == plain.header("content-type")
    assert (
        reply.header("cache-control") == plain.header("cache-control") == (IMMUTABLE if page == "css" else "no-cache")
    )
    etag = reply.header("etag")
    assert etag and get(base, path, If_None_Match=etag, **({"Accept_Encoding": accept} if accept else {})).status == 304


def test_brotli_is_preferred_and_q0_refuses_it(served: tuple[str, Path]) -> None:
    base, live = served
    br = (live / "index.html.br").read_bytes()
    for accept in ("gzip, deflate, br", "gzip, deflate, br, zstd", "br;q=1.0, gzip;q=0.8", "gzip;q=1, br;q=0.5", "BR"):
        reply = get(base, "/", Accept_Encoding=accept)
        assert (accept, reply.header("content-encoding"), reply.body == br) == (accept, "br", True)
    for accept in ("br;q=0, gzip", "gzip, br; q=0.0", "brotli, gzip", "gzip, x-br"):
        reply = get(base, "/", Accept_Encoding=accept)
        assert (accept, reply.header("content-encoding")) == (accept, "gzip")
        assert reply.body == (live / "index.html.gz").read_bytes(), accept
    # robots.txt is too small for gzip to gain 5% but not brotli: br or plain, both with Vary.
    assert (live / "robots.txt.br").is_file() and not (live / "robots.txt.gz").exists()
    for accept, encoding in (("gzip, br", "br"), ("gzip", None), (None, None)):
        reply = get(base, "/robots.txt", **({"Accept_Encoding": accept} if accept else {}))
        assert (accept, reply.header("content-encoding"), reply.header("vary")) == (accept, encoding, "Accept-Encoding")
        assert ENCODINGS[encoding](reply.body) == (live / "robots.txt").read_bytes()
        assert reply.media_type == "text/plain"


def test_every_text_file_has_its_type_when_sent_as_br(served: tuple[str, Path]) -> None:
    base, live = served
    scripts = sorted(u for u in asset_urls(get(base, "/").body) if u.endswith(".js"))
    assert scripts
    for path in [*sorted(PAGE_TYPES), *scripts]:
        plain, br = get(base, path), get(base, path, Accept_Encoding="br")
        assert (path, br.status, br.header("content-type")) == (path, 200, plain.header("content-type"))
        assert br.header("content-encoding") == "br", path
        assert brotli.decompress(br.body) == plain.body, path
    # Images are never re-encoded, and carry no Vary.
    for url in sorted(u for u in asset_urls(get(base, "/").body) if not u.endswith((".css", ".js"))):
        reply = get(base, url, Accept_Encoding="br, gzip")
        assert (url, reply.header("content-encoding"), reply.header("vary")) == (url, None, None)


def test_the_404_page_comes_in_the_accepted_encoding(served: tuple[str, Path]) -> None:
    base, live = served
    not_found = (live / "404.html").read_bytes()
    for accept in ("br", "gzip", None):
        reply = get(base, "/no-such-page", **({"Accept_Encoding": accept} if accept else {}))
        assert (accept, reply.status, reply.header("content-encoding")) == (accept, 404, accept)
        assert ENCODINGS[accept](reply.body) == not_found, accept
        assert reply.header("cache-control") == "no-cache" and reply.header("vary") == "Accept-Encoding"


def test_a_br_file_is_never_served_under_its_own_name(served: tuple[str, Path]) -> None:
    base, live = served
    for accept in ("br", None):
        reply = get(base, "/index.html.br", **({"Accept_Encoding": accept} if accept else {}))
        assert reply.status == 404, accept
        assert ENCODINGS[accept](reply.body) == (live / "404.html").read_bytes()


# ---- what must not be served ----------------------------------------------------------------------


def test_missing_paths_get_the_404_page_uncached(served: tuple[str, Path]) -> None:
    base, live = served
    not_found = (live / "404.html").read_bytes()
    for path in ("/no-such-page", "/no/such/dir/", "/assets/style.0000000000.css", "/assets/icons/nope.webp"):
        reply = get(base, path)
        assert (path, reply.status) == (path, 404)
        assert reply.body == not_found, path
        assert reply.header("cache-control") == "no-cache", path  # never the year-long asset header


def test_directories_answer_the_404_page(served: tuple[str, Path]) -> None:
    """A directory without an index.html is a 404 with the site's 404 page, with or without the
    slash (not nginx's 403 for a listing, nor a redirect to one); one with an index.html is served."""
    base, live = served
    not_found = (live / "404.html").read_bytes()
    for path in ("/assets/", "/assets/icons/", "/assets", "/assets/icons", "//assets//", "/assets/./icons/"):
        for accept in ("br", "gzip", None):
            reply = get(base, path, **({"Accept_Encoding": accept} if accept else {}))
            assert (path, accept, reply.status) == (path, accept, 404)
            assert ENCODINGS[reply.header("content-encoding")](reply.body) == not_found, (path, accept)
            assert reply.header("cache-control") == "no-cache", path
    (live / "guide").mkdir()
    (live / "guide" / "index.html").write_bytes(b"<!doctype html><title>Guide</title>\n")
    moved = get(base, "/guide")
    assert (moved.status, moved.header("location")) == (301, "/guide/")
    reply = get(base, "/guide/")
    assert reply.status == 200 and reply.body == (live / "guide" / "index.html").read_bytes()
    assert get(base, "/").body == (live / "index.html").read_bytes()


def test_the_404_page_by_its_own_name_is_a_404(served: tuple[str, Path]) -> None:
    base, live = served
    not_found = (live / "404.html").read_bytes()
    for path in ("/404.html", "/404.html?x=1", "//404.html", "/%34%30%34.html", "/assets/../404.html"):
        for accept in ("br", "gzip", None):
            reply = get(base, path, **({"Accept_Encoding": accept} if accept else {}))
            assert (path, accept, reply.status, reply.header("content-encoding")) == (path, accept, 404, accept)
            assert ENCODINGS[accept](reply.body) == not_found, (path, accept)
            assert reply.header("cache-control") == "no-cache", path


def test_precompressed_files_and_the_manifest_are_not_served_by_name(served: tuple[str, Path]) -> None:
    """Every .gz and .br the release holds is sent only for its plain file's URL; manifest.json
    (the build's asset record, read from disk by the tools) is not public, in any encoding."""
    base, live = served
    not_found = (live / "404.html").read_bytes()
    twins = sorted("/" + p.relative_to(live).as_posix() for p in live.rglob("*") if p.suffix in (".gz", ".br"))
    assert {"/index.html.gz", "/index.html.br", "/manifest.json.gz", "/manifest.json.br"} <= set(twins), twins
    assert any(t.startswith("/assets/") and t.endswith(".css.gz") for t in twins), twins
    assert (live / "manifest.json").is_file()  # still written: only not served
    for path in [*twins, "/manifest.json", "/manifest.json?x", "/%6danifest.json", "//manifest.json"]:
        for accept in ("br", "gzip", None):
            reply = get(base, path, **({"Accept_Encoding": accept} if accept else {}))
            assert (path, accept, reply.status) == (path, accept, 404)
            assert ENCODINGS[reply.header("content-encoding")](reply.body) == not_found, (path, accept)


def test_release_records_live_outside_the_served_root(served: tuple[str, Path], site: Path) -> None:
    base, live = served
    records = sorted((site / "dist" / "releases").glob("r*.json"))
    assert records and all(live not in record.parents for record in records), records
    assert not list(live.rglob("r[0-9]*.json")), "a release record inside the served release"
    record = records[-1]
    for path in (
        f"/{record.name}",
        f"/releases/{record.name}",
        f"/../{record.name}",
        f"/%2e%2e/{record.name}",
        f"/..%2f{record.name}",
        f"/assets/../../{record.name}",
        f"/../releases/{record.name}",
    ):
        reply = get(base, path)
        assert reply.status in (400, 404), (path, reply.status)
        assert reply.body != record.read_bytes() and b'"built"' not in reply.body, path


def test_dotfiles_are_refused(served: tuple[str, Path]) -> None:
    base, live = served
    secret = b"SECRET=do-not-serve\n"
    (live / ".env").write_bytes(secret)
    (live / "assets" / ".hidden.css").write_bytes(secret)
    (live / "assets" / ".hidden.avif").write_bytes(secret)
    (live / ".git").mkdir()
    (live / ".git" / "config").write_bytes(secret)
    for path in ("/.env", "/%2eenv", "/assets/.hidden.css", "/assets/.hidden.avif", "/.git/config", "/.git/"):
        reply = get(base, path)
        assert reply.status in (403, 404), (path, reply.status)
        assert secret not in reply.body, path


def test_symlinks_inside_a_release_are_refused(served: tuple[str, Path]) -> None:
    base, live = served
    (live / "passwd.txt").symlink_to("/etc/passwd")
    (live / "assets" / "leak.css").symlink_to("/etc/passwd")
    (live / "etc").symlink_to("/etc")
    (live / "alias.html").symlink_to("index.html")  # even one that stays inside the release
    for path in ("/passwd.txt", "/assets/leak.css", "/etc/passwd", "/alias.html"):
        reply = get(base, path)
        assert reply.status in (403, 404), (path, reply.status)
        assert b"root:" not in reply.body, path
    # A precompressed sibling that is a symlink is not used either: the plain file is sent.
    (live / "codes.json.br").unlink()
    (live / "codes.json.br").symlink_to("/etc/passwd")
    (live / "codes.json.gz").unlink()
    (live / "codes.json.gz").symlink_to("/etc/passwd")
    for accept in ("br", "gzip"):
        reply = get(base, "/codes.json", Accept_Encoding=accept)
        assert (accept, reply.status, reply.header("content-encoding")) == (accept, 200, None)
        assert reply.body == (live / "codes.json").read_bytes(), accept
    assert get(base, "/").status == 200  # while the `current` symlink in the root path still works


@pytest.mark.skipif(os.geteuid() != 0, reason="only as root do the workers run as another user (nobody)")
def test_workers_are_unprivileged(served: tuple[str, Path]) -> None:
    """The master is root here, the workers are not: a file only root may read is refused. So the
    200s above prove the permissions publish writes are enough for an ordinary worker user."""
    base, live = served
    private = live / "private.txt"
    private.write_bytes(b"root only\n")
    private.chmod(0o600)
    assert get(base, "/private.txt").status == 403


def test_site_built_under_a_strict_umask_is_still_served(site: Path, nginx_server) -> None:  # noqa: F811
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "build", "--offline", "--site", str(site)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        umask=0o077,
    )
    assert result.returncode == 0, result.stderr
    base = nginx_server(site)
    assert get(base, "/").status == 200


# ---- the swap ------------------------------------------------------------------------------------------


def test_a_new_release_is_served_at_once_and_old_assets_still_answer(site: Path, served: tuple[str, Path]) -> None:
    base, first = served
    old = get(base, "/")
    old_gz = get(base, "/", Accept_Encoding="gzip")
    old_assets = {url: get(base, url).body for url in asset_urls(old.body)}

    # A page change (codes.yaml) and an asset change: the page names every icon whatever the codes
    # (legend + ICON_MAP), so only a new stylesheet hash leaves an old asset URL unnamed.
    codes = site / "codes.yaml"
    text = codes.read_text(encoding="utf-8")
    edited = re.sub(r"  - code: HAMSTERPASS\n(?:    .*\n)+", "", text)
    edited = edited.replace("Winter patch livestream code", "Winter patch livestream code, now with more Polychrome")
    assert edited != text and "HAMSTERPASS" not in edited and "now with more" in edited
    codes.write_text(edited, encoding="utf-8")
    with (site / "templates" / "style.css").open("a", encoding="utf-8") as css:
        css.write("\n.code-text { letter-spacing: 0.05em; }\n")
    build(site)

    second = (site / "dist" / "current").resolve()
    assert second != first, "the edit did not publish a new release"
    new = get(base, "/")  # the same nginx, not restarted or reloaded
    assert new.status == 200
    assert new.body == (second / "index.html").read_bytes() != old.body
    assert b"now with more Polychrome" in new.body and b"HAMSTERPASS" not in new.body
    new_gz = get(base, "/", Accept_Encoding="gzip")
    assert new_gz.body == (second / "index.html.gz").read_bytes() != old_gz.body
    assert gzip.decompress(new_gz.body) == new.body
    new_br = get(base, "/", Accept_Encoding="br")
    assert new_br.body == (second / "index.html.br").read_bytes() and brotli.decompress(new_br.body) == new.body
    revalidate = get(base, "/", If_None_Match=old.header("etag") or "")
    assert revalidate.status == 200 and revalidate.body == new.body  # the old ETag no longer matches

    new_assets = asset_urls(new.body)
    dropped = set(old_assets) - new_assets
    assert any(url.endswith(".css") for url in dropped), dropped  # so the loop below is not vacuous
    for url, body in sorted(old_assets.items()):  # a page fetched just before the swap still renders
        reply = get(base, url)
        assert (url, reply.status) == (url, 200)
        assert reply.body == body and reply.header("cache-control") == IMMUTABLE, url
    for url in sorted(new_assets):
        reply = get(base, url)
        assert (url, reply.status, reply.header("cache-control")) == (url, 200, IMMUTABLE)
