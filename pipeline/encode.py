"""Stage 2: SourceIcon -> EncodedIcon. Pure: Pillow in memory, no disk, no clock.

The icon is decoded and resized by pixels.py; the SSIM and the quality searches are quality.py's.

The encoding is chosen per icon: a fixed lossy quality breaks some icons (lossy WebP
subsamples chroma 4:2:0; SSIM fell to 0.75 at q80 on emoji) while lossless WebP saves only ~20% on
already-optimised PNGs. So each format tries lossless and a lossy quality search, and keeps the
smallest output whose SSIM against the source, composited over black and over white, stays at or
above `ssim_floor`. AVIF is kept only where it is smaller than the WebP.

The search is built to be cheap (bench/search_cost.py against encoder version 3): the reference
side of the SSIM is computed once per image; the lossy WebP quality is found by interpolating
ln(1 - SSIM) between trials instead of bisecting (2.7 encodes and 2.4 scores per density instead
of 3.5 of each); trials are scored in float32, and in float64 only near the floor and for the
file served; a search stops as soon as it cannot beat the smaller file already made (for AVIF:
the WebP; for WebP, where its lowest quality cost more than the palette or lossless file at one
density, that quality is tried first at the next); and files that measurably cannot win
(full-colour lossless beside a palette that keeps the floor, lossless WebP m6 on a palette) are
not made.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import partial

import oxipng
import PIL
from PIL import Image, features

from .model import EncodedIcon, EncodeSettings, Rendition, SourceIcon, Variant
from .pixels import decode, resize
from .quality import Scorer, interpolate, search
from .quality import ssim as ssim  # re-exported: the benches score with pipeline.encode.ssim

# Bump when the bytes this stage (this module, pixels.py, quality.py) produces for the same input and settings change.
ENCODER_VERSION = "5"
LIBRARY_VERSIONS = f"Pillow {PIL.__version__}, libwebp {features.version('webp')}, libavif {features.version('avif')}"

WEBP_QUALITIES = (30, 98)  # the lossy search range
# Up to 100: on large icons with a fine coloured grain, 4:2:0 chroma caps every lossy WebP below
# the SSIM floor, and 4:4:4 AVIF first passes at q96 (bench/weak_spot.py: 25 of 373 Oxygen icons).
AVIF_QUALITIES = (30, 100)
NEAR_LOSSLESS_BITS = (3, 2, 1)  # tried in this order where no lossy WebP keeps the floor
AVIF_OPTIONS: dict[str, object] = {"subsampling": "4:4:4", "speed": 8, "max_threads": 1}  # see _avif
PALETTE_ONLY_PIXELS = 32 * 32  # see _palette_only
# Lossless WebP m6 against m4 on images of at most 256 colours: 0-24.8% smaller (53 images at 40-120 px).
M6_GAIN = 0.3


def encode_icon(source: SourceIcon) -> EncodedIcon:
    """Decode, normalise, resize to each density and encode. Every density is served in the same
    formats, so each <source> can list them all: AVIF only where it passes the floor at every
    density and costs fewer bytes in total than WebP, WebP only where it beats the PNG fallback."""
    where = f"icon {source.spec.name!r} ({source.spec.url})"
    image = decode(source.data, where)
    settings = source.spec.settings
    sizes = plan_sizes(image.width, image.height, settings.display, settings.densities)
    images = [resize(image, (size.width, size.height)) for size in sizes]
    scorers = [Scorer.of(small) for small in images]
    encoded: list[dict[str, Variant | None]] = []
    lowest_over = False  # see _webp
    for small, score in zip(images, scorers, strict=True):
        found, lowest_over = _encode_size(small, source.data if small is image else b"", settings, score, lowest_over)
        encoded.append(found)  # the source (above) is used at its own size only
    if settings.avif and features.check("avif") and not settings.lossless_only:
        for found, avif in zip(encoded, _avif(images, scorers, settings.ssim_floor, _to_beat(encoded)), strict=True):
            found["avif"] = avif
    formats = _served_formats(encoded)
    renditions = tuple(
        Rendition(size.density, size.width, size.height, tuple(_present(found[f]) for f in formats))
        for size, found in zip(sizes, encoded, strict=True)
    )
    box = _display_box(image.width, image.height, settings.display)
    return EncodedIcon(source.spec.name, source.spec.slug, box[0], box[1], len(source.data), renditions)


@dataclass(frozen=True)
class Size:
    density: float
    width: int
    height: int


def plan_sizes(width: int, height: int, display: int, densities: tuple[float, ...]) -> list[Size]:
    """One size per density: the longer side `display x d`, capped at the source (never upscaled).
    A density capped to the size of a lower one adds nothing and is dropped; a capped one is
    labelled with the density it really has (a 64 px source at 40 px: 1x, then 1.6x)."""
    longer = max(width, height)
    if display == 0:
        return [Size(1.0, width, height)]
    sizes: list[Size] = []
    for density in sorted(densities):
        wanted = round(display * density)
        side = min(wanted, longer)
        if sizes and side <= max(sizes[-1].width, sizes[-1].height):
            continue
        label = density if side == wanted else max(round(side / display, 3), min(densities))
        sizes.append(Size(float(label), *_scaled(width, height, side)))
    return sizes


def _display_box(width: int, height: int, display: int) -> tuple[int, int]:
    return (width, height) if display == 0 else _scaled(width, height, display)


def _scaled(width: int, height: int, longer_side: int) -> tuple[int, int]:
    scale = longer_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _encode_size(
    image: Image.Image, source: bytes, settings: EncodeSettings, score: Scorer, lowest_over: bool
) -> tuple[dict[str, Variant | None], bool]:
    """PNG and WebP at one density; AVIF comes once every density has its WebP (see _avif). With
    _webp's `lowest_over` for the next density."""
    palette = None if settings.lossless_only else _palette(image, settings.ssim_floor, score)
    png = encode_png(image, source, settings.png_level, palette)
    webp, lowest_over = _webp(image, settings, score, palette, lowest_over)
    return {"avif": None, "webp": webp, "png": png}, lowest_over


def _present(variant: Variant | None) -> Variant:
    assert variant is not None  # _served_formats keeps only formats made at every density
    return variant


def _total(encoded: list[dict[str, Variant | None]], fmt: str) -> float:
    """Bytes of one format over every density; infinite where a density has none."""
    sizes = [found[fmt] for found in encoded]
    return sum(len(v.data) for v in sizes if v is not None) if all(sizes) else float("inf")


def _served_formats(encoded: list[dict[str, Variant | None]]) -> list[str]:
    formats = [f for f in ("avif", "webp") if _total(encoded, f) < _total(encoded, "png")]
    if "avif" in formats and "webp" in formats and _total(encoded, "avif") >= _total(encoded, "webp"):
        formats.remove("avif")
    return [*formats, "png"]


def _to_beat(encoded: list[dict[str, Variant | None]]) -> float:
    """What AVIF must cost less than, over every density, to be served (see _served_formats)."""
    return min(_total(encoded, "webp"), _total(encoded, "png"))


# ---- encoders -----------------------------------------------------------------------------------


def _webp(
    image: Image.Image,
    settings: EncodeSettings,
    score: Scorer,
    palette: tuple[Image.Image, float] | None,
    probe_first: bool,
) -> tuple[Variant, bool]:
    """The smallest WebP that keeps the floor: the palette (see _palette_only) or lossless; the
    lowest lossy quality that passes where it is smaller; near-lossless where neither the palette
    nor a lossy one won. And whether the lowest lossy quality cost as much as the palette or
    lossless file: then at the next density it is likely to again (27 of 41 times on
    bench/search_cost.py's corpus), and the search there starts with it (`probe_first`, see
    interpolate): replayed on that corpus, 12% less CPU in the lossy search of the median icon,
    1% less in all, and the same files.

    Lossy at method 4: m6 cost 50x the time (130 vs 2.5 ms per 64 px icon) for 2.5% fewer bytes.
    Lossless at method 4, and at 6 only for images of at most 256 colours where it can still win:
    there it saved up to 25% (M6_GAIN) for 12-30 ms. On the palette images it cost 80x the time of
    m4 (47 vs 0.6 ms per 64 px emoji) for 0.3% of bytes: not made."""
    palette_only = _palette_only(image, palette)
    lossless = None if palette_only else _save(image, "WEBP", lossless=True, quality=100, method=4)
    made = [] if lossless is None else [Variant("webp", lossless, "lossless", 1.0)]
    if palette is not None:
        made.append(
            Variant("webp", _save(palette[0], "WEBP", lossless=True, quality=100, method=4), "palette", palette[1])
        )
    best = min(made, key=lambda v: len(v.data))
    lowest_over = False
    if not settings.lossless_only:
        sizes: dict[int, int] = {}

        def lossy(quality: int) -> bytes:
            data = _webp_lossy_file(image, quality)
            sizes[quality] = len(data)
            return data

        budget = len(best.data)
        found = interpolate(lossy, score, WEBP_QUALITIES, settings.ssim_floor, budget, probe_first)
        if found is not None:
            best = Variant("webp", found[1], f"q{found[0]}", found[2])
        lowest_over = found is None and sizes.get(WEBP_QUALITIES[0], 0) >= budget
    if lossless is not None and len(lossless) * (1 - M6_GAIN) < len(best.data) and image.getcolors(256) is not None:
        data = _save(image, "WEBP", lossless=True, quality=100, method=6)
        best = Variant("webp", data, "lossless", 1.0) if len(data) < len(best.data) else best
    if not (best.detail.startswith("q") or palette_only or settings.lossless_only):
        best = _near_lossless_webp(image, settings.ssim_floor, best, score)
    return best, lowest_over


def _webp_lossy_file(image: Image.Image, quality: int) -> bytes:
    return _save(image, "WEBP", quality=quality, alpha_quality=100, method=4)


def _palette_only(image: Image.Image, palette: tuple[Image.Image, float] | None) -> bool:
    """Where the 256-colour palette keeps the floor, the full-colour lossless files are not made:
    on 208 such images (100 emoji and the 11 default icons at 40 and 64 px, 25 Oxygen icons at
    40-120 px) the full-colour PNG was 1.63x the palette PNG or more, lossless WebP 1.49x the
    palette WebP or more, and near-lossless WebP never smaller. Not on tiny images, where the
    palette itself (up to 1 KiB in a PNG) weighs as much as the pixels."""
    return palette is not None and image.width * image.height >= PALETTE_ONLY_PIXELS


def _avif(images: list[Image.Image], scorers: list[Scorer], floor: float, to_beat: float) -> list[Variant | None]:
    """AVIF at every density, or None at each where it cannot be served: it has to keep the floor
    at every density and cost fewer than `to_beat` bytes in total (_served_formats). What is left
    of that is each search's budget, so where AVIF cannot win its search ends early (see search)
    and the remaining densities are not tried: on the 100-emoji corpus AVIF won on 9 of 111 icons.

    4:4:4 keeps chroma at full resolution: 4:2:0 smears the thin coloured edges of icons.
    speed 8: 10 ms per 64 px icon against 24 ms at 6 and 110 ms at 4, for <1% more bytes.
    No lossless candidate: AVIF at quality 100 is larger than the source PNG."""
    found: list[Variant | None] = []
    for image, score in zip(images, scorers, strict=True):
        left = to_beat - sum(len(v.data) for v in found if v is not None)
        result = search(partial(_avif_file, image), score, AVIF_QUALITIES, floor, left)
        if result is None:
            return [None] * len(images)
        found.append(Variant("avif", result[1], f"q{result[0]}", result[2]))
    return found


def _avif_file(image: Image.Image, quality: int) -> bytes:
    return _save(image, "AVIF", quality=quality, **AVIF_OPTIONS)


def _palette(image: Image.Image, floor: float, score: Scorer) -> tuple[Image.Image, float] | None:
    """The image reduced to 256 colours (alpha kept, no dither) and its SSIM, where that keeps the
    floor. Resizing turns a palette source into thousands of colours; the palette brings the
    lossless formats back: the default icons' 1x PNGs went from 19,259 to 9,066 B."""
    if image.getcolors(256) is not None:
        return None  # already few colours: the lossless encoders find the palette themselves
    reduced = image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).convert("RGBA")
    similarity = score.image(reduced)
    return (reduced, similarity) if similarity >= floor else None


def _near_lossless_webp(image: Image.Image, floor: float, best: Variant, score: Scorer) -> Variant:
    """Where no lossy WebP wins. Lossy WebP is always 4:2:0, and on a fine coloured grain
    4:2:0 alone (no codec) scores ~0.963, so no quality can pass. Lossless WebP of the
    pixels after libwebp's near-lossless preprocessing (which Pillow does not expose) keeps full
    chroma: the first of NEAR_LOSSLESS_BITS that keeps the floor, where it is smaller. The Oxygen
    folders at 256 px: 71.8% of their PNG bytes -> 43.9% (bench/weak_spot.py)."""
    for bits in NEAR_LOSSLESS_BITS:
        data = _save(_near_lossless(image, bits), "WEBP", lossless=True, quality=100, method=4)
        similarity = score.data(data)
        if similarity >= floor:
            return Variant("webp", data, f"near-lossless{bits}", similarity) if len(data) < len(best.data) else best
    return best


def _near_lossless(image: Image.Image, bits: int) -> Image.Image:
    """libwebp's near-lossless preprocessing (src/enc/near_lossless_enc.c) on the colour: for
    limit = bits..1, a pixel whose 4 neighbours are not all within 2**limit of it in every channel
    is rounded to a multiple of 2**limit (ties to even, 255 kept); smooth pixels, where rounding
    would band a gradient, and the 1 px border are kept. Alpha stays exact."""
    import numpy as np

    px = np.asarray(image).astype(np.int16)
    if min(px.shape[:2]) < 3:
        return image
    for limit_bits in range(bits, 0, -1):
        limit = 1 << limit_bits
        centre = px[1:-1, 1:-1, :3]
        smooth = np.ones(centre.shape[:2], dtype=bool)
        for neighbour in (px[1:-1, :-2], px[1:-1, 2:], px[:-2, 1:-1], px[2:, 1:-1]):
            smooth &= (np.abs(centre - neighbour[..., :3]) < limit).all(axis=-1)
        biased = centre + ((limit - 1) >> 1) + ((centre >> limit_bits) & 1)
        px[1:-1, 1:-1, :3] = np.where(smooth[..., None], centre, np.minimum(biased & ~(limit - 1), 255))
    return Image.fromarray(px.astype(np.uint8))


def encode_png(
    image: Image.Image, source: bytes, level: int, palette: tuple[Image.Image, float] | None = None
) -> Variant:
    """The PNG fallback, the smallest of: oxipng on our pixels; the source itself when it is a PNG
    with the very same pixels (it may already be palette-optimised); and the 256-colour `palette`
    version of our pixels, where one kept the SSIM floor (alone where _palette_only)."""
    if palette is not None:
        reduced = Variant("png", _oxipng(_save(palette[0], "PNG", compress_level=0), level), "palette", palette[1])
        if _palette_only(image, palette):
            return reduced
    # Stored (level 0) into oxipng, which compresses anew: over 326 images at 40-120 px the same
    # bytes as level 9 but 8 (of 1.02 MB), for 30% less time.
    candidates = [Variant("png", _oxipng(_save(image, "PNG", compress_level=0), level), "oxipng", 1.0)]
    if source.startswith(b"\x89PNG"):
        try:
            theirs = _oxipng(source, level)
            if Image.open(io.BytesIO(theirs)).convert("RGBA").tobytes() == image.tobytes():
                candidates.append(Variant("png", theirs, "oxipng", 1.0))
        except (oxipng.PngError, OSError, ValueError):
            pass
    if palette is not None:
        candidates.append(reduced)
    return min(candidates, key=lambda v: len(v.data))


def _oxipng(png: bytes, level: int) -> bytes:
    return bytes(oxipng.optimize_from_memory(png, level=level, strip=oxipng.StripChunks.all()))


def favicon_ico(source: bytes) -> bytes:
    """/favicon.ico, for the clients that ask for it whatever the page links: 16 and 32 px only."""
    image = decode(source, "the site icon")
    return _save(resize(image, _scaled(*image.size, 32)), "ICO", sizes=[(16, 16), (32, 32)])


def favicon_png(source: bytes) -> bytes:
    """The 32 px icon every page links (<link rel=icon>), fingerprinted like any asset."""
    image = decode(source, "the site icon")
    return encode_png(resize(image, _scaled(*image.size, 32)), b"", 2).data


def touch_icon(source: bytes) -> bytes:
    """180 px apple-touch-icon: opaque (iOS fills transparency with black), the icon inset on white."""
    image = decode(source, "the site icon")
    inner = resize(image, _scaled(*image.size, 148))
    tile = Image.new("RGBA", (180, 180), (255, 255, 255, 255))
    tile.alpha_composite(inner, ((180 - inner.width) // 2, (180 - inner.height) // 2))
    return encode_png(tile.convert("RGB").convert("RGBA"), b"", 2).data


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()
