"""2-D Perlin noise P_n and the thresholded lesion mask P (paper section 3.3).

The paper makes the lesion shape by thresholding Perlin noise of the crop's size; it gives no
parameters, so the defaults follow DRAEM (Zavrtanik et al., 2021): per-axis periods 2**0..2**5
across the noise, threshold 0.5, the noise rotated by a random angle.

Reproducibility: every random choice comes from the caller's ``numpy.random.Generator``
(gradient directions, scales, orientation), and the noise itself uses only +, -, *, /, floor and
table look-ups (float64 coordinates, float32 values), which IEEE 754 rounds identically
everywhere. Gradient and rotation directions come from fixed tables of literal constants, never
from libm ``sin``/``cos`` of random angles, so the noise is bit-identical across platforms for the
same draws (turned noise: see :func:`perlin_noise`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from anomalygen.errors import ConfigError

# cos and sin of 22.5 and 45 degrees, written out so that no libm call is involved.
_C22 = 0.9238795325112867
_S22 = 0.3826834323650898
_R45 = 0.7071067811865476
_SQRT2 = 1.4142135623730951

# Unit vectors every 22.5 degrees (k = 0..15): the lattice gradients (Perlin's "improved noise"
# also picks gradients from a small fixed set; 16 directions look isotropic at lesion scale).
_FIRST_QUADRANT = ((1.0, 0.0), (_C22, _S22), (_R45, _R45), (_S22, _C22))
_DIRECTIONS = np.array(
    [
        (c * a - s * b, s * a + c * b)
        for c, s in ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))  # exact quarter turns
        for a, b in _FIRST_QUADRANT
    ],
    dtype=np.float64,
)
GRADIENTS = _DIRECTIONS  # (16, 2) as (dy, dx); index k is the direction k * 22.5 degrees
ROTATIONS = _DIRECTIONS[:8]  # (cos, sin) of k * 22.5 degrees, k = 0..7: half a turn
# float32 gradient components, pre-scaled by sqrt(2) (DRAEM's output scale; the noise is linear
# in the gradients, so scaling them scales P_n).
_GY = (GRADIENTS[:, 0] * _SQRT2).astype(np.float32)
_GX = (GRADIENTS[:, 1] * _SQRT2).astype(np.float32)


_CENTRES = np.arange(4096, dtype=np.float64) + 0.5


def _centres(n: int) -> np.ndarray:
    """Pixel centres 0.5, 1.5, ..., n - 0.5 (a view of a shared table where it is long enough)."""
    return _CENTRES[:n] if n <= len(_CENTRES) else np.arange(n, dtype=np.float64) + 0.5


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic fade 6t^5 - 15t^4 + 10t^3 (zero first and second derivative at 0, 1)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _grid_noise(
    h: int, w: int, period_y: float, period_x: float, rng: np.random.Generator
) -> np.ndarray:
    """Axis-aligned Perlin noise on an (h, w) pixel grid, pixel centres at lattice coordinate
    ((y + 0.5) / period_y, (x + 0.5) / period_x); float32, scaled by sqrt(2).

    Separable evaluation: with fade weights A_0 = 1 - t_u, A_1 = t_u along y and B_0, B_1 along x,

        P_n = sum_a A_a * [ (f_u - a) * My[i_u + a] + Mx[i_u + a] ],
        My[r, x] = sum_b B_b * g_y[r, i_v + b],  Mx[r, x] = sum_b B_b * (f_v - b) * g_x[r, i_v + b],

    which is the usual four-corner formula regrouped: My and Mx are (lattice rows, w), so only
    a handful of operations touch all h * w pixels.
    """
    # Both axes in one pass: cell index i, offset f in [0, 1) and fade weight t per pixel.
    coord = np.empty(h + w)
    np.divide(_centres(h), period_y, out=coord[:h])
    np.divide(_centres(w), period_x, out=coord[h:])
    cell = coord.astype(np.intp)  # coordinates are positive: truncation is floor
    f = (coord - cell).astype(np.float32)
    t = _fade(f)
    iu, iv, fu, fv, tu, tv = cell[:h], cell[h:], f[:h], f[h:], t[:h], t[h:]

    lattice = (rng.random((int(iu[-1]) + 2, int(iv[-1]) + 2)) * len(GRADIENTS)).astype(np.intp)
    corner = lattice[:, np.concatenate([iv, iv + 1])]  # (rows, 2w): at i_v, then at i_v + 1
    gy, gx = _GY[corner], _GX[corner]
    gx[:, :w] *= fv
    gx[:, w:] *= fv - 1.0
    M = np.empty((len(lattice), 2 * w), dtype=np.float32)  # [My | Mx]
    np.subtract(gy[:, w:], gy[:, :w], out=M[:, :w])
    np.subtract(gx[:, w:], gx[:, :w], out=M[:, w:])
    M[:, :w] *= tv
    M[:, w:] *= tv
    M[:, :w] += gy[:, :w]
    M[:, w:] += gx[:, :w]

    both = M[np.concatenate([iu, iu + 1])]  # (2h, 2w): rows i_u (a = 0), then i_u + 1 (a = 1)
    n = both[:, :w] * np.concatenate([fu, fu - 1.0])[:, None]
    n += both[:, w:]
    n0, n1 = n[:h], n[h:]
    n1 -= n0
    n1 *= tu[:, None]
    n0 += n1
    return n0


def perlin_noise(
    shape: tuple[int, int],
    res: tuple[int, int],
    rng: np.random.Generator,
    *,
    rotation: int = 0,
) -> np.ndarray:
    """Perlin noise P_n of ``shape`` (H, W) with ``res`` = (periods along y, periods along x).

    Any shape works (no divisibility needed): the centre of pixel (y, x) sits at lattice
    coordinate ((y + 0.5) * res_y / H, (x + 0.5) * res_x / W), so the pattern spans exactly
    res periods per axis (DRAEM's ``rand_perlin_2d_np`` samples pixel corners and needs H to be
    a multiple of res_y). Gradients come from :data:`GRADIENTS`, one uniform index per lattice
    point, drawn as floor(16 * u) from one ``rng.random`` call (cheaper than
    ``rng.integers``; exact: u has 53 random bits and 16 is a power of two).

    ``rotation`` k in 0..7 turns the pattern by k * 22.5 degrees about the centre: the
    axis-aligned pattern (same periods in pixels) is made on the turned crop's bounding box and
    each pixel takes the value at its turned position, rounded to the nearest canvas pixel by
    ``cv2.warpAffine(INTER_NEAREST)`` (half a pixel of error at most, invisible with periods of
    8 px or more; the warp only selects values, so platforms could differ at most where a
    turned pixel centre falls on a rounding tie).

    Returns float32, scaled by sqrt(2) as DRAEM does, so values lie in about [-1, 1].
    """
    h, w = int(shape[0]), int(shape[1])
    ry, rx = int(res[0]), int(res[1])
    if h < 1 or w < 1:
        raise ValueError(f"perlin_noise: shape must be positive, got {shape}")
    if ry < 1 or rx < 1:
        raise ValueError(f"perlin_noise: res must be positive, got {res}")
    if not 0 <= rotation < len(ROTATIONS):
        raise ValueError(f"perlin_noise: rotation must be in 0..{len(ROTATIONS) - 1}")
    period_y, period_x = h / ry, w / rx
    if rotation == 0:
        noise = _grid_noise(h, w, period_y, period_x, rng)
    else:
        c, s = ROTATIONS[rotation]
        ac, as_ = abs(c), abs(s)
        big_h = int(np.ceil(ac * h + as_ * w)) + 1
        big_w = int(np.ceil(as_ * h + ac * w)) + 1
        grid = _grid_noise(big_h, big_w, period_y, period_x, rng)
        # Output pixel (y, x) takes the canvas pixel nearest to its turned position; the map
        # from output to canvas coordinates (x first, as OpenCV wants it) turns about both
        # centres. A nearest-neighbour warp only selects values, it computes none.
        cy, cx, gy, gx = (h - 1) / 2.0, (w - 1) / 2.0, (big_h - 1) / 2.0, (big_w - 1) / 2.0
        to_canvas = np.array([[c, s, gx - c * cx - s * cy], [-s, c, gy + s * cx - c * cy]])
        noise = cv2.warpAffine(
            grid,
            to_canvas,
            (w, h),
            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
    return noise


@dataclass(frozen=True)
class PerlinConfig:
    """How lesion masks P are drawn from Perlin noise."""

    # Periods across each axis are 2**k with k drawn uniformly per axis from this inclusive range;
    # DRAEM: 2 ** randint(0, 6), i.e. 1..32 periods.
    scale_exp: tuple[int, int] = (0, 5)
    # P = P_n > threshold; DRAEM: 0.5.
    threshold: float = 0.5
    # Ours: the shortest period, in pixels. DRAEM's finest noise has 8 px periods (256 px / 32);
    # our noise covers one lesion crop, often 10-40 px, where 32 periods would be sub-pixel
    # speckle. Periods per axis are therefore capped at floor(side / min_period), so tiny crops
    # get one smooth blob and large crops keep DRAEM's full range of scales.
    min_period: float = 8.0
    # DRAEM rotates its noise by a random angle in (-90, 90) degrees; we turn anisotropic noise
    # by one of 8 orientations 22.5 degrees apart (the same half turn, from a fixed table).
    rotate: bool = True
    # Ours: thresholding a small crop's noise is often empty (a single lattice cell rarely
    # exceeds 0.5). Noise is redrawn up to this many times; if every draw is empty the last
    # noise is thresholded at half its own maximum (see perlin_mask), so P is never empty.
    max_draws: int = 4
    # Ours: the share of each half-side over which P_n fades to zero towards the crop border
    # (see :func:`edge_window`), so that thresholding never cuts a blob along the crop's straight
    # edge: real lesions have no straight edges, and a network learns such edges instead of the
    # lesion (measured in benchmarks/bench_detect.py). 0 is DRAEM's and the paper's noise, cut
    # by the crop; 1 fades from the centre. Ours: 0.5.
    taper: float = 0.5
    # Ours: the most the two axes' exponents k may differ (None: DRAEM's and the paper's,
    # drawn independently per axis). Independent exponents make streaks up to 32 times longer
    # than wide, which look like vessel segments, not lesions; 1 keeps blobs round or oval (the
    # crop's aspect still elongates them up to 2x): 90th-percentile blob elongation 7.4 -> 3.8.
    # Real-lesion AUROC / AUPR on idrid-512 (benchmarks/bench_detect.py, small preset with
    # stage-2 photometric augmentation): 0.807 / 0.268 at None, 0.824 / 0.264 at 1.
    max_anisotropy: int | None = 1

    def __post_init__(self) -> None:
        if self.max_anisotropy is not None and not (
            isinstance(self.max_anisotropy, int) and self.max_anisotropy >= 0
        ):
            raise ConfigError(
                f"perlin.max_anisotropy: must be an integer >= 0 or None, got {self.max_anisotropy}"
            )
        lo, hi = self.scale_exp
        if not (0 <= lo <= hi <= 10):
            raise ConfigError(f"perlin.scale_exp: need 0 <= low <= high <= 10, got {lo}, {hi}")
        if not -1.0 < self.threshold < 1.0:
            raise ConfigError(f"perlin.threshold: must lie in (-1, 1), got {self.threshold}")
        if not self.min_period >= 1.0:
            raise ConfigError(f"perlin.min_period: must be >= 1 pixel, got {self.min_period}")
        if not isinstance(self.max_draws, int) or self.max_draws < 1:
            raise ConfigError(f"perlin.max_draws: must be >= 1, got {self.max_draws}")
        if not 0.0 <= self.taper <= 1.0:
            raise ConfigError(f"perlin.taper: must lie in [0, 1], got {self.taper}")
        if self.taper > 0 and self.threshold < 0:
            raise ConfigError("perlin.taper: needs threshold >= 0 (the faded border is 0)")


# If every draw is empty, the last noise is thresholded at this fraction of its maximum.
_FALLBACK_RATIO = 0.5


def _exponent(rng: np.random.Generator, config: PerlinConfig) -> int:
    lo, hi = config.scale_exp
    return lo + int(rng.random() * (hi - lo + 1))  # uniform lo..hi (see _grid_noise's draws)


def _periods(side: int, k: int, config: PerlinConfig) -> int:
    """Periods across an axis of ``side`` pixels: 2**k, capped by ``config.min_period``."""
    return min(2**k, max(1, int(side // config.min_period)))


def _axis_exponents(rng: np.random.Generator, config: PerlinConfig) -> tuple[int, int]:
    """k per axis (y, x); with ``config.max_anisotropy`` the x exponent is clipped to within
    it of the y exponent (the same two draws either way)."""
    ky, kx = _exponent(rng, config), _exponent(rng, config)
    if config.max_anisotropy is not None:
        kx = min(max(kx, ky - config.max_anisotropy), ky + config.max_anisotropy)
    return ky, kx


def _axis_window(n: int, taper: float) -> np.ndarray:
    """Weights along one axis of n pixels: 0 on both end pixels, rising with Perlin's fade over
    ``taper`` of the half-side, 1 in between (float32)."""
    d = np.minimum(np.arange(n), np.arange(n)[::-1]).astype(np.float32)  # pixels to the edge
    ramp = np.float32(max(taper * (n - 1) / 2.0, 1.0))
    return _fade(np.minimum(d / ramp, np.float32(1.0)))


def edge_window(shape: tuple[int, int], taper: float) -> np.ndarray:
    """(H, W) float32 weights for P_n: the product of one :func:`_axis_window` per axis. Zero on
    the crop's border, so P = P_n * window > threshold (>= 0) never touches the border of a crop
    at least 3 px wide. Only +, *, / and min: the same bits everywhere."""
    return _axis_window(int(shape[0]), taper)[:, None] * _axis_window(int(shape[1]), taper)[None, :]


def perlin_mask(
    shape: tuple[int, int], rng: np.random.Generator, config: PerlinConfig = PerlinConfig()
) -> np.ndarray:
    """The lesion mask P: (H, W) uint8 in {0, 1}, never empty.

    Each draw picks periods per axis (2**k, capped by ``config.min_period``), an orientation
    (for anisotropic periods, when ``config.rotate``) and fresh gradients, and keeps
    P_n > threshold. After ``config.max_draws`` empty draws the last
    P_n is thresholded at half its maximum (or at its maximum if that is not positive), which
    always keeps at least the peak pixel: a deterministic fallback, no extra randomness.

    With ``config.taper`` > 0, P_n is multiplied by :func:`edge_window` first, so no blob is cut
    by the crop border (crops narrower than 3 px along an axis necessarily touch it).
    """
    h, w = int(shape[0]), int(shape[1])
    window = edge_window((h, w), config.taper) if config.taper > 0 else None
    noise = None
    for _ in range(config.max_draws):
        ky, kx = _axis_exponents(rng, config)
        res = (_periods(h, ky, config), _periods(w, kx, config))
        rotation = 0
        # With equal periods in pixels the pattern is isotropic (up to lattice artefacts), so
        # only anisotropic noise is turned.
        if config.rotate and res[0] * w != res[1] * h:
            rotation = int(rng.random() * len(ROTATIONS))
        noise = perlin_noise((h, w), res, rng, rotation=rotation)
        if window is not None:
            noise *= window
        mask = noise > config.threshold
        if mask.any():
            return mask.view(np.uint8)
    assert noise is not None
    if window is not None and min(h, w) >= 3:
        noise[window == 0] = -np.inf  # the fallback, too, stays off the border
    peak = float(noise.max())
    cut = peak * _FALLBACK_RATIO if peak > 0 else peak
    return (noise >= cut).view(np.uint8)
