"""Oracles: our own numerical code pinned against an independent implementation.

pipeline.encode.ssim, the quality floor every lossy file must keep, against scikit-image's
structural_similarity. Ours is documented as: both RGBA images composited over black and over
white, the mean SSIM over R, G and B with a 7x7 uniform window and the sample covariance, and the
worse of the two backgrounds. The expectation is built here from that description alone: the
composite in numpy, scikit-image with those settings spelled out (they are also its defaults),
the minimum of the two. Inputs: real icons from icons/ (decoded by pipeline.encode.decode, as the
build does) against lossy re-encodings and against noise, blur and alpha distortions, plus a
fully transparent image. Today the two agree to ~1e-12; the bound is 1e-9.

scikit-image comes with the `test` extra (pip install -e '.[test]'); without it these tests skip
locally and fail when CI is set.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageFilter, features

from pipeline.encode import decode, resize, ssim

from .conftest import REPO
from .tools import require

TOLERANCE = 1e-9
ICONS = [REPO / "icons" / f"{name}.png" for name in ("polychrome", "denny", "boopon", "master-tape", "ether-battery")]


@pytest.fixture(scope="module")
def structural_similarity() -> Callable[..., float]:
    try:
        from skimage.metrics import structural_similarity as found
    except ImportError:
        found = None
    require(found is not None, "scikit-image is not installed (pip install -e '.[test]')")
    return found


def composite(image: Image.Image, background: float) -> np.ndarray:
    """RGB in 0..255 (float) of an RGBA image laid over a uniform background (0 black, 1 white)."""
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float64) / 255.0
    colour, alpha = rgba[..., :3], rgba[..., 3:]
    return (colour * alpha + background * (1.0 - alpha)) * 255.0


def expected_ssim(structural_similarity: Callable[..., float], reference: Image.Image, candidate: Image.Image) -> float:
    return min(
        float(
            structural_similarity(
                composite(reference, background),
                composite(candidate, background),
                win_size=7,
                use_sample_covariance=True,
                gaussian_weights=False,
                data_range=255,
                channel_axis=-1,
            )
        )
        for background in (0.0, 1.0)
    )


# ---- the inputs ----------------------------------------------------------------------------------


def reencoded(image: Image.Image, fmt: str, **options: object) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return decoded.convert("RGBA")


def noisy(image: Image.Image, sigma: float, seed: int, alpha: bool = True) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64).copy()
    rng = np.random.default_rng(seed)
    channels = 4 if alpha else 3
    pixels[..., :channels] += rng.normal(0.0, sigma, pixels[..., :channels].shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGBA")


def with_alpha(image: Image.Image, scale: float) -> Image.Image:
    pixels = np.asarray(image).copy()
    pixels[..., 3] = np.rint(pixels[..., 3] * scale).astype(np.uint8)
    return Image.fromarray(pixels, "RGBA")


def distortions(icon: Image.Image) -> dict[str, Image.Image]:
    found = {
        "webp q30": reencoded(icon, "WEBP", quality=30, alpha_quality=100, method=4),
        "webp q80": reencoded(icon, "WEBP", quality=80, alpha_quality=100, method=4),
        "webp q50 lossy alpha": reencoded(icon, "WEBP", quality=50, alpha_quality=40, method=4),
        "jpeg q60 (alpha dropped)": reencoded(icon.convert("RGB"), "JPEG", quality=60),
        "noise sigma 8": noisy(icon, 8.0, seed=1),
        "noise sigma 30, colour only": noisy(icon, 30.0, seed=2, alpha=False),
        "blur radius 1": icon.filter(ImageFilter.GaussianBlur(1)),
        "blur radius 3": icon.filter(ImageFilter.GaussianBlur(3)),
        "half alpha": with_alpha(icon, 0.5),
        "made transparent": with_alpha(icon, 0.0),
        "identical": icon.copy(),
    }
    if features.check("avif"):
        found["avif q40 4:4:4"] = reencoded(icon, "AVIF", quality=40, subsampling="4:4:4", speed=8)
    return found


def cases() -> list[tuple[str, Image.Image, Image.Image]]:
    out = []
    for path in ICONS:
        icon = decode(path.read_bytes(), path.name)
        out += [(f"{path.stem}: {name}", icon, distorted) for name, distorted in distortions(icon).items()]
    # At a display size (what the encoder compares: the source resized), and not square.
    polychrome = decode(ICONS[0].read_bytes(), ICONS[0].name)
    small = resize(polychrome, (40, 40))
    out.append(("polychrome 40px: webp q40", small, reencoded(small, "WEBP", quality=40, alpha_quality=100)))
    wide = polychrome.crop((0, 8, 64, 56))
    out.append(("polychrome 64x48: blur radius 2", wide, wide.filter(ImageFilter.GaussianBlur(2))))
    # Fully transparent: the colour under alpha 0 does not count; alpha that appears does.
    rng = np.random.default_rng(3)
    hidden = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    hidden[..., 3] = 0
    clear = Image.fromarray(hidden, "RGBA")
    other_colours = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    other_colours[..., 3] = 0
    out.append(("transparent: other hidden colours", clear, Image.fromarray(other_colours, "RGBA")))
    out.append(("transparent: alpha noise", clear, noisy(clear, 40.0, seed=4)))
    return out


CASES = cases()


# ---- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "reference", "candidate"), CASES, ids=[c[0] for c in CASES])
def test_ssim_matches_scikit_image(
    structural_similarity, label: str, reference: Image.Image, candidate: Image.Image
) -> None:
    ours = ssim(reference, candidate)
    theirs = expected_ssim(structural_similarity, reference, candidate)
    assert abs(ours - theirs) <= TOLERANCE, f"{label}: ours {ours!r}, scikit-image {theirs!r}"


def test_the_cases_span_the_range_that_matters(structural_similarity, record_figure) -> None:
    """The oracle is only worth something where scores differ: the cases reach from identical (1)
    through the encoder's floor region (0.98) down to clearly broken images."""
    scores = {
        label: expected_ssim(structural_similarity, reference, candidate) for label, reference, candidate in CASES
    }
    worst = max(abs(ssim(reference, candidate) - scores[label]) for label, reference, candidate in CASES)
    assert max(scores.values()) == pytest.approx(1.0)
    assert min(scores.values()) < 0.5
    assert any(0.9 <= score < 0.995 for score in scores.values()), scores
    assert scores["transparent: other hidden colours"] == pytest.approx(1.0)
    assert scores["transparent: alpha noise"] < 0.9
    record_figure(
        "SSIM vs scikit-image",
        f"{len(CASES)} cases, worst |difference| {worst:.1e}, "
        f"scores {min(scores.values()):.3f}..{max(scores.values()):.3f}",
    )
