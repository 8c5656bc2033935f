"""Stage 2: SourceIcon -> EncodedIcon. Pure: Pillow in memory, no disk, no clock.

Decoding is hardened for untrusted bytes: a formats allow-list, a low pixel cap with the
decompression-bomb warning raised as an error, a frame cap, and a full load. The pixels are then
normalised to upright sRGB RGBA, which drops every piece of metadata.

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
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import oxipng
import PIL
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError, features

from .errors import ImageError
from .model import EncodedIcon, EncodeSettings, Rendition, SourceIcon, Variant

if TYPE_CHECKING:
    import numpy as np

# Bump when the bytes this module produces for the same input and settings change.
ENCODER_VERSION = "5"
LIBRARY_VERSIONS = f"Pillow {PIL.__version__}, libwebp {features.version('webp')}, libavif {features.version('avif')}"

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "AVIF")
MAX_PIXELS = 4096 * 4096  # an icon larger than this is a mistake or an attack
MAX_FRAMES = 64
WEBP_QUALITIES = (30, 98)  # the lossy search range
WEBP_FIRST = 85  # the first quality the WebP search tries (see interpolate)
# ln(1 - SSIM) per quality step, lossy WebP at 40-120 px (bench/search_cost.py's corpus): the
# gentle end, for a step from one trial, and the steepest seen from q85 to the lowest passing quality.
SLOPE_PRIOR = -0.012
SLOPE_STEEPEST = -0.1
QUICK_MARGIN = 1e-4  # see _trial_score
# Up to 100: on large icons with a fine coloured grain, 4:2:0 chroma caps every lossy WebP below
# the SSIM floor, and 4:4:4 AVIF first passes at q96 (bench/weak_spot.py: 25 of 373 Oxygen icons).
AVIF_QUALITIES = (30, 100)
NEAR_LOSSLESS_BITS = (3, 2, 1)  # tried in this order where no lossy WebP keeps the floor
AVIF_OPTIONS: dict[str, object] = {"subsampling": "4:4:4", "speed": 8, "max_threads": 1}  # see _avif
PALETTE_ONLY_PIXELS = 32 * 32  # see _palette_only
# Lossless WebP m6 against m4 on images of at most 256 colours: 0-24.8% smaller (53 images at 40-120 px).
M6_GAIN = 0.3
_SRGB = ImageCms.createProfile("sRGB")


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
    return Scorer.of(reference).image(candidate)


@dataclass(frozen=True)
class Scorer:
    """ssim() against one reference, with the reference's part computed once: its composites over
    black and over white and their window means and variances. A search scores up to ~15
    candidates against the same image; the two backgrounds and the three window sums a candidate
    needs go through numpy as one stacked array (on 40-64 px icons numpy's per-call overhead, not
    the arithmetic, is most of the cost: 3.2 -> 1.8 ms per 64 px candidate, measured in one run).

    quick() is the same in float32, for the trials of a search (see _trial_score)."""

    exact: _Reference
    fast: _Reference  # the same in float32
    window: int

    @classmethod
    def of(cls, reference: Image.Image) -> Scorer:
        import numpy as np

        a = _composites(reference)
        window = min(7, _odd_window(*a.shape[1:3]))
        mean, mean_sq = _box(np.stack([a, a * a]), window)
        exact = _Reference.of(a, mean, _sample(window) * (mean_sq - mean**2))
        return cls(exact, _Reference.of(*(x.astype(np.float32) for x in (a, mean, exact.var))), window)

    def image(self, candidate: Image.Image) -> float:
        return self._score(_composites(candidate), self.exact)

    def data(self, data: bytes) -> float:
        """The score of an encoded file, decoded."""
        return self.image(_open(data))

    def quick(self, data: bytes) -> float:
        """data() in float32: 1.6x faster at 40 px, 1.9x at 64, 4.9x at 120 (less memory to move),
        and within 2e-6 of it on every trial of bench/search_cost.py's corpus."""
        import numpy as np

        return self._score(_composites(_open(data), np.float32), self.fast)

    def _score(self, b: np.ndarray, ref: _Reference) -> float:
        import numpy as np

        w = self.window
        c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
        mu_b, var_b, cov_ab = _box(np.stack([b, b * b, ref.composites * b]), w)
        mu_b_sq = mu_b * mu_b
        var_b -= mu_b_sq
        var_b *= _sample(w)
        var_b += ref.var_c2  # var_a + var_b + c2
        cov_ab -= ref.mean * mu_b
        cov_ab *= 2 * _sample(w)
        cov_ab += c2  # 2 cov_ab + c2
        mu_b *= ref.twice_mean
        mu_b += c1  # 2 mu_a mu_b + c1
        mu_b *= cov_ab
        mu_b_sq += ref.mean_sq_c1  # mu_a^2 + mu_b^2 + c1
        mu_b_sq *= var_b
        mu_b /= mu_b_sq
        return float(mu_b.mean(axis=(1, 2, 3), dtype=np.float64).min())


@dataclass(frozen=True)
class _Reference:
    """The reference's side of SSIM, with the terms each candidate's score adds to."""

    composites: np.ndarray  # (2, H, W, 3): over black, over white; 0..255
    mean: np.ndarray  # window means of the composites, (2, H-w+1, W-w+1, 3)
    var: np.ndarray  # their sample variances
    twice_mean: np.ndarray
    mean_sq_c1: np.ndarray  # mean^2 + c1
    var_c2: np.ndarray  # var + c2

    @classmethod
    def of(cls, composites: np.ndarray, mean: np.ndarray, var: np.ndarray) -> _Reference:
        c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
        return cls(composites, mean, var, 2 * mean, mean * mean + c1, var + c2)


def _open(data: bytes) -> Image.Image:
    """An encoded file, opened: only the formats made here are tried (trying every plugin in turn
    cost ~40 us of a ~500 us score)."""
    return Image.open(io.BytesIO(data), formats=("WEBP", "AVIF", "PNG"))


def _composites(image: Image.Image, dtype: type[np.floating[Any]] | None = None) -> np.ndarray:
    """The image over black and over white, 0..255, in float64 (or `dtype`)."""
    import numpy as np  # here, not at the top: a run that encodes nothing need not pay ~45 ms for it

    rgba = np.asarray(image.convert("RGBA"), dtype=dtype or np.float64)
    over_black = rgba[..., :3] * (rgba[..., 3:] / 255)
    return np.stack([over_black, over_black + (255 - rgba[..., 3:])])


def _odd_window(height: int, width: int) -> int:
    """The largest odd window that fits (encoder version 3 took side | 1: on a side of 2, 4 or 6 px
    that is 1 px too large, and the SSIM came out NaN, so nothing lossy could ever pass)."""
    side = min(height, width)
    return side if side % 2 else side - 1


def _sample(window: int) -> float:
    """The sample-covariance correction n / (n - 1) over a window of n pixels."""
    n = window * window
    return n / max(n - 1, 1)


def _box(x: np.ndarray, w: int) -> np.ndarray:
    """Mean over every w x w window ('valid' positions) of axes -3 and -2: w shifted slices added
    along each axis. 2-3x faster than an integral image at 40-120 px (numpy's cumsum along a
    non-last axis is slow), and each sum adds only w values, so no precision is lost to it."""
    height, width = x.shape[-3] - w + 1, x.shape[-2] - w + 1
    rows = x[..., :, 0:width, :].copy()
    for i in range(1, w):
        rows += x[..., :, i : i + width, :]
    mean: np.ndarray = rows[..., 0:height, :, :].copy()
    for i in range(1, w):
        mean += rows[..., i : i + height, :, :]
    mean /= w * w
    return mean


# ---- encoders -----------------------------------------------------------------------------------


Trial = tuple[int, bytes, float, bool]  # quality, file, SSIM, whether that SSIM is exact (see _trial_score)


def search(
    encode: Callable[[int], bytes], score: Scorer, qualities: tuple[int, int], floor: float, budget: float
) -> tuple[int, bytes, float] | None:
    """The smallest file of a bisection for the lowest quality in `qualities` that keeps the floor
    (quality, bytes, SSIM), or None where none does or where it would cost `budget` bytes or more
    (the size of what it competes with). SSIM and bytes rise with quality (nearly: a few bytes or
    a few thousandths either way), so ~6 encodes find it, and fewer where it cannot win:
    - a failing quality already at the budget ends the search: every quality that could pass is
      larger still;
    - after the first passing file over the budget, the lowest quality left is tried next; if it
      too is over the budget, nothing in between can be under it.
    On 40 emoji at 40 and 64 px this took the WebP and AVIF searches from 644 encodes to 536.
    Starting from the quality the previous density needed saved nothing (530-542 encodes, however
    the walk from it was tuned): the larger density needs 0-10 less, too spread to narrow it.
    AVIF's search; WebP's is interpolated (see interpolate)."""
    low, high = qualities
    tried: list[Trial] = []
    bottom = None  # the lowest quality left, once tried
    while low <= high:
        quality = (low + high) // 2 if bottom is None or bottom != low else low
        data = encode(quality)
        if (over := len(data) >= budget) and quality == bottom:
            return None
        similarity, exact = _trial_score(score, data, floor)
        tried.append((quality, data, similarity, exact))
        passed = similarity >= floor
        if over and not passed:
            return None
        low, high = (low, quality - 1) if passed else (quality + 1, high)
        if passed and over and bottom is None:
            bottom = low
    return _smallest_passing(tried, score, floor, budget)


def interpolate(
    encode: Callable[[int], bytes],
    score: Scorer,
    qualities: tuple[int, int],
    floor: float,
    budget: float,
    probe_first: bool = False,
) -> tuple[int, bytes, float] | None:
    """search() by interpolation: the same kind of answer (the lowest passing quality found next to
    a failing one, the smallest passing file made; None where none passes under `budget`) for
    fewer encodes and fewer scores. ln(1 - SSIM) falls nearly linearly with quality, so the next
    quality tried is where the line through the closest passing and failing trials crosses the
    floor (regula falsi, Illinois variant: an end that stays put is pulled towards the floor, so the
    bracket closes from both sides); before both ends exist, the line has the gentle slope
    SLOPE_PRIOR. The first trial is WEBP_FIRST; where it fails so far below the floor that even
    the steepest rise measured (SLOPE_STEEPEST) cannot reach it by the top of the range, nothing
    above is tried. As in search(), a failing file at the budget ends it; and after the first passing
    file over the budget, the lowest quality left is encoded (not scored): at the budget too, nothing
    that could pass is under it, and the search ends (the commonest way a lossy WebP loses to the
    palette or lossless file on the corpus: 2 encodes and 1 score); under it, the file is dropped
    and the search goes on as it would have, so this probe only ever ends searches that cannot win.
    `probe_first`: that probe comes before anything else (1 encode where it ends the search).

    bench/search_cost.py's corpus (297 densities of 136 icons at 40-120 px, every quality scanned,
    replayed): 2.7 encodes per density and 2.4 scores instead of 3.5 of each, the same bytes
    (-0.03%). Tried and no cheaper: starting at 80 or 90 or at the previous density's answer,
    slopes 0.016-0.025, a step to the neighbour instead of Illinois; encoding the lowest quality
    before anything else (cheaper where the palette wins, dearer everywhere else). Where passing
    is not monotone in quality, the run of passing qualities it lands in can differ from the
    bisection's (either way: smooth_icon at 80 px, q86 here, q74 bisected), and so can the answer
    of a variant that continued from the probe above."""
    low, high = qualities
    target = _log_error(floor)
    fail: tuple[int, float] | None = None  # the highest failing quality tried, and its ln(1 - SSIM)
    passing: tuple[int, float] | None = None  # the lowest passing one
    tried: list[Trial] = []
    kept = 0  # trials in a row on the same side of the floor
    probed = probe_first  # whether the lowest quality left has been encoded to see its size
    if probe_first and len(encode(low)) >= budget:
        return None
    quality = min(max(WEBP_FIRST, low), high)
    while True:
        data = encode(quality)
        similarity, exact = _trial_score(score, data, floor)
        passed = similarity >= floor
        if not passed and (len(data) >= budget or (quality == high and passing is None)):
            return None
        kept = kept + 1 if tried and passed == (tried[-1][2] >= floor) else 0
        tried.append((quality, data, similarity, exact))
        if passed:
            passing = (quality, _log_error(similarity))
        else:
            fail = (quality, _log_error(similarity))
        if passing is None:
            assert fail is not None
            if len(tried) == 1 and fail[1] - target > -SLOPE_STEEPEST * (high - quality):
                return None
            guess = fail[0] + (target - fail[1]) / SLOPE_PRIOR
        elif fail is None:
            guess = passing[0] + (target - passing[1]) / SLOPE_PRIOR
        else:
            # Illinois: the end that has not moved for `kept` trials is pulled towards the floor
            pull = 2.0**kept
            fail_error = target + (fail[1] - target) / pull if passed else fail[1]
            pass_error = passing[1] if passed else target + (passing[1] - target) / pull
            guess = fail[0] + (target - fail_error) / (pass_error - fail_error) * (passing[0] - fail[0])
        lower = fail[0] + 1 if fail is not None else low
        upper = passing[0] - 1 if passing is not None else high
        if lower > upper:
            break
        if passed and len(data) >= budget and not probed:
            probed = True  # see the docstring: only the bytes of the lowest quality left matter
            if len(encode(lower)) >= budget:
                return None
        quality = min(max(math.ceil(guess), lower), upper)
    return _smallest_passing(tried, score, floor, budget)


def _smallest_passing(
    tried: list[Trial], score: Scorer, floor: float, budget: float
) -> tuple[int, bytes, float] | None:
    """The smallest trial that passes and costs less than `budget`, its SSIM made exact: what is
    served is checked in float64."""
    for quality, data, similarity, exact in sorted((t for t in tried if t[2] >= floor), key=lambda t: len(t[1])):
        if len(data) >= budget:
            break
        similarity = similarity if exact else score.data(data)
        if similarity >= floor:
            return quality, data, similarity
    return None


def _trial_score(score: Scorer, data: bytes, floor: float) -> tuple[float, bool]:
    """The SSIM of a trial and whether it is exact: Scorer.quick() (float32), and data() (float64)
    where the quick one is within QUICK_MARGIN of the floor, so that every pass or fail is the one
    data() would give (QUICK_MARGIN is over 50x the largest difference measured)."""
    similarity = score.quick(data)
    if abs(similarity - floor) > QUICK_MARGIN:
        return similarity, False
    return score.data(data), True


def _log_error(similarity: float) -> float:
    """ln(1 - SSIM), the scale on which the search interpolates (1 - SSIM floored at 1e-9: SSIM 1)."""
    return math.log(max(1.0 - similarity, 1e-9))


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
