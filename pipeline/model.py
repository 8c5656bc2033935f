"""The values that flow between the stages: frozen dataclasses, and the tables and one pure
function (`sniff`) that name the formats."""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MIME = {
    "avif": "image/avif",
    "webp": "image/webp",
    "png": "image/png",
    "css": "text/css",
    "js": "text/javascript",
    "html": "text/html",
    "json": "application/json",
    "xml": "application/xml",
    "txt": "text/plain",
}

IMAGE_EXTENSIONS = ("avif", "gif", "jpg", "png", "webp")  # the source formats we take


def sniff(data: bytes) -> str | None:
    """An image's format by its magic bytes, as a file extension; None if it is not one we take."""
    for magic, ext in ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF87a", "gif"), (b"GIF89a", "gif")):
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:12] in (b"ftypavif", b"ftypavis"):
        return "avif"
    return None


def sri(data: bytes) -> str:
    """The Subresource Integrity value of `data`: "sha384-<base64>"."""
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


Progress = Callable[[str, int, int, str], None]  # (stage, done, total, the item just finished)


# ---- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodeSettings:
    """How one icon is encoded. Part of the encode cache key."""

    ssim_floor: float = 0.98  # per-icon quality floor, over black and over white
    avif: bool = True  # try AVIF and keep it only where it is smaller than the WebP
    lossless_only: bool = False  # skip the lossy search (pixel art, logos with hard edges)
    png_level: int = 2  # oxipng level: 4 took 3x the time of 2 for the same bytes on the default icons
    display: int = 40  # CSS px of the icon's box (its longer side); 0 = no resizing, one file at source size
    densities: tuple[float, ...] = (1.0, 2.0, 3.0)  # screen densities to make a file for, never upscaled


@dataclass(frozen=True)
class IconSpec:
    name: str  # as shown to readers and used in templates: "Polychrome"
    slug: str  # file-safe: "polychrome"
    url: str
    alt: str
    settings: EncodeSettings
    line: int  # in icon_map.yaml, for messages


@dataclass(frozen=True)
class FetchSettings:
    timeout: float = 10.0  # per phase (connect, read) of one request
    deadline: float = 30.0  # whole fetch stage, all icons
    max_bytes: int = 2_000_000  # per source, enforced while streaming
    max_redirects: int = 5
    concurrency: int = 8
    allow_private: bool = False  # tests set this to reach 127.0.0.1


@dataclass(frozen=True)
class PublishSettings:
    keep_releases: int = 5  # the last K releases always stay, whatever the clock says
    retention_hours: float = 24.0  # hashed assets named by a release this recent stay served
    target: str = ""  # "" = dist/ only; "s3://BUCKET/PREFIX": also publish there (pipeline/bucket.py)
    endpoint: str = ""  # the S3 API's base URL; "" = AWS
    region: str = ""  # "" = us-east-1
    upload_timeout: float = 10.0  # seconds, each request to the bucket
    upload_deadline: float = 300.0  # seconds, the whole publish to the bucket


@dataclass(frozen=True)
class IndexNowSettings:
    key: str = ""  # empty: IndexNow is off; else 8-128 of [A-Za-z0-9-], served as /{key}.txt
    endpoint: str = "https://api.indexnow.org/indexnow"
    timeout: float = 10.0


@dataclass(frozen=True)
class RenderSettings:
    eager: int = 6  # the first N icons in each page load at once; the rest are lazy


@dataclass(frozen=True)
class SiteConfig:
    root: Path
    title: str
    base_url: str  # "https://codes.example.org", no trailing slash
    content: str  # the codes data: a path relative to root, or an http(s) URL (a feed)
    icons: tuple[IconSpec, ...]
    fetch: FetchSettings = FetchSettings()
    publish: PublishSettings = PublishSettings()
    indexnow: IndexNowSettings = IndexNowSettings()
    render: RenderSettings = RenderSettings()
    jobs: int = 0  # encode worker processes; 0 = one per core

    @property
    def icons_dir(self) -> Path:
        return self.root / "icons"

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    @property
    def static_dir(self) -> Path:
        return self.root / "static"

    @property
    def dist_dir(self) -> Path:
        return self.root / "dist"

    @property
    def cache_dir(self) -> Path:
        return self.root / ".cache"

    @property
    def content_is_feed(self) -> bool:
        return self.content.startswith(("http://", "https://"))


# ---- content ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reward:
    icon: str  # an icon name from icon_map.yaml
    amount: int


@dataclass(frozen=True)
class Code:
    code: str
    added: dt.date
    expires: dt.date | None
    rewards: tuple[Reward, ...]
    note: str = ""

    def active_on(self, day: dt.date) -> bool:
        return self.expires is None or self.expires >= day


@dataclass(frozen=True)
class Content:
    game: str
    codes: tuple[Code, ...]


# ---- stage 1: fetch ---------------------------------------------------------------------------


class Origin(enum.Enum):
    DOWNLOADED = "downloaded"  # 200, new bytes stored in icons/
    NOT_MODIFIED = "not modified"  # 304, or 200 with the bytes we already had
    STALE = "stale"  # the source failed; the last good copy is used
    LOCAL = "local"  # --offline: icons/ only, nothing asked


@dataclass(frozen=True)
class Stored:
    """A last good copy kept between runs (icons/, the feed's copy) and its validators."""

    data: bytes
    url: str  # what it was fetched from; validators are sent only when the URL is the same
    etag: str
    last_modified: str


@dataclass(frozen=True)
class SourceIcon:
    spec: IconSpec
    data: bytes
    origin: Origin
    reason: str = ""  # why STALE: "HTTP 503 from https://..."
    etag: str = ""  # validators to store with the bytes, for the next conditional request
    last_modified: str = ""


@dataclass(frozen=True)
class Document:
    """The codes data as fetched: from a file, a feed, or the feed's last good copy."""

    label: str  # for messages: "codes.yaml" or the feed URL
    text: str
    origin: Origin
    reason: str = ""
    etag: str = ""
    last_modified: str = ""


# ---- stage 2: encode --------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    format: str  # "avif" | "webp" | "png"
    data: bytes
    detail: str  # how it was made: "lossless", "q72", "oxipng"
    ssim: float  # worst of the two backgrounds; 1.0 for lossless

    @property
    def mime(self) -> str:
        return MIME[self.format]

    @property
    def payload(self) -> Payload:
        return self.data

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class CachedFile:
    """Bytes kept on disk instead of in memory: a file of the encode cache, known by its size and
    hashes. A build holds these (a 5,000-icon site has ~30,000 encoded files) and reads a file only
    to copy it into a release that lacks it, checking its SHA-256 then."""

    path: str  # a str, not a Path: a build makes ~30,000 of them, and a Path costs ~3 us to make
    size: int
    sha256: str  # hex
    integrity: str  # "sha384-...": the SRI of the bytes


Payload = bytes | CachedFile  # the content of a file to publish: in memory, or a cached file


def payload_size(payload: Payload) -> int:
    return payload.size if isinstance(payload, CachedFile) else len(payload)


@dataclass(frozen=True)
class CachedVariant:
    """A Variant once it is in the encode cache: its file, not its bytes."""

    format: str
    file: CachedFile
    detail: str
    ssim: float

    @property
    def mime(self) -> str:
        return MIME[self.format]

    @property
    def payload(self) -> Payload:
        return self.file

    @property
    def size(self) -> int:
        return self.file.size


@dataclass(frozen=True)
class Rendition:
    """An icon at one screen density: one file per format the icon is served in."""

    density: float  # the srcset descriptor: 2.0 for "2x"; 1.6 for a 64 px source capped below 2x of 40
    width: int
    height: int
    # best first, the PNG fallback last; the same formats at every density. Fresh from the encoder
    # they hold their bytes; from the encode cache, their files.
    variants: tuple[Variant | CachedVariant, ...]


@dataclass(frozen=True)
class EncodedIcon:
    name: str
    slug: str
    width: int  # the CSS box the page draws it in: the display size, aspect kept (or the source size)
    height: int
    source_bytes: int
    renditions: tuple[Rendition, ...]  # ascending density; the first is what an old browser gets
    reused: bool = False  # True when it came from the encode cache

    @property
    def variants(self) -> tuple[Variant | CachedVariant, ...]:
        """Every file of every density."""
        return tuple(v for r in self.renditions for v in r.variants)


# ---- stage 3: fingerprint ---------------------------------------------------------------------


@dataclass(frozen=True)
class Asset:
    """Final bytes of one asset, before it has a hashed name."""

    logical: str  # "icons/polychrome.webp", "style.css"
    data: Payload
    mime: str
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class ManifestEntry:
    logical: str
    url: str  # "/assets/polychrome.3f2a9c1e0b.webp"
    size: int
    integrity: str  # "sha384-..."
    mime: str
    width: int | None = None
    height: int | None = None

    @property
    def path(self) -> str:
        return self.url.lstrip("/")


@dataclass(frozen=True)
class Manifest:
    entries: dict[str, ManifestEntry]
    files: dict[str, Payload]  # release-relative path -> content


@dataclass(frozen=True)
class Candidate:
    """One file of a srcset."""

    url: str
    density: float
    width: int
    height: int

    @property
    def descriptor(self) -> str:
        return f"{self.density:g}x"


@dataclass(frozen=True)
class IconSource:
    """One format of an icon at every density: a <source>, or the PNG of the <img>."""

    mime: str
    candidates: tuple[Candidate, ...]  # ascending density

    @property
    def url(self) -> str:
        """The lowest density: what a browser that knows no srcset loads."""
        return self.candidates[0].url

    @property
    def srcset(self) -> str:
        return ", ".join(f"{c.url} {c.descriptor}" for c in self.candidates)


@dataclass(frozen=True)
class IconRef:
    """One ICON_MAP entry: what a template needs to draw an icon."""

    name: str
    alt: str
    width: int  # the CSS box, whichever density loads
    height: int
    sources: tuple[IconSource, ...]  # best first: AVIF where kept, then WebP
    png: IconSource  # the <img>: src = its first file, srcset = the rest

    @property
    def fallback(self) -> str:
        return self.png.url

    @property
    def img_srcset(self) -> str:
        """The <img>'s srcset: its src already stands for 1x, so a 1x candidate is left out."""
        rest = [c for c in self.png.candidates if c.density != 1.0]
        return ", ".join(f"{c.url} {c.descriptor}" for c in rest)


# ---- stage 4/5: render, minify -----------------------------------------------------------------


@dataclass(frozen=True)
class SiteView:
    """Everything the templates see."""

    title: str
    base_url: str
    content: Content
    icons: dict[str, IconRef]
    assets: dict[str, ManifestEntry]  # logical name -> entry, for asset_url()
    build_id: str  # a hash of the inputs: the same inputs give byte-identical pages
    today: dt.date


@dataclass(frozen=True)
class Page:
    path: str  # release-relative: "index.html", "codes.json"
    data: bytes


@dataclass(frozen=True)
class Minified:
    pages: tuple[Page, ...]
    bytes_before: int
    bytes_after: int


# ---- stage 6: publish -------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishResult:
    switched: bool
    release: str  # name of the live release after the run
    replaced: dict[str, bytes | None]  # files outside assets/ this release adds or changes: the
    files_written: int  # bytes they had in the release it replaced (None: new)
    bytes_written: int


@dataclass(frozen=True)
class PingResult:
    sent: tuple[str, ...] = ()
    pending: int = 0  # URLs still in the outbox after this run
    problem: str = ""  # why not everything went, for a warning


# ---- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunReport:
    sources: tuple[SourceIcon, ...]
    encoded: tuple[EncodedIcon, ...]
    minified_before: int
    minified_after: int
    css_before: int
    css_after: int
    publish: PublishResult
    changed_pages: tuple[str, ...]  # pages whose visible content changed (what IndexNow hears of)
    timings: dict[str, float] = field(default_factory=dict)
    indexnow: PingResult | None = None  # None: not configured, or offline
    content: Document | None = None
