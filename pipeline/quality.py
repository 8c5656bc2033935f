"""How close an encoded file is to its reference (SSIM over black and over white), and the searches
for the lowest quality that keeps the floor. Apart from the stage because both are format-blind:
a search is handed an `encode(quality) -> bytes` and a Scorer, and knows no codec; the stage
(encode.py) decides which formats, which ranges and what each file competes with.

Built to be cheap (bench/search_cost.py against encoder version 3): the reference side of the SSIM
is computed once per image (Scorer); trials are scored in float32, and in float64 only near the
floor and for the file served (_trial_score); a search stops as soon as it cannot beat the budget
it is given.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    import numpy as np

WEBP_FIRST = 85  # the first quality the WebP search tries (see interpolate)
# ln(1 - SSIM) per quality step, lossy WebP at 40-120 px (bench/search_cost.py's corpus): the
# gentle end, for a step from one trial, and the steepest seen from q85 to the lowest passing quality.
SLOPE_PRIOR = -0.012
SLOPE_STEEPEST = -0.1
QUICK_MARGIN = 1e-4  # see _trial_score


# ---- the score ----------------------------------------------------------------------------------


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


# ---- the searches -------------------------------------------------------------------------------


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
