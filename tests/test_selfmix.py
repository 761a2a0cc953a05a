"""Self-mix paste: distance weights W (Eq. 3) and fusion (Eq. 4) (anomalygen.selfmix)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from anomalygen.perlin import perlin_mask
from anomalygen.selfmix import distance_map, distance_weights, paste, self_mix

masks = st.tuples(st.integers(1, 40), st.integers(1, 40)).flatmap(
    lambda shape: arrays(np.uint8, shape, elements=st.integers(0, 1))
)


@settings(max_examples=60, deadline=None)
@given(P=masks)
def test_distance_map_is_the_exact_edt(P: np.ndarray) -> None:
    """OpenCV's DIST_MASK_PRECISE agrees with scipy's exact EDT (border = background)."""
    edt = pytest.importorskip("scipy.ndimage").distance_transform_edt
    ref = edt(np.pad(P, 1))[1:-1, 1:-1]
    D = distance_map(P)
    assert D.dtype == np.float32 and D.shape == P.shape
    np.testing.assert_array_equal(D, ref.astype(np.float32))  # bit for bit, not just close


def test_distance_map_is_the_same_bits_on_the_first_call_of_a_process() -> None:
    """OpenCV's precise EDT gave 6.0827627 on its first call and 6.0827622 after (found by CI);
    D is snapped so that every process, fresh or not, gets the same bits."""
    code = (
        "import numpy as np, sys; from anomalygen.selfmix import distance_map\n"
        "P = np.ones((14, 21), np.uint8); P[6, 19] = 0\n"
        "sys.stdout.write(distance_map(P).tobytes().hex())"
    )
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    P = np.ones((14, 21), np.uint8)
    P[6, 19] = 0
    for _ in range(3):
        assert distance_map(P).tobytes().hex() == first.stdout


def test_distance_map_on_perlin_masks() -> None:
    edt = pytest.importorskip("scipy.ndimage").distance_transform_edt
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = rng.integers(5, 160, size=2)
        P = perlin_mask((int(h), int(w)), rng)
        ref = edt(np.pad(P, 1))[1:-1, 1:-1]
        np.testing.assert_allclose(distance_map(P), ref, rtol=1e-6, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(P=masks, alpha=st.floats(0.0, 1.0))
def test_weights_lie_in_alpha_to_one(P: np.ndarray, alpha: float) -> None:
    W = distance_weights(P, alpha)
    assert W.dtype == np.float32 and W.shape == P.shape
    lo = np.float32(alpha)
    assert (W >= lo).all() and (W <= 1.0).all()
    if P.any():
        assert W.max() == 1.0
        np.testing.assert_allclose(W[P == 0], alpha, rtol=1e-6, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(P=masks)
def test_weights_on_the_bounding_box_equal_weights_on_the_crop(P: np.ndarray) -> None:
    """The generator computes W on P's tight bounding box only; that must change nothing."""
    if not P.any():
        return
    rows, cols = np.flatnonzero(P.any(axis=1)), np.flatnonzero(P.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    assert np.array_equal(distance_weights(P[box], 0.7), distance_weights(P, 0.7)[box])


def test_weights_follow_eq3() -> None:
    P = np.zeros((9, 11), np.uint8)
    P[1:8, 2:9] = 1
    D = distance_map(P)
    W = distance_weights(P, 0.7)
    np.testing.assert_allclose(W, 0.3 * D / D.max() + 0.7, rtol=1e-6)  # min D = 0


def test_weights_empty_mask_are_one() -> None:
    """Constant D (only possible for an empty P): W = 1, and Eq. 4 leaves C_t as it is."""
    W = distance_weights(np.zeros((6, 5), np.uint8), 0.7)
    assert (W == 1.0).all()
    C_t = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    C_s = 255 - C_t
    assert np.array_equal(self_mix(C_s, C_t, np.zeros((6, 5), np.uint8), W), C_t)


def test_weights_single_pixel_and_thin_line() -> None:
    P = np.zeros((5, 5), np.uint8)
    P[2, 2] = 1
    W = distance_weights(P, 0.7)
    assert W[2, 2] == 1.0
    np.testing.assert_allclose(np.delete(W.ravel(), 12), 0.7, rtol=1e-6)
    line = np.zeros((7, 9), np.uint8)
    line[3, 1:8] = 1  # one pixel thin: D = 1 all along, so full weight all along
    assert (distance_weights(line, 0.7)[line == 1] == 1.0).all()


def test_full_crop_fades_to_its_border() -> None:
    """The crop border is background: a mask covering the whole crop still fades to the edge."""
    W = distance_weights(np.ones((9, 9), np.uint8), 0.7)
    assert W[4, 4] == 1.0
    assert W[0, 0] < W[2, 2] < W[4, 4]
    np.testing.assert_allclose(W[0, 4], 0.7 + 0.3 / 5, rtol=1e-6)  # D = 1 at the edge, 5 at centre


def test_weights_reject_bad_alpha_and_shape() -> None:
    with pytest.raises(ValueError):
        distance_weights(np.ones((3, 3), np.uint8), 1.5)
    with pytest.raises(ValueError):
        distance_weights(np.ones((3, 3, 1), np.uint8))


def _crops(seed: int, h: int, w: int):
    rng = np.random.default_rng(seed)
    C_s = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    C_t = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return C_s, C_t


@settings(max_examples=60, deadline=None)
@given(P=masks, seed=st.integers(0, 2**32 - 1), alpha=st.floats(0.0, 1.0))
def test_self_mix_is_eq4(P: np.ndarray, seed: int, alpha: float) -> None:
    C_s, C_t = _crops(seed, *P.shape)
    keep_s, keep_t = C_s.copy(), C_t.copy()
    W = distance_weights(P, alpha)
    C = self_mix(C_s, C_t, P, W)
    assert C.dtype == np.uint8 and C.shape == C_t.shape
    assert np.array_equal(C_s, keep_s) and np.array_equal(C_t, keep_t)
    off = P == 0
    assert np.array_equal(C[off], C_t[off])  # exactly the target outside P
    full = (P == 1) & (W == 1.0)
    assert np.array_equal(C[full], C_s[full])  # exactly the source where P * W = 1
    opacity = (P * W)[..., None].astype(np.float64)
    ref = opacity * C_s + (1 - opacity) * C_t
    assert np.abs(C - ref).max() <= 0.5 + 1e-3
    assert ((C >= np.minimum(C_s, C_t)) & (C <= np.maximum(C_s, C_t))).all()


def test_paste_is_self_mix_with_unit_weights() -> None:
    P = perlin_mask((30, 20), np.random.default_rng(1))
    C_s, C_t = _crops(2, 30, 20)
    hard = paste(C_s, C_t, P)
    assert np.array_equal(hard, self_mix(C_s, C_t, P, np.ones(P.shape, np.float32)))
    assert np.array_equal(hard[P == 1], C_s[P == 1])
    assert np.array_equal(hard[P == 0], C_t[P == 0])


def test_self_mix_rejects_mismatched_inputs() -> None:
    C_s, C_t = _crops(0, 8, 8)
    P = np.ones((8, 8), np.uint8)
    with pytest.raises(ValueError):
        self_mix(C_s, C_t[:4], P, np.ones((8, 8), np.float32))
    with pytest.raises(ValueError):
        self_mix(C_s, C_t, P, np.ones((4, 8), np.float32))
    with pytest.raises(ValueError):
        self_mix(C_s.astype(np.float32), C_t, P, np.ones((8, 8), np.float32))
    with pytest.raises(ValueError):
        paste(C_s, C_t, P[:7])
