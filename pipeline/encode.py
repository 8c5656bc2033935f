"""Stage 2: SourceIcon -> EncodedIcon. Pure: Pillow in memory, no disk, no clock.

Decoding is hardened for untrusted bytes: a formats allow-list, a low pixel cap with the
decompression-bomb warning raised as an error, a frame cap, and a full load. The pixels are then
normalised to upright sRGB RGBA, which drops every piece of metadata.

The encoding is chosen per icon: a fixed lossy quality breaks some icons (lossy WebP
subsamples chroma 4:2:0; SSIM fell to 0.75 at q80 on emoji) while lossless WebP saves only ~20% on
already-optimised PNGs. So each format tries lossless and a lossy quality search, and keeps the
smallest output whose SSIM against the source, composited over black and over white, stays at or
above `ssim_floor`. AVIF is kept only where it is smaller than the WebP.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import oxipng
import PIL
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError, features

from .errors import ImageError
from .model import EncodedIcon, EncodeSettings, Rendition, SourceIcon, Variant

if TYPE_CHECKING:
    import numpy as np

# Bump when the bytes this module produces for the same input and settings change.
ENCODER_VERSION = "3"
LIBRARY_VERSIONS = f"Pillow {PIL.__version__}, libwebp {features.version('webp')}, libavif {features.version('avif')}"

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "AVIF")
MAX_PIXELS = 4096 * 4096  # an icon larger than this is a mistake or an attack
MAX_FRAMES = 64
WEBP_QUALITIES = (30, 98)  # the lossy search range
# Up to 100: on large icons with a fine coloured grain, 4:2:0 chroma caps every lossy WebP below
# the SSIM floor, and 4:4:4 AVIF first passes at q96 (bench/weak_spot.py: 25 of 373 Oxygen icons).
AVIF_QUALITIES = (30, 100)
NEAR_LOSSLESS_BITS = (3, 2, 1)  # tried in this order where no lossy WebP keeps the floor
_SRGB = ImageCms.createProfile("sRGB")


def encode_icon(source: SourceIcon) -> EncodedIcon:
    """Decode, normalise, resize to each density and encode. Every density is served in the same
    formats, so each <source> can list them all: AVIF only where it passes the floor at every
    density and costs fewer bytes in total than WebP, WebP only where it beats the PNG fallback."""
    where = f"icon {source.spec.name!r} ({source.spec.url})"
    image = decode(source.data, where)
    settings = source.spec.settings
    sizes = plan_sizes(image.width, image.height, settings.display, settings.densities)
    encoded = [_encode_size(resize(image, (size.width, size.height)), source.data, settings) for size in sizes]
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


def _encode_size(image: Image.Image, source: bytes, settings: EncodeSettings) -> dict[str, Variant | None]:
    palette = None if settings.lossless_only else _palette(image, settings.ssim_floor)
    png = encode_png(image, source, settings.png_level, palette)
    webp = choose(image, settings, webp_candidates)
    if webp is not None and palette is not None:
        data = _save(palette[0], "WEBP", lossless=True, quality=100, method=6)
        if len(data) < len(webp.data):
            webp = Variant("webp", data, "palette", palette[1])
    if webp is not None and not webp.detail.startswith("q") and not settings.lossless_only:
        webp = _near_lossless_webp(image, settings.ssim_floor, webp)
    avif = None
    if settings.avif and features.check("avif") and not settings.lossless_only:
        avif = choose(image, settings, avif_candidates)
    return {"avif": avif, "webp": webp, "png": png}


def _present(variant: Variant | None) -> Variant:
    assert variant is not None  # _served_formats keeps only formats made at every density
    return variant


def _served_formats(encoded: list[dict[str, Variant | None]]) -> list[str]:
    def total(fmt: str) -> float:
        sizes = [found[fmt] for found in encoded]
        return sum(len(v.data) for v in sizes if v is not None) if all(sizes) else float("inf")

    formats = [f for f in ("avif", "webp") if total(f) < total("png")]
    if "avif" in formats and "webp" in formats and total("avif") >= total("webp"):
        formats.remove("avif")
    return [*formats, "png"]


# ---- resize -------------------------------------------------------------------------------------


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Lanczos in linear light over premultiplied alpha: averaging gamma-encoded values darkens
    edges and fine detail, and averaging colour without its alpha lets the (often black) colour
    of transparent pixels bleed into the edge as a dark fringe."""
    if image.size == size:
        return image
    import numpy as np

    rgba = np.asarray(image, dtype=np.float32) / 255.0
    alpha = rgba[..., 3]
    linear = _to_linear(rgba[..., :3]) * alpha[..., None]
    planes = [*np.moveaxis(linear, -1, 0), alpha]
    small = [
        np.asarray(Image.fromarray(np.ascontiguousarray(p)).resize(size, Image.Resampling.LANCZOS)) for p in planes
    ]
    out_alpha = np.clip(small[3], 0.0, 1.0)
    colour = np.stack(small[:3], axis=-1) / np.where(out_alpha > 0, out_alpha, 1.0)[..., None]
    colour = np.where(out_alpha[..., None] > 0, _to_srgb(np.clip(colour, 0.0, 1.0)), 0.0)
    pixels = np.dstack([colour, out_alpha[..., None]])
    return Image.fromarray(np.round(pixels * 255.0).astype(np.uint8))


def _to_linear(srgb: np.ndarray) -> np.ndarray:
    import numpy as np

    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def _to_srgb(linear: np.ndarray) -> np.ndarray:
    import numpy as np

    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * np.power(linear, 1 / 2.4) - 0.055)


# ---- decode -------------------------------------------------------------------------------------


def decode(data: bytes, where: str) -> Image.Image:
    """Untrusted bytes -> upright sRGB RGBA with no metadata, or ImageError saying why."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(data)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{where}: refused as a decompression bomb ({error})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{where}: not an image in an allowed format ({', '.join(ALLOWED_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as error:
        raise ImageError(f"{where}: cannot be decoded ({error}); is the file truncated?") from None


def _decode(data: bytes) -> Image.Image:
    saved_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            frames = getattr(image, "n_frames", 1)
            if frames > MAX_FRAMES:
                raise ImageError(f"has {frames} frames; at most {MAX_FRAMES}, and only the first is used")
            image.load()
            upright = ImageOps.exif_transpose(image)
            return _to_srgb_rgba(upright)
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit


def _to_srgb_rgba(image: Image.Image) -> Image.Image:
    icc = image.info.get("icc_profile")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = image.point(lambda v: v / 256).convert("L") if image.mode != "F" else image.convert("L")
    if icc:
        try:
            source_profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            mode = "RGBA" if "A" in image.getbands() else "RGB"
            converted = ImageCms.profileToProfile(
                image.convert(mode) if image.mode not in ("RGB", "RGBA", "CMYK") else image,
                source_profile,
                _SRGB,
                outputMode=mode,
            )
            image = converted if converted is not None else image
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile is dropped: the pixels are taken as sRGB
    rgba = image.convert("RGBA")
    return Image.frombytes("RGBA", rgba.size, rgba.tobytes())  # a fresh image: no info, no EXIF, no ICC


# ---- quality ------------------------------------------------------------------------------------


def ssim(reference: Image.Image, candidate: Image.Image) -> float:
    """Worst SSIM of the two RGBA images composited over black and over white, so alpha errors
    count. Mean SSIM over R, G, B with a 7x7 uniform window (the scikit-image default)."""
    import numpy as np  # here, not at the top: a run that encodes nothing need not pay ~45 ms for it

    ref = np.asarray(reference, dtype=np.float64) / 255.0
    out = np.asarray(candidate.convert("RGBA"), dtype=np.float64) / 255.0
    scores = []
    for background in (0.0, 1.0):
        a = ref[..., :3] * ref[..., 3:] + background * (1 - ref[..., 3:])
        b = out[..., :3] * out[..., 3:] + background * (1 - out[..., 3:])
        scores.append(_ssim(a * 255, b * 255))
    return min(scores)


def _ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    if min(a.shape[:2]) < window:
        window = min(a.shape[:2]) | 1 if min(a.shape[:2]) > 1 else 1
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = _box(a, window), _box(b, window)
    n = window * window
    cov = n / max(n - 1, 1)
    var_a = cov * (_box(a * a, window) - mu_a**2)
    var_b = cov * (_box(b * b, window) - mu_b**2)
    cov_ab = cov * (_box(a * b, window) - mu_a * mu_b)
    s = ((2 * mu_a * mu_b + c1) * (2 * cov_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def _box(x: np.ndarray, w: int) -> np.ndarray:
    """Mean over every w x w window ('valid' positions), via an integral image."""
    import numpy as np

    s = np.pad(x, ((1, 0), (1, 0), (0, 0))).cumsum(0).cumsum(1)
    mean: np.ndarray = (s[w:, w:] - s[:-w, w:] - s[w:, :-w] + s[:-w, :-w]) / (w * w)
    return mean


# ---- encoders -----------------------------------------------------------------------------------

Candidates = tuple[Callable[[], Variant] | None, Callable[[int], Variant], tuple[int, int]]


def choose(image: Image.Image, settings: EncodeSettings, make: Callable[[Image.Image], Candidates]) -> Variant | None:
    """The smallest of lossless and the lossy qualities tried that keep the SSIM floor, or None.

    SSIM rises with quality, so a bisection finds the lowest passing quality in ~6 encodes."""
    lossless, lossy, (low, high) = make(image)
    best = lossless() if lossless else None
    if settings.lossless_only and best:
        return best
    while low <= high:
        quality = (low + high) // 2
        candidate = lossy(quality)
        if candidate.ssim >= settings.ssim_floor:
            if best is None or len(candidate.data) < len(best.data):
                best = candidate
            high = quality - 1
        else:
            low = quality + 1
    return best


def webp_candidates(image: Image.Image) -> Candidates:
    # Method 4, not 6, except for lossless few-colour icons. Measured on the default icons:
    # lossy m6 costs 50x the time of m4 (130 ms vs 2.5 ms per 64 px icon) for 2.5% fewer bytes;
    # lossless m6 costs up to 300 ms and is no smaller on photo-like icons, but on icons of at most
    # 256 colours it is ~17% smaller (696 vs 842 bytes), where it also costs only ~40 ms.
    def lossless() -> Variant:
        data = _save(image, "WEBP", lossless=True, quality=100, method=4)
        if image.getcolors(256) is not None:
            data = min(data, _save(image, "WEBP", lossless=True, quality=100, method=6), key=len)
        return Variant("webp", data, "lossless", 1.0)

    def lossy(quality: int) -> Variant:
        data = _save(image, "WEBP", quality=quality, alpha_quality=100, method=4)
        return Variant("webp", data, f"q{quality}", ssim(image, Image.open(io.BytesIO(data))))

    return lossless, lossy, WEBP_QUALITIES


def avif_candidates(image: Image.Image) -> Candidates:
    # 4:4:4 keeps chroma at full resolution: 4:2:0 smears the thin coloured edges of icons.
    # speed 8: 10 ms per 64 px icon against 24 ms at 6 and 110 ms at 4, for <1% more bytes.
    # No lossless candidate: AVIF at quality 100 is larger than the source PNG.
    options = {"subsampling": "4:4:4", "speed": 8, "max_threads": 1}

    def lossy(quality: int) -> Variant:
        data = _save(image, "AVIF", quality=quality, **options)
        return Variant("avif", data, f"q{quality}", ssim(image, Image.open(io.BytesIO(data))))

    return None, lossy, AVIF_QUALITIES


def _palette(image: Image.Image, floor: float) -> tuple[Image.Image, float] | None:
    """The image reduced to 256 colours (alpha kept, no dither) and its SSIM, where that keeps the
    floor. Resizing turns a palette source into thousands of colours; the palette brings the
    lossless formats back: the default icons' 1x PNGs went from 19,259 to 9,066 B."""
    if image.getcolors(256) is not None:
        return None  # already few colours: the lossless encoders find the palette themselves
    reduced = image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).convert("RGBA")
    score = ssim(image, reduced)
    return (reduced, score) if score >= floor else None


def _near_lossless_webp(image: Image.Image, floor: float, best: Variant) -> Variant:
    """Where no lossy WebP keeps the floor. Lossy WebP is always 4:2:0, and on a fine coloured grain
    4:2:0 alone (no codec) scores ~0.963, so no quality can pass. Lossless WebP of the
    pixels after libwebp's near-lossless preprocessing (which Pillow does not expose) keeps full
    chroma: the first of NEAR_LOSSLESS_BITS that keeps the floor, where it is smaller. The Oxygen
    folders at 256 px: 71.8% of their PNG bytes -> 43.9% (bench/weak_spot.py)."""
    for bits in NEAR_LOSSLESS_BITS:
        data = _save(_near_lossless(image, bits), "WEBP", lossless=True, quality=100, method=4)
        score = ssim(image, Image.open(io.BytesIO(data)))
        if score >= floor:
            return Variant("webp", data, f"near-lossless{bits}", score) if len(data) < len(best.data) else best
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
    version of our pixels, where one kept the SSIM floor."""
    candidates = [Variant("png", _oxipng(_save(image, "PNG", compress_level=9), level), "oxipng", 1.0)]
    if source.startswith(b"\x89PNG"):
        try:
            theirs = _oxipng(source, level)
            if Image.open(io.BytesIO(theirs)).convert("RGBA").tobytes() == image.tobytes():
                candidates.append(Variant("png", theirs, "oxipng", 1.0))
        except (oxipng.PngError, OSError, ValueError):
            pass
    if palette is not None:
        candidates.append(Variant("png", _oxipng(_save(palette[0], "PNG"), level), "palette", palette[1]))
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
