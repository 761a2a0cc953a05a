"""The augmentation pool (anomalygen.augment)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anomalygen import augment as A
from anomalygen.augment import FUNDUS_OPS, OPS, AugmentConfig, augment
from anomalygen.errors import ConfigError
from tests.synthetic import make_fundus

DEFAULTS = AugmentConfig()


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    """A 40x48 lesion-sized crop of a synthetic fundus, with a vessel and the optic-disc edge."""
    return make_fundus(128, seed=4)[44:84, 56:104].copy()


def _in(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def _values_within_ranges(name: str, applied: dict) -> bool:
    p = getattr(DEFAULTS, name)
    checks = {
        "sharpen": lambda: (
            _in(applied["alpha"], p.alpha) and _in(applied["lightness"], p.lightness)
        ),
        "solarize": lambda: _in(applied["threshold"], p.threshold),
        "gamma": lambda: (
            len(applied["gamma"]) == 3 and all(_in(g, p.gamma) for g in applied["gamma"])
        ),
        "hue": lambda: _in(applied["degrees"], p.degrees) and applied["degrees"] % 2 == 0,
        "temperature": lambda: _in(applied["kelvin"], p.kelvin),
        "autocontrast": lambda: _in(applied["cutoff"], p.cutoff),
        "color_shift": lambda: all(_in(o, p.offset) for o in applied["offsets"]),
    }
    return checks[name]()


def _plain_json(value) -> bool:
    """Only Python bools, ints, floats, strings, lists and dicts (no numpy scalars)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_json(v) for v in value)
    return type(value) in (bool, int, float, str)


def test_the_pool_is_the_papers_seven() -> None:
    assert set(OPS) == {
        "sharpen",
        "solarize",
        "gamma",
        "hue",
        "temperature",
        "autocontrast",
        "color_shift",
    }
    assert DEFAULTS.n_ops == 3
    # our default pool leaves out the two that make colours no fundus shows
    assert DEFAULTS.ops == FUNDUS_OPS and set(OPS) - set(FUNDUS_OPS) == {"solarize", "hue"}


@pytest.mark.parametrize("name", list(OPS))
def test_op_contract(name: str, crop: np.ndarray) -> None:
    op, params = OPS[name], getattr(DEFAULTS, name)
    before = crop.copy()
    for seed in range(5):
        out, applied = op(crop, np.random.default_rng(seed), params)
        assert out.shape == crop.shape and out.dtype == np.uint8
        assert out is not crop
        assert np.array_equal(crop, before), "the input was modified"
        assert _plain_json(applied) and json.loads(json.dumps(applied)) == applied
        assert _values_within_ranges(name, applied), applied
        assert not np.array_equal(out, crop), f"{name} left the crop unchanged (seed {seed})"
        again, applied_again = op(crop, np.random.default_rng(seed), params)
        assert np.array_equal(out, again) and applied == applied_again


@pytest.mark.parametrize("name", list(OPS))
def test_op_works_on_a_strided_view(name: str) -> None:
    """Crops are views into the source image; ops must read them correctly."""
    big = make_fundus(96, seed=2)
    view = big[20:50, 30:70]
    out_view, _ = OPS[name](view, np.random.default_rng(1), getattr(DEFAULTS, name))
    out_copy, _ = OPS[name](view.copy(), np.random.default_rng(1), getattr(DEFAULTS, name))
    assert np.array_equal(out_view, out_copy)


def test_sharpen_without_strength_is_identity(crop: np.ndarray) -> None:
    out, _ = A.sharpen(crop, np.random.default_rng(0), A.SharpenParams(alpha=(0.0, 0.0)))
    assert np.array_equal(out, crop)


@pytest.mark.parametrize("seed", range(6))
def test_sharpen_is_exact_fixed_point(seed: int) -> None:
    """out = round_half_even((k * x - a * sum of 8 neighbours) / 256), k, a integers."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (int(rng.integers(3, 50)), int(rng.integers(3, 50)), 3), np.uint8)
    out, applied = A.sharpen(img, np.random.default_rng(seed), DEFAULTS.sharpen)
    a = round(applied["alpha"] * 256)
    k = round((1 + applied["alpha"] * (7 + applied["lightness"])) * 256)
    x = img.astype(np.int64)
    neighbours = cv2.boxFilter(img, cv2.CV_32S, (3, 3), normalize=False) - x
    ref = np.clip(np.rint((k * x - a * neighbours) / 256), 0, 255)
    assert np.array_equal(out, ref.astype(np.uint8))


def test_sharpen_matches_the_imgaug_kernel(crop: np.ndarray) -> None:
    params = A.SharpenParams(alpha=(1.0, 1.0), lightness=(1.5, 1.5))
    out, applied = A.sharpen(crop, np.random.default_rng(0), params)
    assert applied == {"alpha": 1.0, "lightness": 1.5}
    kernel = -np.ones((3, 3), np.float32)
    kernel[1, 1] = 8 + 1.5
    ref = cv2.filter2D(crop.astype(np.float32), -1, kernel)
    assert np.abs(out.astype(int) - np.clip(np.rint(ref), 0, 255)).max() <= 1


def test_solarize_inverts_from_the_threshold(crop: np.ndarray) -> None:
    out, applied = A.solarize(crop, np.random.default_rng(0), A.SolarizeParams(threshold=(90, 90)))
    assert applied == {"threshold": 90}
    assert np.array_equal(out, np.where(crop >= 90, 255 - crop, crop))


def test_gamma_per_channel(crop: np.ndarray) -> None:
    params = A.GammaParams(gamma=(0.5, 2.0), per_channel=True)
    out, applied = A.gamma(crop, np.random.default_rng(3), params)
    g = np.array(applied["gamma"])
    assert len(set(applied["gamma"])) == 3
    ref = np.floor(255.0 * (crop / 255.0) ** g + 0.5)
    assert np.array_equal(out, ref.astype(np.uint8))
    _, single = A.gamma(crop, np.random.default_rng(3), A.GammaParams(per_channel=False))
    assert len(set(single["gamma"])) == 1


def test_hue_turns_red_into_green() -> None:
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    out, applied = A.hue(red, np.random.default_rng(0), A.HueParams(degrees=(120.0, 120.0)))
    assert applied == {"degrees": 120}
    assert (out == np.array([0, 255, 0], np.uint8)).all()


def test_temperature_uses_the_blackbody_table(crop: np.ndarray) -> None:
    assert A.kelvin_to_rgb(6500) == (1.0, 249 / 255, 253 / 255)
    warm, cool = A.kelvin_to_rgb(2000), A.kelvin_to_rgb(10000)
    assert warm[2] < 0.1 and warm[0] == 1.0  # candle light: no blue
    assert cool[2] == 1.0 and cool[0] < 0.81  # blue sky
    out, applied = A.temperature(
        crop, np.random.default_rng(0), A.TemperatureParams(kelvin=(2000.0, 2000.0))
    )
    assert applied == {"kelvin": 2000.0}
    ref = np.floor(crop * np.array(warm) + 0.5).astype(np.uint8)
    assert np.array_equal(out, ref)


def test_autocontrast_stretches_each_channel(crop: np.ndarray) -> None:
    params = A.AutocontrastParams(cutoff=(0.0, 0.0))
    out, _ = A.autocontrast(crop, np.random.default_rng(0), params)
    for c in range(3):
        if crop[..., c].min() < crop[..., c].max():
            assert out[..., c].min() == 0 and out[..., c].max() == 255
    flat = np.full((5, 5, 3), 77, np.uint8)
    out, _ = A.autocontrast(flat, np.random.default_rng(0), params)
    assert np.array_equal(out, flat)


def test_autocontrast_cutoff_clips_outliers() -> None:
    img = np.full((10, 10, 3), 100, np.uint8)
    img[:5] = 120
    img[0, 0] = 0  # one outlier below, one above
    img[9, 9] = 255
    out, _ = A.autocontrast(img, np.random.default_rng(0), A.AutocontrastParams(cutoff=(2.0, 2.0)))
    assert out[1, 1, 0] == 255 and out[8, 8, 0] == 0  # 100..120 stretched to 0..255


def test_color_shift_adds_per_channel_and_saturates() -> None:
    img = np.array([[[0, 128, 250]]], np.uint8)
    out, applied = A.color_shift(img, np.random.default_rng(0), A.ColorShiftParams(offset=(9, 9)))
    assert applied == {"offsets": [9, 9, 9]}
    assert out.tolist() == [[[9, 137, 255]]]


def test_augment_draws_distinct_ops(crop: np.ndarray) -> None:
    seen = set()
    for seed in range(40):
        out, applied = augment(crop, np.random.default_rng(seed))
        names = [a["op"] for a in applied]
        assert len(names) == 3 and len(set(names)) == 3
        assert _plain_json(applied)
        assert out.shape == crop.shape and out.dtype == np.uint8
        seen.update(names)
    assert seen == set(FUNDUS_OPS)
    paper = AugmentConfig(ops=tuple(OPS))
    seen = {
        a["op"] for seed in range(40) for a in augment(crop, np.random.default_rng(seed), paper)[1]
    }
    assert seen == set(OPS)


def _fixed(applied: dict):
    """Params whose ranges pin the values an op reported (ops drawing one value)."""
    pin = {
        "sharpen": lambda a: A.SharpenParams((a["alpha"],) * 2, (a["lightness"],) * 2),
        "solarize": lambda a: A.SolarizeParams((a["threshold"],) * 2),
        "hue": lambda a: A.HueParams((float(a["degrees"]),) * 2),
        "temperature": lambda a: A.TemperatureParams((a["kelvin"],) * 2),
        "autocontrast": lambda a: A.AutocontrastParams((a["cutoff"],) * 2),
    }
    return pin[applied["op"]](applied)


@pytest.mark.parametrize("seed", range(4))
def test_augment_applies_the_reported_ops_in_order(seed: int, crop: np.ndarray) -> None:
    config = AugmentConfig(ops=("sharpen", "solarize", "hue", "temperature", "autocontrast"))
    out, applied = augment(crop, np.random.default_rng(seed), config)
    replay = crop
    for a in applied:
        replay, values = OPS[a["op"]](replay, np.random.default_rng(0), _fixed(a))
        assert {"op": a["op"], **values} == a
    assert np.array_equal(out, replay)


def test_augment_respects_config(crop: np.ndarray) -> None:
    config = AugmentConfig(n_ops=2, ops=("gamma", "hue"))
    for seed in range(5):
        _, applied = augment(crop, np.random.default_rng(seed), config)
        assert sorted(a["op"] for a in applied) == ["gamma", "hue"]
    out, applied = augment(crop, np.random.default_rng(0), AugmentConfig(n_ops=0))
    assert applied == [] and np.array_equal(out, crop) and out is not crop


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    fill=st.integers(0, 255),
)
def test_augment_any_crop(h: int, w: int, seed: int, fill: int) -> None:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[: h // 2] = fill  # part flat, part noise
    before = img.copy()
    out, applied = augment(img, np.random.default_rng(seed))
    assert out.shape == img.shape and out.dtype == np.uint8 and len(applied) == 3
    assert np.array_equal(img, before)
    again, _ = augment(img, np.random.default_rng(seed))
    assert np.array_equal(out, again)


def test_augment_rejects_non_rgb() -> None:
    with pytest.raises(ValueError):
        augment(np.zeros((4, 4), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError):
        augment(np.zeros((4, 4, 3), np.float32), np.random.default_rng(0))


@pytest.mark.parametrize(
    "make",
    [
        lambda: AugmentConfig(n_ops=8),
        lambda: AugmentConfig(n_ops=-1),
        lambda: AugmentConfig(ops=("gamma", "blur")),
        lambda: AugmentConfig(ops=("gamma", "gamma")),
        lambda: A.SharpenParams(alpha=(0.5, 0.2)),
        lambda: A.SharpenParams(alpha=(0.0, 1.5)),
        lambda: A.SolarizeParams(threshold=(-1, 100)),
        lambda: A.GammaParams(gamma=(0.0, 2.0)),
        lambda: A.HueParams(degrees=(-200.0, 0.0)),
        lambda: A.TemperatureParams(kelvin=(500.0, 4000.0)),
        lambda: A.AutocontrastParams(cutoff=(0.0, 60.0)),
        lambda: A.ColorShiftParams(offset=(10, -10)),
    ],
)
def test_invalid_configs_raise(make) -> None:
    with pytest.raises(ConfigError):
        make()
