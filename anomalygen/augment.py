"""The pool of seven colour/texture operations that give a lesion its look (paper section 3.3).

The paper draws three distinct operations per lesion from: sharpening, solarizing, gamma
contrast, hue change, colour-temperature change, auto-contrast and random colour shift. It gives
no parameter ranges; ours come from imgaug's augmenters of the same name (which DRAEM and the
paper's code base use) unless a comment says otherwise.

Each operation is two small functions, drawing and applying kept apart as in albumentations'
functional layer::

    values = draw_op(rng, params)      # the op's random values, a dict of plain Python numbers
    new_img = op(img, **values)        # pure: the same image and values give the same bytes

``img`` is (H, W, 3) uint8 RGB and is never modified; ``params`` is the op's frozen dataclass of
ranges; ``values`` are JSON-compatible. A sample's metadata records them (``{"op": name,
**values}``), so that :func:`apply_ops` replays a lesion's look from its metadata alone
(:mod:`anomalygen.rebuild`). Everything is 8-bit OpenCV work (``cv2.LUT``, ``cv2.cvtColor``, an
exact ``cv2.filter2D``); there is no per-pixel Python. Transcendental functions (gamma's power)
are only evaluated on 256-entry tables in float64, so platforms agree on every output byte
except where a value lands within one ulp of a rounding tie.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from anomalygen.errors import ConfigError

_LEVELS = np.arange(256, dtype=np.float64)


def _check_range(name: str, rng_: tuple[float, float], lo: float, hi: float) -> None:
    a, b = rng_
    if not (lo <= a <= b <= hi):
        raise ConfigError(f"augment.{name}: need {lo} <= low <= high <= {hi}, got ({a}, {b})")


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    # What rng.uniform(low, high) computes, without its per-call overhead.
    return float(bounds[0] + (bounds[1] - bounds[0]) * rng.random())


def _lut3(tables: np.ndarray) -> np.ndarray:
    """(3, 256) values -> a (256, 1, 3) uint8 LUT for cv2.LUT (rounded half up, clipped)."""
    t = np.minimum(np.maximum(tables + 0.5, 0.0), 255.0)  # ufuncs: cheaper than np.clip
    return t.astype(np.uint8).T.reshape(256, 1, 3)  # truncation of t >= 0 is floor


# --- sharpening -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SharpenParams:
    # imgaug Sharpen: kernel (1 - alpha) * identity + alpha * [[-1,-1,-1],[-1,8+L,-1],[-1,-1,-1]].
    # Ranges from imgaug's documented example Sharpen(alpha=(0, 1.0), lightness=(0.75, 2.0))
    # (its defaults, alpha (0, 0.2) and lightness (0.8, 1.2), barely show on a small crop).
    alpha: tuple[float, float] = (0.0, 1.0)
    lightness: tuple[float, float] = (0.75, 2.0)

    def __post_init__(self) -> None:
        _check_range("sharpen.alpha", self.alpha, 0.0, 1.0)
        _check_range("sharpen.lightness", self.lightness, 0.0, 10.0)


def draw_sharpen(rng: np.random.Generator, params: SharpenParams) -> dict:
    """``{"alpha", "lightness"}``, each uniform in its range (alpha drawn first)."""
    alpha = _uniform(rng, params.alpha)
    return {"alpha": alpha, "lightness": _uniform(rng, params.lightness)}


def sharpen(img: np.ndarray, *, alpha: float, lightness: float) -> np.ndarray:
    """imgaug's Sharpen as one exact ``cv2.filter2D`` (borders reflected, OpenCV's default).

    The kernel has centre weight 1 + alpha * (7 + L) and -alpha on the 8 neighbours. Both are
    rounded to multiples of 1/256 (k and a below), so every product and partial sum is a
    multiple of 1/256 below 2**13 and float32 holds it exactly: the result, rounded half to even
    and saturated by OpenCV, does not depend on summation order or SIMD path.
    """
    a = round(alpha * 256)
    k = round((1.0 + alpha * (7.0 + lightness)) * 256)
    kernel = np.full((3, 3), -a / 256, dtype=np.float32)
    kernel[1, 1] = k / 256
    return cv2.filter2D(img, -1, kernel)


# --- solarizing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SolarizeParams:
    # imgaug Solarize(threshold=(32, 128)) as in DRAEM: values >= threshold become 255 - value.
    threshold: tuple[int, int] = (32, 128)

    def __post_init__(self) -> None:
        _check_range("solarize.threshold", self.threshold, 0, 256)


def draw_solarize(rng: np.random.Generator, params: SolarizeParams) -> dict:
    """``{"threshold"}``: an integer uniform in the inclusive range."""
    return {"threshold": int(rng.integers(params.threshold[0], params.threshold[1] + 1))}


def solarize(img: np.ndarray, *, threshold: int) -> np.ndarray:
    """Invert every value at or above ``threshold``."""
    lut = np.where(_LEVELS >= threshold, 255 - _LEVELS, _LEVELS).astype(np.uint8)
    return cv2.LUT(img, lut)


# --- gamma contrast -------------------------------------------------------------------------


@dataclass(frozen=True)
class GammaParams:
    # imgaug GammaContrast((0.5, 2.0), per_channel=True) as in DRAEM: out = 255 * (v/255)**gamma.
    gamma: tuple[float, float] = (0.5, 2.0)
    per_channel: bool = True

    def __post_init__(self) -> None:
        _check_range("gamma.gamma", self.gamma, 0.01, 100.0)


def draw_gamma(rng: np.random.Generator, params: GammaParams) -> dict:
    """``{"gamma": [r, g, b]}``: three draws with ``per_channel``, else one value three times."""
    if params.per_channel:
        return {"gamma": [_uniform(rng, params.gamma) for _ in range(3)]}
    return {"gamma": [_uniform(rng, params.gamma)] * 3}


def gamma(img: np.ndarray, *, gamma: Sequence[float]) -> np.ndarray:
    """Gamma contrast through a LUT, ``gamma`` one exponent per channel (R, G, B)."""
    if len(gamma) != 3:
        raise ValueError(f"gamma: need one exponent per channel (3), got {len(gamma)}")
    tables = 255.0 * np.power(_LEVELS[None, :] / 255.0, np.array(gamma, dtype=np.float64)[:, None])
    return cv2.LUT(img, _lut3(tables))


# --- hue change -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HueParams:
    # DRAEM's AddToHueAndSaturation((-50, 50)) in imgaug units (255 = a full turn) is about
    # +-70 degrees; drawn in OpenCV's 8-bit hue steps of 2 degrees.
    degrees: tuple[float, float] = (-70.0, 70.0)

    def __post_init__(self) -> None:
        _check_range("hue.degrees", self.degrees, -180.0, 180.0)


def draw_hue(rng: np.random.Generator, params: HueParams) -> dict:
    """``{"degrees"}``: an even integer (OpenCV's 8-bit hue has 2-degree steps) in the range."""
    steps = int(rng.integers(round(params.degrees[0] / 2), round(params.degrees[1] / 2) + 1))
    return {"degrees": 2 * steps}


def hue(img: np.ndarray, *, degrees: int) -> np.ndarray:
    """Rotate the hue in HSV by ``degrees``, an even integer (OpenCV's hue steps are 2 degrees)."""
    if degrees != int(degrees) or int(degrees) % 2:
        raise ValueError(f"hue: degrees must be an even integer, got {degrees!r}")
    steps = int(degrees) // 2
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)  # 8-bit hue in 0..179
    tables = np.stack([(_LEVELS + steps) % 180, _LEVELS, _LEVELS])
    hsv = cv2.LUT(hsv, _lut3(tables))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


# --- colour temperature ---------------------------------------------------------------------

# Mitchell Charity's blackbody colours (CIE 1964 10-degree observer, sRGB), every 500 K:
# the table behind imgaug's ChangeColorTemperature, normalised so the largest channel is 255.
_KELVIN = np.arange(1000, 10001, 500, dtype=np.float64)
_KELVIN_RGB = np.array(
    [
        (255, 56, 0),
        (255, 109, 0),
        (255, 137, 18),
        (255, 161, 72),
        (255, 180, 107),
        (255, 196, 137),
        (255, 209, 163),
        (255, 219, 186),
        (255, 228, 206),
        (255, 236, 224),
        (255, 243, 239),
        (255, 249, 253),
        (245, 243, 255),
        (235, 238, 255),
        (227, 233, 255),
        (220, 229, 255),
        (214, 225, 255),
        (208, 222, 255),
        (204, 219, 255),
    ],
    dtype=np.float64,
)


def kelvin_to_rgb(kelvin: float) -> tuple[float, float, float]:
    """Channel multipliers in [0, 1] for a colour temperature in 1000..10000 K (linear interp.)."""
    k = min(max(float(kelvin), 1000.0), 10000.0)
    return tuple(float(np.interp(k, _KELVIN, _KELVIN_RGB[:, c]) / 255.0) for c in range(3))


@dataclass(frozen=True)
class TemperatureParams:
    # imgaug ChangeColorTemperature as used in anomaly-synthesis pipelines, (1100, 10000) K
    # (imgaug's default is (1000, 11000); our table ends at 10000 K).
    kelvin: tuple[float, float] = (1100.0, 10000.0)

    def __post_init__(self) -> None:
        _check_range("temperature.kelvin", self.kelvin, 1000.0, 10000.0)


def draw_temperature(rng: np.random.Generator, params: TemperatureParams) -> dict:
    """``{"kelvin"}``, uniform in the range."""
    return {"kelvin": _uniform(rng, params.kelvin)}


def temperature(img: np.ndarray, *, kelvin: float) -> np.ndarray:
    """Multiply each channel by the blackbody colour of ``kelvin`` (LUT)."""
    mult = np.array(kelvin_to_rgb(kelvin))
    return cv2.LUT(img, _lut3(mult[:, None] * _LEVELS[None, :]))


# --- auto-contrast --------------------------------------------------------------------------


@dataclass(frozen=True)
class AutocontrastParams:
    # imgaug pillike.Autocontrast(cutoff=(0, 20)): percent of darkest and of lightest pixels
    # (per channel, as PIL's ImageOps.autocontrast) clipped before stretching to 0..255.
    cutoff: tuple[float, float] = (0.0, 20.0)

    def __post_init__(self) -> None:
        _check_range("autocontrast.cutoff", self.cutoff, 0.0, 49.0)


def draw_autocontrast(rng: np.random.Generator, params: AutocontrastParams) -> dict:
    """``{"cutoff"}``: percent, uniform in the range."""
    return {"cutoff": _uniform(rng, params.cutoff)}


def autocontrast(img: np.ndarray, *, cutoff: float) -> np.ndarray:
    """Stretch each channel's [low, high] (after cutting ``cutoff`` % at both ends) to [0, 255].

    Works on the image it is given: applied to a lesion crop, it stretches the crop's own
    range, which is stronger than stretching the whole photograph.
    """
    n = img.shape[0] * img.shape[1]
    cut = n * cutoff / 100.0
    hist = np.stack([cv2.calcHist([img], [c], None, [256], [0, 256]).ravel() for c in range(3)])
    cum = hist.cumsum(axis=1)
    low = (cum > cut).argmax(axis=1)  # first level with more than `cut` pixels at or below
    high = (cum >= n - cut).argmax(axis=1)  # first level with at most `cut` pixels above
    span = high - low
    flat = span <= 0  # a flat channel is left as it is
    scale = np.where(flat, 1.0, 255.0 / np.maximum(span, 1))
    tables = (_LEVELS[None, :] - np.where(flat, 0, low)[:, None]) * scale[:, None]
    return cv2.LUT(img, _lut3(tables))


# --- random colour shift --------------------------------------------------------------------


@dataclass(frozen=True)
class ColorShiftParams:
    # Per-channel additive offsets; range from DRAEM's MultiplyAndAddToBrightness add=(-30, 30),
    # drawn independently per channel.
    offset: tuple[int, int] = (-30, 30)

    def __post_init__(self) -> None:
        _check_range("color_shift.offset", self.offset, -255, 255)


def draw_color_shift(rng: np.random.Generator, params: ColorShiftParams) -> dict:
    """``{"offsets": [r, g, b]}``: integers, uniform in the inclusive range (one call)."""
    return {"offsets": [int(v) for v in rng.integers(params.offset[0], params.offset[1] + 1, 3)]}


def color_shift(img: np.ndarray, *, offsets: Sequence[int]) -> np.ndarray:
    """Add an integer offset to each channel (R, G, B; saturating)."""
    if len(offsets) != 3:
        raise ValueError(f"color_shift: need one offset per channel (3), got {len(offsets)}")
    tables = _LEVELS[None, :] + np.array(offsets, dtype=np.float64)[:, None]
    return cv2.LUT(img, _lut3(tables))


# --- the pool -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One operation of the pool: ``draw(rng, params) -> values``, ``apply(img, **values)``."""

    draw: Callable[..., dict]
    apply: Callable[..., np.ndarray]


OPS: dict[str, Op] = {
    "sharpen": Op(draw_sharpen, sharpen),
    "solarize": Op(draw_solarize, solarize),
    "gamma": Op(draw_gamma, gamma),
    "hue": Op(draw_hue, hue),
    "temperature": Op(draw_temperature, temperature),
    "autocontrast": Op(draw_autocontrast, autocontrast),
    "color_shift": Op(draw_color_shift, color_shift),
}


#: The pool without the operations that give lesions colours no fundus shows.
FUNDUS_OPS = ("sharpen", "gamma", "temperature", "autocontrast", "color_shift")


@dataclass(frozen=True)
class AugmentConfig:
    """Which operations a lesion gets and their ranges."""

    n_ops: int = 3  # paper: three distinct operations per lesion
    # The paper: the pool of seven. Ours: without solarize and hue, which make green, blue and
    # black lesions that no fundus shows (the paper's preset keeps all seven).
    ops: tuple[str, ...] = FUNDUS_OPS
    sharpen: SharpenParams = field(default_factory=SharpenParams)
    solarize: SolarizeParams = field(default_factory=SolarizeParams)
    gamma: GammaParams = field(default_factory=GammaParams)
    hue: HueParams = field(default_factory=HueParams)
    temperature: TemperatureParams = field(default_factory=TemperatureParams)
    autocontrast: AutocontrastParams = field(default_factory=AutocontrastParams)
    color_shift: ColorShiftParams = field(default_factory=ColorShiftParams)

    def __post_init__(self) -> None:
        unknown = [name for name in self.ops if name not in OPS]
        if unknown:
            raise ConfigError(
                f"augment.ops: unknown operation(s) {', '.join(map(str, unknown))}; "
                f"choose from {', '.join(OPS)}"
            )
        if len(set(self.ops)) != len(self.ops):
            raise ConfigError("augment.ops: operations must not repeat")
        if not 0 <= self.n_ops <= len(self.ops):
            raise ConfigError(
                f"augment.n_ops: must be between 0 and {len(self.ops)} (the pool), got {self.n_ops}"
            )


def draw_ops(rng: np.random.Generator, config: AugmentConfig = AugmentConfig()) -> list[dict]:
    """``config.n_ops`` distinct operations from ``config.ops`` in a random order, with their
    values: ``[{"op": name, **values}, ...]`` in the order they are applied."""
    picks = rng.permutation(len(config.ops))[: config.n_ops]  # distinct, in random order
    drawn = []
    for i in picks:
        name = config.ops[int(i)]
        drawn.append({"op": name, **OPS[name].draw(rng, getattr(config, name))})
    return drawn


def apply_ops(img: np.ndarray, ops: Sequence[dict]) -> np.ndarray:
    """Apply ``ops`` (``[{"op": name, **values}]``, as :func:`draw_ops` gives them and a
    sample's metadata records them) in order. Pure; returns a new array (``img`` is never
    modified). Raises ValueError for an unknown operation or values it does not take."""
    _check_rgb(img)
    out = img
    for entry in ops:
        values = dict(entry)
        name = values.pop("op", None)
        if name not in OPS:
            raise ValueError(f"augment: unknown operation {name!r}; choose from {', '.join(OPS)}")
        try:
            out = OPS[name].apply(out, **values)
        except TypeError as err:  # a missing or unknown value name
            raise ValueError(f"augment: {name} cannot take {sorted(values)}: {err}") from None
    return img.copy() if out is img else out  # no ops: still hand back a new array


def augment(
    img: np.ndarray, rng: np.random.Generator, config: AugmentConfig = AugmentConfig()
) -> tuple[np.ndarray, list[dict]]:
    """Draw (:func:`draw_ops`) and apply (:func:`apply_ops`) ``config.n_ops`` distinct
    operations from ``config.ops``, in a random order.

    Returns the new image (``img`` is not modified) and ``[{"op": name, **values}, ...]`` in the
    order applied.
    """
    _check_rgb(img)
    ops = draw_ops(rng, config)
    return apply_ops(img, ops), ops


def _check_rgb(img: np.ndarray) -> None:
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"augment: expected an (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
