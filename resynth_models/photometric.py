"""Photometric augmentation of whole training images: camera and illumination differences (ours).

Fundus cameras differ in white balance, exposure, gamma and sharpness, and even after CLAHE
(paper 4.1) photographs from another camera look different from the training normals. A
detector trained on one camera's photographs then finds "anomalies" in the colour of a whole
photograph from another. Changing the whole image the same way everywhere cannot create a
lesion (a lesion is a *local* change), so these transforms are safe for the synthetic samples
too: the lesion and its surroundings change together and the mask stays true.

One transform per training item, drawn from its own stream of :func:`augment_rng`'s seed words,
so the geometric stream (three draws) is unchanged and runs stay exactly resumable:

- per-channel gain in ``gain`` (white balance and exposure), applied with a common gamma in
  ``gamma`` (log-uniform) through one 256-entry LUT per channel: 0 stays 0, so the black border
  outside the field of view stays black;
- with probability ``p_blur`` a Gaussian blur of sigma in ``blur`` pixels (focus and resolution).

Pure functions of (image, rng, config), as in :mod:`resynth_models.data`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from anomalygen.errors import ConfigError

_LEVELS = np.arange(256, dtype=np.float64) / 255.0


@dataclass(frozen=True)
class PhotometricConfig:
    """Ranges of the whole-image photometric transform; ``enabled=False`` turns it off."""

    enabled: bool = True
    gain: tuple[float, float] = (0.85, 1.15)  # per channel; ours: +-15 % spans the white balance
    #                                            of the shared HRF, CHASE and IDRiD photographs
    gamma: tuple[float, float] = (0.8, 1.25)  # log-uniform; ours: mild exposure curves
    p_blur: float = 0.3  # ours: a third of the items, as cameras differ in sharpness
    blur: tuple[float, float] = (0.3, 1.0)  # Gaussian sigma, pixels of the training image

    def __post_init__(self) -> None:
        for name in ("gain", "gamma", "blur"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi <= 4.0:
                raise ConfigError(f"photometric.{name}: need 0 < low <= high <= 4, got {lo}, {hi}")
        if not 0.0 <= self.p_blur <= 1.0:
            raise ConfigError(f"photometric.p_blur: must lie in [0, 1], got {self.p_blur}")


#: Photometric augmentation off (validation, and the paper's setting).
NO_PHOTOMETRIC = PhotometricConfig(enabled=False)


@dataclass(frozen=True)
class Photometric:
    """One drawn transform (identity: gains 1, gamma 1, no blur)."""

    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    sigma: float = 0.0


def draw_photometric(rng: np.random.Generator, config: PhotometricConfig) -> Photometric:
    """Draw a transform; always draws six numbers, so the stream stays aligned."""
    u = rng.random(6)
    if not config.enabled:
        return Photometric()
    lo, hi = config.gain
    gains = tuple(float(lo + (hi - lo) * v) for v in u[:3])
    g_lo, g_hi = config.gamma
    gamma = math.exp(math.log(g_lo) + (math.log(g_hi) - math.log(g_lo)) * float(u[3]))
    b_lo, b_hi = config.blur
    sigma = float(b_lo + (b_hi - b_lo) * u[5]) if u[4] < config.p_blur else 0.0
    return Photometric(gains, gamma, sigma)  # type: ignore[arg-type]


def apply_photometric(image: np.ndarray, t: Photometric) -> np.ndarray:
    """``image`` (H, W, 3) uint8 RGB changed by ``t``: a new array (or ``image`` for the
    identity)."""
    out = image
    if t.gains != (1.0, 1.0, 1.0) or t.gamma != 1.0:
        curve = np.power(_LEVELS, t.gamma)
        tables = np.stack([curve * (255.0 * g) for g in t.gains])  # (3, 256)
        lut = np.clip(tables + 0.5, 0, 255).astype(np.uint8).T.reshape(256, 1, 3)
        out = cv2.LUT(np.ascontiguousarray(out), lut)
    if t.sigma > 0:
        out = cv2.GaussianBlur(out, (0, 0), t.sigma)
    return out
