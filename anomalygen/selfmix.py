"""Self-mix paste (paper section 3.3): the distance weights W (Eq. 3) and the fusion (Eq. 4).

A lesion's mask P is turned into a smooth opacity: D is the Euclidean distance from each pixel of
P to the nearest background pixel, W rescales D to [alpha, 1] (Eq. 3), and the augmented source
crop C_s is mixed into the target crop C_t with opacity P * W (Eq. 4), so the lesion fades out
towards its edge instead of showing a hard seam. ``paste`` is the hard paste of the Table 4
ablation (W = 1).
"""

from __future__ import annotations

import cv2
import numpy as np


def distance_map(P: np.ndarray) -> np.ndarray:
    """D: exact Euclidean distance (pixels, float32) from each pixel of P to the background.

    The crop border counts as background (P is padded with one zero pixel before the transform),
    so a mask that fills the whole crop still fades towards the crop's edge. Pixels outside P
    have D = 0. ``cv2.distanceTransform`` with ``DIST_MASK_PRECISE`` is an exact EDT (it agrees
    with ``scipy.ndimage.distance_transform_edt`` to float32 rounding) and is several times
    faster; its output is snapped to sqrt(integer) so that D is the same bits in every process.
    """
    if P.ndim != 2:
        raise ValueError(f"distance_map: P must be 2-D, got shape {P.shape}")
    src = cv2.copyMakeBorder((P != 0).view(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    D = cv2.distanceTransform(src, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    # OpenCV's result is not reproducible to the last bit: the same input has given 6.0827622
    # and 6.0827627 in one process (the first call differs). A sample must be byte-identical
    # whatever process renders it, so D is snapped to the exact value it approximates: D^2 is
    # an integer (a sum of two squares), recovered by rounding while D < 2048 px, and its
    # square root is correctly rounded by IEEE arithmetic.
    D2 = np.rint(np.square(D, dtype=np.float64))
    return np.sqrt(D2).astype(np.float32)


def distance_weights(P: np.ndarray, alpha: float = 0.7) -> np.ndarray:
    """W = (1 - alpha) * (D - min D) / (max D - min D) + alpha (Eq. 3); float32 in [alpha, 1].

    D is :func:`distance_map`; min and max are taken over the padded map, so min D = 0 (the
    border is background) and W = alpha + (1 - alpha) * D / max D: alpha off the mask, 1 at the
    pixels deepest inside it. Degenerate cases: a single pixel, or any mask one pixel thin, has
    D = 1 on P, hence W = 1 there; an empty P has constant D = 0, and then W = 1 everywhere
    (Eq. 3 would divide by zero; with P = 0, Eq. 4 leaves C_t unchanged whatever W is).
    ``alpha`` is the paper's scaling factor, 0.7 there.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distance_weights: alpha must lie in [0, 1], got {alpha}")
    D = distance_map(P)
    d_max = float(D.max()) if D.size else 0.0
    if d_max <= 0.0:
        return np.ones(P.shape, dtype=np.float32)
    # Written as 1 - (1 - alpha) * (1 - D / max D) so that the deepest pixels get exactly 1
    # (D / max D is exactly 1 there) and Eq. 4 gives exactly C_s; clamped below at alpha.
    W = np.float32(1.0) - D / np.float32(d_max)
    W *= np.float32(1.0 - alpha)
    np.subtract(np.float32(1.0), W, out=W)
    np.maximum(W, np.float32(alpha), out=W)
    return W


def edge_fade(P: np.ndarray, width: float) -> np.ndarray:
    """E: a soft edge for the lesion (ours), float32 in [0, 1], 0 outside P.

    E = fade(min(1, (D - 0.5) / w)) with D = :func:`distance_map` (1 on P's outermost pixels),
    w = min(``width``, max D) pixels and Perlin's fade 6t^5 - 15t^4 + 10t^3: the lesion's
    opacity P * W * E rises from about fade(0.5 / w) on its outermost pixels to full w pixels
    inside, as the edge of a real lesion photographed at higher resolution and shrunk does
    (hard edges are what a network trained on them looks for; see benchmarks/bench_detect.py).
    Capping w at max D keeps a one- or two-pixel lesion at least half visible.
    """
    if width <= 0:
        raise ValueError(f"edge_fade: width must be positive, got {width}")
    D = distance_map(P)
    d_max = float(D.max()) if D.size else 0.0
    if d_max <= 0.0:
        return np.zeros(P.shape, dtype=np.float32)
    w = np.float32(min(float(width), d_max))
    t = np.clip((D - np.float32(0.5)) / w, np.float32(0.0), np.float32(1.0))
    E = t * t * t * (t * (t * np.float32(6.0) - np.float32(15.0)) + np.float32(10.0))
    E[D == 0] = 0.0
    return E.astype(np.float32, copy=False)


def _check(C_s: np.ndarray, C_t: np.ndarray, P: np.ndarray) -> None:
    if C_s.shape != C_t.shape or C_s.shape[:2] != P.shape or C_s.ndim != 3:
        raise ValueError(
            f"self-mix: C_s {C_s.shape}, C_t {C_t.shape} and P {P.shape} must agree as (h, w, c)"
        )
    if C_s.dtype != np.uint8 or C_t.dtype != np.uint8:
        raise ValueError(f"self-mix: crops must be uint8, got {C_s.dtype} and {C_t.dtype}")


def self_mix(C_s: np.ndarray, C_t: np.ndarray, P: np.ndarray, W: np.ndarray) -> np.ndarray:
    """C = (P * W) * C_s + (1 - P * W) * C_t (Eq. 4), rounded to uint8.

    Computed as C_t + (P * W) * (C_s - C_t) in float32, which is the same blend; where P = 0 the
    difference is multiplied by exactly 0, so C equals C_t there bit for bit, and where
    P * W = 1 it equals C_s. Inputs are not modified. The mask of the crop, C_m, is P itself.
    """
    _check(C_s, C_t, P)
    if W.shape != P.shape:
        raise ValueError(f"self-mix: W {W.shape} must have P's shape {P.shape}")
    opacity = (W.astype(np.float32, copy=False) * (P != 0))[..., None]  # P * W
    mixed = C_s.astype(np.float32)
    mixed -= C_t
    mixed *= opacity
    mixed += C_t
    mixed += np.float32(0.5)
    return mixed.astype(np.uint8)  # values lie in [0, 255.5]: truncation rounds half up


def paste(C_s: np.ndarray, C_t: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Hard paste, the Table 4 ablation without self-mix: C_s where P = 1, C_t elsewhere."""
    _check(C_s, C_t, P)
    return np.where((P != 0)[..., None], C_s, C_t)
