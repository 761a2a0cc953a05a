"""Lesion tone (anomalygen.tone), the Perlin edge taper and per-lesion alpha in the generator."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anomalygen.errors import ConfigError
from anomalygen.generator import AnomalyGenerator, GeneratorConfig, generator_preset, sample_rng
from anomalygen.perlin import PerlinConfig, edge_window, perlin_mask
from anomalygen.tone import ToneConfig, apply_tone, draw_tone
from tests.synthetic import make_fundus
from tests.test_generator import FOV, SOURCE, TARGET, check_contract


def test_flat_tone_is_the_target_mean_plus_delta() -> None:
    rng = np.random.default_rng(0)
    C_s = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    C_t = rng.integers(60, 200, (6, 7, 3), dtype=np.uint8)
    P = np.zeros((6, 7), np.uint8)
    P[1:5, 2:6] = 1
    out = apply_tone(C_s, C_t, P, delta=-20.0, texture=0.0, channels=(1.0, 1.0, 0.5))
    mean_t = C_t[P == 1].astype(np.float64).mean(axis=0)
    expected = np.floor(mean_t + np.array([-20.0, -20.0, -10.0]) + 0.5)
    assert np.all(out == expected.astype(np.uint8))  # flat: every pixel the same colour


def test_full_texture_keeps_the_source_pattern_around_the_target_mean() -> None:
    rng = np.random.default_rng(1)
    C_s = rng.integers(50, 200, (5, 5, 3), dtype=np.uint8)
    C_t = np.full((5, 5, 3), 120, np.uint8)
    P = np.ones((5, 5), np.uint8)
    out = apply_tone(C_s, C_t, P, delta=0.0, texture=1.0).astype(float)
    assert np.allclose(out.mean(axis=(0, 1)), 120, atol=0.6)
    assert np.allclose(out - out.mean(axis=(0, 1)), C_s - C_s.mean(axis=(0, 1)), atol=0.6)
    assert not (C_s != C_s.copy()).any()  # inputs untouched


def test_target_texture_keeps_the_retina_under_the_lesion() -> None:
    rng = np.random.default_rng(3)
    C_s = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    C_t = rng.integers(60, 200, (6, 6, 3), dtype=np.uint8)
    P = np.ones((6, 6), np.uint8)
    shifted = apply_tone(C_s, C_t, P, -15.0, 0.0, (1.0, 1.0, 1.0), target_texture=1.0)
    assert np.abs(shifted.astype(int) - (C_t.astype(int) - 15)).max() <= 1  # a pure tone shift
    half = apply_tone(C_s, C_t, P, 0.0, 0.0, target_texture=0.5).astype(float)
    spread_t = (C_t - C_t.mean(axis=(0, 1))).std()
    assert 0.4 * spread_t < (half - half.mean(axis=(0, 1))).std() < 0.6 * spread_t
    flat = apply_tone(C_s, C_t, P, 0.0, 0.0, target_texture=0.0)
    assert (flat == flat[0, 0]).all()  # k_t = 0 is the flat tone of before


def test_target_texture_is_drawn_only_where_configured() -> None:
    plain = draw_tone(np.random.default_rng(4), ToneConfig())
    assert "target_texture" not in plain
    drawn = [draw_tone(np.random.default_rng(i), ToneConfig(target_texture=(0.3, 0.8)))
             for i in range(40)]  # fmt: skip
    assert all(0.3 <= t["target_texture"] <= 0.8 for t in drawn)
    assert drawn[0]["delta"] == draw_tone(np.random.default_rng(0), ToneConfig())["delta"]


def test_tone_saturates_and_checks_its_inputs() -> None:
    C = np.full((3, 3, 3), 250, np.uint8)
    P = np.ones((3, 3), np.uint8)
    assert (apply_tone(C, C, P, 60.0, 0.0) == 255).all()
    assert (apply_tone(C, C, P, -400.0, 0.0) == 0).all()
    with pytest.raises(ValueError, match="empty"):
        apply_tone(C, C, np.zeros((3, 3), np.uint8), 1.0, 0.5)
    with pytest.raises(ValueError, match="agree"):
        apply_tone(C, C[:2], P, 1.0, 0.5)


def test_draw_tone_follows_its_config() -> None:
    rng = np.random.default_rng(2)
    dark = [draw_tone(rng, ToneConfig(p_dark=1.0, dark=(5, 9))) for _ in range(50)]
    assert all(-9 <= t["delta"] <= -5 for t in dark)
    bright = [draw_tone(rng, ToneConfig(p_dark=0.0, bright=(10, 12), texture=(0.2, 0.3)))
              for _ in range(50)]  # fmt: skip
    assert all(10 <= t["delta"] <= 12 and 0.2 <= t["texture"] <= 0.3 for t in bright)
    mixed = [draw_tone(rng, ToneConfig(p_dark=0.5))["delta"] < 0 for _ in range(400)]
    assert 0.4 < np.mean(mixed) < 0.6


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "magic"}, {"p_dark": 1.5}, {"dark": (9, 3)}, {"texture": (0, 2)},
     {"channels": (1, 1)}, {"channels": (1, 1, 3)}, {"target_texture": (0.5, 1.5)}],
)  # fmt: skip
def test_invalid_tone_configs_raise(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="tone"):
        ToneConfig(**kwargs)


def test_dark_flat_lesions_are_darker_than_the_retina_they_replace() -> None:
    config = GeneratorConfig(
        p_normal=0.0, lesions=(1, 1), alpha=1.0, alpha_range=None, edge=None, crop_size=(0.2, 0.2),
        tone=ToneConfig(p_dark=1.0, dark=(30.0, 30.0), texture=(0.0, 0.0)),
    )  # fmt: skip
    generator = AnomalyGenerator(config)
    for index in range(10):
        sample = generator.generate(TARGET, SOURCE, sample_rng(3, index), FOV, FOV)
        check_contract(sample, TARGET, FOV)
        (lesion,) = sample.meta["lesions"]
        assert lesion["tone"] == {"delta": -30.0, "texture": 0.0}
        inside = sample.mask == 1
        change = sample.image[inside].astype(float).mean(0) - TARGET[inside].astype(float).mean(0)
        assert change == pytest.approx([-30, -30, -22.5], abs=1.5)


def test_the_paper_generator_records_no_tone_and_draws_nothing_more() -> None:
    paper = AnomalyGenerator(dataclasses.replace(generator_preset("paper"), p_normal=0.0))
    for index in range(5):
        meta = paper.generate(TARGET, SOURCE, sample_rng(0, index), FOV, FOV).meta
        assert all("tone" not in le and "alpha" not in le for le in meta["lesions"])


def test_alpha_drawn_per_lesion() -> None:
    config = GeneratorConfig(p_normal=0.0, lesions=(3, 3), alpha_range=(0.1, 0.4))
    assert GeneratorConfig(alpha_range=[0.1, 0.4]).alpha_range == (0.1, 0.4)  # from JSON lists
    meta = AnomalyGenerator(config).generate(TARGET, SOURCE, sample_rng(0, 1), FOV, FOV).meta
    alphas = [le["alpha"] for le in meta["lesions"]]
    assert len(set(alphas)) == 3 and all(0.1 <= a <= 0.4 for a in alphas)
    with pytest.raises(ConfigError, match="alpha_range"):
        GeneratorConfig(alpha_range=(0.5, 0.2))


def test_edge_window_is_zero_on_the_border_and_one_inside() -> None:
    w = edge_window((9, 21), 0.5)
    assert w.dtype == np.float32
    assert (w[0] == 0).all() and (w[-1] == 0).all() and (w[:, 0] == 0).all()
    assert (w[:, -1] == 0).all()
    assert w[4, 10] == 1.0 and np.array_equal(w, w[::-1, ::-1])


@settings(max_examples=60, deadline=None)
@given(h=st.integers(3, 70), w=st.integers(3, 70), taper=st.floats(0.05, 1.0),
       seed=st.integers(0, 2**32 - 1))  # fmt: skip
def test_tapered_masks_never_touch_the_crop_border(h: int, w: int, taper: float, seed: int):
    P = perlin_mask((h, w), np.random.default_rng(seed), PerlinConfig(taper=taper))
    assert P.any()
    assert not (P[0].any() or P[-1].any() or P[:, 0].any() or P[:, -1].any())


def test_taper_checks() -> None:
    with pytest.raises(ConfigError, match="taper"):
        PerlinConfig(taper=1.5)
    with pytest.raises(ConfigError, match="threshold >= 0"):
        PerlinConfig(taper=0.5, threshold=-0.2)


def test_tapered_generator_keeps_its_contract() -> None:
    config = GeneratorConfig(p_normal=0.0, lesions=(1, 12), perlin=PerlinConfig(taper=0.5),
                             tone=ToneConfig(), alpha_range=(0.0, 0.7))  # fmt: skip
    target, source = make_fundus(80, 5), make_fundus(80, 6)
    fov = FOV[:80, :80] * 0 + (target.max(axis=2) > 0)
    for index in range(20):
        sample = AnomalyGenerator(config).generate(target, source, sample_rng(9, index), fov, fov)
        check_contract(sample, target, fov)


def test_edge_fade_rises_from_the_border() -> None:
    from anomalygen.selfmix import edge_fade

    P = np.zeros((15, 15), np.uint8)
    P[2:13, 2:13] = 1
    E = edge_fade(P, 3.0)
    assert E.dtype == np.float32 and (E[P == 0] == 0).all()
    assert 0 < E[2, 7] < 0.2 and E[7, 7] == 1.0  # faint at the border, full inside
    assert np.all(np.diff(E[7, 2:8]) >= 0)  # rising towards the centre
    dot = np.zeros((5, 5), np.uint8)
    dot[2, 2] = 1
    assert edge_fade(dot, 3.0)[2, 2] == pytest.approx(0.5)  # a one-pixel lesion stays visible
    with pytest.raises(ValueError, match="width"):
        edge_fade(P, 0.0)


def test_soft_edges_in_the_generator() -> None:
    soft = GeneratorConfig(p_normal=0.0, lesions=(2, 2), edge=(2.0, 2.5))
    sample = AnomalyGenerator(soft).generate(TARGET, SOURCE, sample_rng(1, 2), FOV, FOV)
    check_contract(sample, TARGET, FOV)
    assert all(2.0 <= le["edge"] <= 2.5 for le in sample.meta["lesions"])
    assert GeneratorConfig(edge=[1, 2]).edge == (1, 2)
    with pytest.raises(ConfigError, match=r"generator\.edge"):
        GeneratorConfig(edge=(0.0, 1.0))
