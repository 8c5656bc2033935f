"""Untrusted image bytes -> upright sRGB RGBA pixels, and those pixels resized: what every
encoder and every SSIM score starts from. Apart from the stage because it is the part that faces
hostile input (the hardening below) and the part whose maths decides how a resized icon looks;
neither knows anything of formats, qualities or the floor.

Decoding is hardened for untrusted bytes: a formats allow-list, a low pixel cap with the
decompression-bomb warning raised as an error, a frame cap, and a full load. The pixels are then
normalised to upright sRGB RGBA, which drops every piece of metadata.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from .errors import ImageError

if TYPE_CHECKING:
    import numpy as np

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "AVIF")
MAX_PIXELS = 4096 * 4096  # an icon larger than this is a mistake or an attack
MAX_FRAMES = 64
_SRGB = ImageCms.createProfile("sRGB")


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
