"""Lesion tone: the colour of a synthetic lesion relative to the retina it lies on (ours).

The paper gives a lesion the colours of its augmented source crop C_s (section 3.3). Several of
its operations (solarize, hue change, strong colour-temperature changes) make green, blue or
black lesions, and on average they change a crop by about 60 of 255 levels, while real lesions
differ from the retina around them by 5 to 50 levels, nearly equally in R and G, and come in two
tones: darker (haemorrhages, microaneurysms) or brighter (hard and soft exudates). Measured on
the 30 prepared IDRiD photographs of ``../shared/data/idrid-512`` at 256 px (lesion minus a ring
3 px around it, median per lesion, R/G/B): microaneurysms -9/-8/-7, haemorrhages -14/-14/-10
(10 % of them below -27/-28/-18), hard exudates +11/+10/+8 (10 % above +27/+27/+20), soft
exudates +24/+27/+21; see ``benchmarks/lesion_stats.py``.

The tone step sets the lesion's colour from the target crop C_t instead, before the self-mix:

    C_s' = mean_P(C_t) + k * (C_s - mean_P(C_s)) + k_t * (C_t - mean_P(C_t)) + delta * c

- ``mean_P`` is the mean colour over the lesion mask P (per channel): the lesion starts from the
  colour of the retina it lies on, so no camera or hue difference between the two photographs
  shows;
- ``k`` in [0, 1] keeps part of C_s's own texture (vessels, choroid, the augmentations' texture
  changes): the paper's "texture from another normal photograph";
- ``k_t`` in [0, 1] (off unless ``target_texture`` is set) keeps part of the retina's own
  texture under the lesion, as vessels show through a haemorrhage or beside an exudate; at
  k = 0, k_t = 1 the lesion is a pure tone shift of C_t;
- ``delta`` (levels, negative for a dark lesion) and the channel weights ``c`` give the lesion
  its tone.

Pure functions of their inputs and a ``numpy.random.Generator``, as in :mod:`anomalygen.augment`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from anomalygen.errors import ConfigError

TONE_MODES = ("source", "shift")


@dataclass(frozen=True)
class ToneConfig:
    """How a lesion's colour is set. Field comments say where each default comes from."""

    # "source": the paper's lesion, C_s as augmented; "shift": the tone step above (ours).
    mode: Literal["source", "shift"] = "shift"
    # Probability of a dark lesion (else bright). Ours: dark lesions (haemorrhages and
    # microaneurysms) hold 57 % of the lesion pixels of idrid-512 at 256 px (1.62 % of the FOV
    # against 1.24 % for exudates).
    p_dark: float = 0.55
    # |delta| in levels of 255, uniform in each range. Ours: the ranges of the measurements in
    # the module docstring, widened by half on both sides so that fainter and stronger lesions
    # than those of one data set are learnt too.
    dark: tuple[float, float] = (4.0, 45.0)
    bright: tuple[float, float] = (4.0, 60.0)
    # delta's weight per channel (R, G, B). Ours: real lesions change R and G about equally and
    # B by 0.7 to 0.8 of that (the prepared images' blue channel is dim, ~30 of 255).
    channels: tuple[float, float, float] = (1.0, 1.0, 0.75)
    # Each channel weight is multiplied per lesion by a factor uniform in [1 - j, 1 + j] (0:
    # off), so that lesions do not all shift along one colour direction.
    channel_jitter: float = 0.0
    # k, uniform in this range: how much of C_s's texture the lesion keeps (0: a flat tone).
    # Ours: at most half of it (real lesions are nearly uniform at 256 px).
    texture: tuple[float, float] = (0.0, 0.5)
    # k_t, uniform in this range: how much of C_t's own texture the lesion keeps (None: none,
    # the lesion replaces the retina under it, as in the paper's self-mix).
    target_texture: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("dark", "bright", "texture", "channels", "target_texture"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if self.mode not in TONE_MODES:
            raise ConfigError(
                f"tone.mode: must be one of {', '.join(TONE_MODES)}, got {self.mode!r}"
            )
        if not 0.0 <= self.p_dark <= 1.0:
            raise ConfigError(f"tone.p_dark: must lie in [0, 1], got {self.p_dark}")
        ranges = [("dark", 255.0), ("bright", 255.0), ("texture", 1.0)]
        if self.target_texture is not None:
            ranges.append(("target_texture", 1.0))
        for name, hi in ranges:
            lo_v, hi_v = getattr(self, name)
            if not 0.0 <= lo_v <= hi_v <= hi:
                raise ConfigError(
                    f"tone.{name}: need 0 <= low <= high <= {hi:g}, got {lo_v}, {hi_v}"
                )
        if not 0.0 <= self.channel_jitter < 1.0:
            raise ConfigError(f"tone.channel_jitter: must be in [0, 1), got {self.channel_jitter}")
        if len(self.channels) != 3 or not all(0.0 <= c <= 2.0 for c in self.channels):
            raise ConfigError(f"tone.channels: need three weights in [0, 2], got {self.channels}")


def draw_tone(rng: np.random.Generator, config: ToneConfig) -> dict:
    """The values of one lesion's tone: ``{"delta": levels, "texture": k}``, plus the jittered
    ``"channels"`` with ``config.channel_jitter`` and ``"target_texture"`` (k_t) with
    ``config.target_texture`` (three draws, plus three with the jitter, plus one with k_t)."""
    u = rng.random(3)
    dark = bool(u[0] < config.p_dark)
    lo, hi = config.dark if dark else config.bright
    magnitude = lo + (hi - lo) * float(u[1])
    t_lo, t_hi = config.texture
    drawn = {
        "delta": -magnitude if dark else magnitude,
        "texture": t_lo + (t_hi - t_lo) * float(u[2]),
    }
    if config.channel_jitter > 0:
        j = config.channel_jitter
        factors = 1.0 + j * (2.0 * rng.random(3) - 1.0)
        drawn["channels"] = [float(c * f) for c, f in zip(config.channels, factors, strict=True)]
    if config.target_texture is not None:
        lo, hi = config.target_texture
        drawn["target_texture"] = lo + (hi - lo) * float(rng.random())
    return drawn


def apply_tone(
    C_s: np.ndarray,
    C_t: np.ndarray,
    P: np.ndarray,
    delta: float,
    texture: float,
    channels: tuple[float, float, float] = (1.0, 1.0, 0.75),
    target_texture: float = 0.0,
) -> np.ndarray:
    """C_s' = mean_P(C_t) + texture * (C_s - mean_P(C_s)) + target_texture * (C_t - mean_P(C_t))
    + delta * channels, rounded to uint8.

    ``C_s``, ``C_t``: (h, w, 3) uint8 crops of equal shape; ``P``: (h, w) lesion mask, not empty
    (means are taken over it). Returns a new (h, w, 3) uint8 array; inputs are not modified.
    float64 means over few pixels and float32 per-pixel work, so the result is the same bits on
    every platform (sums of integers are exact in float64).
    """
    if C_s.shape != C_t.shape or C_s.shape[:2] != P.shape or C_s.ndim != 3:
        raise ValueError(f"tone: C_s {C_s.shape}, C_t {C_t.shape} and P {P.shape} must agree")
    inside = P != 0
    n = int(np.count_nonzero(inside))
    if n == 0:
        raise ValueError("tone: the lesion mask P is empty")
    mean_s = C_s[inside].sum(axis=0, dtype=np.float64) / n
    mean_t = C_t[inside].sum(axis=0, dtype=np.float64) / n
    shift = delta * np.asarray(channels, dtype=np.float64)
    offset = ((1.0 - target_texture) * mean_t - texture * mean_s + shift).astype(np.float32)
    out = C_s.astype(np.float32)
    out *= np.float32(texture)
    if target_texture:  # only then: the bits of lesions without k_t stay as they were
        out += np.float32(target_texture) * C_t.astype(np.float32)
    out += offset
    out += np.float32(0.5)
    np.clip(out, 0.0, 255.0, out=out)
    return out.astype(np.uint8)  # truncation after +0.5: round half up
