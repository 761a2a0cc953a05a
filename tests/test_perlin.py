"""Perlin noise P_n and the lesion mask P (anomalygen.perlin)."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anomalygen import perlin
from anomalygen.errors import ConfigError
from anomalygen.perlin import GRADIENTS, ROTATIONS, PerlinConfig, perlin_mask, perlin_noise


def _reference_noise(h: int, w: int, res: tuple[int, int], lattice: np.ndarray) -> np.ndarray:
    """Textbook four-corner Perlin noise, pixel by pixel, with the same lattice of gradient
    indices: the separable implementation must agree with it."""
    out = np.empty((h, w))
    fade = lambda t: t * t * t * (t * (t * 6 - 15) + 10)  # noqa: E731
    for y in range(h):
        for x in range(w):
            u, v = (y + 0.5) * res[0] / h, (x + 0.5) * res[1] / w
            i, j = int(np.floor(u)), int(np.floor(v))
            fu, fv = u - i, v - j

            def dot(di: int, dj: int, i=i, j=j, fu=fu, fv=fv) -> float:
                gy, gx = GRADIENTS[lattice[i + di, j + dj]]
                return gy * (fu - di) + gx * (fv - dj)

            a = dot(0, 0) + fade(fu) * (dot(1, 0) - dot(0, 0))
            b = dot(0, 1) + fade(fu) * (dot(1, 1) - dot(0, 1))
            out[y, x] = np.sqrt(2) * (a + fade(fv) * (b - a))
    return out


def test_gradient_and_rotation_tables_are_unit_vectors() -> None:
    assert GRADIENTS.shape == (16, 2)
    np.testing.assert_allclose(np.hypot(GRADIENTS[:, 0], GRADIENTS[:, 1]), 1.0, atol=1e-15)
    angles = np.degrees(np.arctan2(GRADIENTS[:, 1], GRADIENTS[:, 0])) % 360
    np.testing.assert_allclose(angles, np.arange(16) * 22.5, atol=1e-9)
    assert ROTATIONS.shape == (8, 2)


@pytest.mark.parametrize(("h", "w", "res"), [(7, 13, (1, 1)), (24, 17, (3, 2)), (33, 40, (4, 5))])
def test_noise_matches_the_four_corner_formula(h: int, w: int, res: tuple[int, int]) -> None:
    seed = 11
    noise = perlin_noise((h, w), res, np.random.default_rng(seed))
    rows = int(np.floor((h - 0.5) * res[0] / h)) + 2
    cols = int(np.floor((w - 0.5) * res[1] / w)) + 2
    lattice = (np.random.default_rng(seed).random((rows, cols)) * 16).astype(int)
    np.testing.assert_allclose(noise, _reference_noise(h, w, res, lattice), atol=2e-6)


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 90),
    w=st.integers(1, 90),
    ry=st.integers(1, 9),
    rx=st.integers(1, 9),
    rotation=st.integers(0, 7),
    seed=st.integers(0, 2**32 - 1),
)
def test_noise_any_shape(h: int, w: int, ry: int, rx: int, rotation: int, seed: int) -> None:
    noise = perlin_noise((h, w), (ry, rx), np.random.default_rng(seed), rotation=rotation)
    assert noise.shape == (h, w)
    assert noise.dtype == np.float32
    assert np.isfinite(noise).all()
    # 2-D Perlin noise with unit gradients peaks at sqrt(1/2); DRAEM's sqrt(2) scale makes it 1.
    assert np.abs(noise).max() <= 1.0 + 1e-5


def test_more_periods_vary_faster() -> None:
    rng = np.random.default_rng(0)

    def roughness(res: tuple[int, int]) -> float:
        return float(np.abs(np.diff(perlin_noise((64, 64), res, rng))).mean())

    smooth = np.mean([roughness((1, 1)) for _ in range(5)])
    rough = np.mean([roughness((8, 8)) for _ in range(5)])
    assert rough > 3 * smooth


def test_rotation_turns_the_pattern() -> None:
    """Noise with many periods across x varies along x; a quarter turn (k = 4) makes it vary
    along y instead."""

    def anisotropy(rotation: int) -> float:
        n = perlin_noise((96, 96), (1, 12), np.random.default_rng(3), rotation=rotation)
        return float(np.abs(np.diff(n, axis=1)).mean() / np.abs(np.diff(n, axis=0)).mean())

    assert anisotropy(0) > 3.0
    assert anisotropy(4) < 1 / 3.0
    assert 1 / 3.0 < anisotropy(2) < 3.0  # 45 degrees: both directions vary


def test_noise_is_seeded() -> None:
    a = perlin_noise((40, 30), (2, 3), np.random.default_rng(5), rotation=3)
    b = perlin_noise((40, 30), (2, 3), np.random.default_rng(5), rotation=3)
    c = perlin_noise((40, 30), (2, 3), np.random.default_rng(6), rotation=3)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_noise_is_bit_stable() -> None:
    """Pure IEEE float arithmetic on fixed tables: these bytes (recorded on Linux x86-64, numpy 2)
    must not change between platforms or releases; a change here changes every rendered store.
    (numpy documents PCG64's stream as stable; a numpy change to ``Generator.random`` would also
    show up here.)"""
    rng = np.random.default_rng(2024)
    blobs = [perlin_noise((37, 53), (3, 5), rng, rotation=k).tobytes() for k in (0, 5)]
    digest = hashlib.sha256(b"".join(blobs)).hexdigest()[:16]
    assert digest == "276d6c4e3d34b70e", digest


@pytest.mark.parametrize(
    ("shape", "res", "rotation"), [((0, 5), (1, 1), 0), ((5, 5), (0, 1), 0), ((5, 5), (1, 1), 8)]
)
def test_noise_rejects_bad_arguments(shape, res, rotation) -> None:
    with pytest.raises(ValueError):
        perlin_noise(shape, res, np.random.default_rng(0), rotation=rotation)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70), seed=st.integers(0, 2**32 - 1))
def test_mask_is_binary_and_never_empty(h: int, w: int, seed: int) -> None:
    P = perlin_mask((h, w), np.random.default_rng(seed))
    assert P.shape == (h, w)
    assert P.dtype == np.uint8
    assert set(np.unique(P)) <= {0, 1}
    assert P.any()


def test_mask_is_seeded() -> None:
    a = perlin_mask((50, 70), np.random.default_rng(1))
    b = perlin_mask((50, 70), np.random.default_rng(1))
    assert a.tobytes() == b.tobytes()
    masks = {perlin_mask((50, 70), np.random.default_rng(s)).tobytes() for s in range(10)}
    assert len(masks) == 10


def test_periods_are_capped_for_small_crops(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = perlin.perlin_noise

    def spy(shape, res, rng, *, rotation=0):
        seen.append((shape, res))
        return real(shape, res, rng, rotation=rotation)

    monkeypatch.setattr(perlin, "perlin_noise", spy)
    rng = np.random.default_rng(0)
    config = PerlinConfig(max_draws=1, max_anisotropy=None)  # DRAEM's independent axes
    for _ in range(30):
        perlin_mask((12, 300), rng, config)
    for _shape, (ry, rx) in seen:
        assert ry == 1  # 12 px / 8 px minimum period -> one period
        assert rx in (1, 2, 4, 8, 16, 32)
    assert {rx for _, (_, rx) in seen} == {1, 2, 4, 8, 16, 32}  # DRAEM's scales 2**0..2**5


def _fixed_noise(values: list[np.ndarray]):
    calls = iter(values)
    return lambda shape, res, rng, *, rotation=0: next(calls).astype(np.float32)


def test_empty_draws_are_redrawn(monkeypatch: pytest.MonkeyPatch) -> None:
    empty = np.full((4, 4), 0.2)
    hit = empty.copy()
    hit[1, 2] = 0.7
    monkeypatch.setattr(perlin, "perlin_noise", _fixed_noise([empty, empty, hit]))
    P = perlin_mask((4, 4), np.random.default_rng(0), PerlinConfig(max_draws=4, taper=0.0))
    assert P.sum() == 1 and P[1, 2] == 1


def test_fallback_thresholds_at_half_the_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    last = np.full((4, 4), -0.3)
    last[0, 0], last[3, 3], last[2, 1] = 0.4, 0.25, 0.19
    monkeypatch.setattr(perlin, "perlin_noise", _fixed_noise([np.zeros((4, 4)), last]))
    P = perlin_mask((4, 4), np.random.default_rng(0), PerlinConfig(max_draws=2, taper=0.0))
    assert sorted(zip(*np.nonzero(P), strict=True)) == [(0, 0), (3, 3)]  # >= 0.2 = 0.4 / 2


def test_fallback_keeps_the_peak_of_negative_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    last = np.full((3, 5), -0.6)
    last[2, 4] = -0.1
    monkeypatch.setattr(perlin, "perlin_noise", _fixed_noise([last]))
    P = perlin_mask((3, 5), np.random.default_rng(0), PerlinConfig(max_draws=1, taper=0.0))
    assert P.sum() == 1 and P[2, 4] == 1


def test_unreachable_threshold_still_gives_a_mask() -> None:
    config = PerlinConfig(threshold=0.99, max_draws=2)
    for seed in range(20):
        assert perlin_mask((9, 31), np.random.default_rng(seed), config).any()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale_exp": (3, 1)},
        {"scale_exp": (-1, 2)},
        {"threshold": 1.5},
        {"min_period": 0.5},
        {"max_draws": 0},
    ],
)
def test_invalid_config_raises(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        PerlinConfig(**kwargs)


def _elongations(config: PerlinConfig, n: int = 120) -> np.ndarray:
    """sqrt of the eigenvalue ratio of each blob's pixel covariance (1: round)."""
    out = []
    for seed in range(n):
        mask = perlin_mask((96, 96), np.random.default_rng(seed), config)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
        for j in range(1, count):
            if stats[j, cv2.CC_STAT_AREA] >= 20:
                ev = np.linalg.eigvalsh(np.cov(np.vstack(np.nonzero(labels == j))))
                out.append(np.sqrt(ev[1] / max(ev[0], 1e-6)))
    return np.asarray(out)


def test_max_anisotropy_keeps_blobs_round() -> None:
    free = _elongations(PerlinConfig(max_anisotropy=None))
    capped = _elongations(PerlinConfig(max_anisotropy=1))
    assert np.quantile(free, 0.9) > 5.0 > 4.5 > np.quantile(capped, 0.9)  # streaks are gone
    with pytest.raises(ConfigError, match="max_anisotropy"):
        PerlinConfig(max_anisotropy=-1)
