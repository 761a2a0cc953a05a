"""The augmentation pool (anomalygen.augment): each op's draw and its pure apply."""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anomalygen import augment as A
from anomalygen.augment import FUNDUS_OPS, OPS, AugmentConfig, apply_ops, augment, draw_ops
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


def _draw_apply(name: str, img: np.ndarray, rng: np.random.Generator, params) -> tuple:
    """The old combined ``op(img, rng, params) -> (img, values)``, from the two halves."""
    values = OPS[name].draw(rng, params)
    return OPS[name].apply(img, **values), values


@pytest.mark.parametrize("name", list(OPS))
def test_op_contract(name: str, crop: np.ndarray) -> None:
    op, params = OPS[name], getattr(DEFAULTS, name)
    assert op.draw is getattr(A, f"draw_{name}") and op.apply is getattr(A, name)
    before = crop.copy()
    for seed in range(5):
        values = op.draw(np.random.default_rng(seed), params)
        assert _plain_json(values) and json.loads(json.dumps(values)) == values
        assert _values_within_ranges(name, values), values
        assert op.draw(np.random.default_rng(seed), params) == values  # a function of the rng
        out = op.apply(crop, **values)
        assert out.shape == crop.shape and out.dtype == np.uint8
        assert out is not crop
        assert np.array_equal(crop, before), "the input was modified"
        assert not np.array_equal(out, crop), f"{name} left the crop unchanged (seed {seed})"
        # pure: the values alone (here through JSON, as a sample's metadata keeps them)
        assert np.array_equal(op.apply(crop, **json.loads(json.dumps(values))), out)


#: sha256 (first 16 hex digits) over seeds 0..4 of what the combined ops of anomalygen 0.1.0
#: (``op(crop, default_rng(seed), defaults) -> (img, values)``, before the split into draw and
#: apply) returned, followed by the next 8 bytes of the rng: the split keeps every output byte,
#: every value and the rng's call sequence (so stores stay byte-identical). Computed with the
#: pre-split anomalygen/augment.py on the ``crop`` fixture. Hue's pixels depend on the CPU:
#: OpenCV's 8-bit HSV -> RGB conversion rounds differently on its SIMD paths (OpenCV 4.10 to
#: 5.1 alike), so it has one digest per CPU the pre-split code was run on (the first on an
#: earlier dev machine, the second on an AMD EPYC without AVX-512).
OLD_COMBINED = {
    "sharpen": ("26aeaebeef556b04",),
    "solarize": ("0553b00553df0ca3",),
    "gamma": ("0980aab29e3df4a5",),
    "hue": ("cb20da85e50f19c8", "59192654950a5614"),
    "temperature": ("eb9982208ee05b34",),
    "autocontrast": ("36bf78848ccb1b94",),
    "color_shift": ("98e2ce41b23fe0e0",),
}
#: The pre-split augment(crop, rng, paper) with all seven ops, seeds 0..7, on the same CPUs.
OLD_AUGMENT = ("e9062abfdc0068b9", "c0f6d441036a32be")


def _combined_digest(run, seeds: range) -> str:
    h = hashlib.sha256()
    for seed in seeds:
        rng = np.random.default_rng(seed)
        img, values = run(rng)
        h.update(img.tobytes())
        h.update(json.dumps(values).encode())
        h.update(rng.bytes(8))
    return h.hexdigest()[:16]


@pytest.mark.parametrize("name", list(OPS))
def test_draw_then_apply_is_the_old_combined_op(name: str, crop: np.ndarray) -> None:
    params = getattr(DEFAULTS, name)
    got = _combined_digest(lambda rng: _draw_apply(name, crop, rng, params), range(5))
    assert got in OLD_COMBINED[name]


def test_draw_ops_then_apply_ops_is_the_old_augment(crop: np.ndarray) -> None:
    paper = AugmentConfig(ops=tuple(OPS))
    whole = _combined_digest(lambda rng: augment(crop, rng, paper), range(8))
    assert whole in OLD_AUGMENT

    def split(rng: np.random.Generator) -> tuple:
        ops = draw_ops(rng, paper)
        return apply_ops(crop, ops), ops

    assert _combined_digest(split, range(8)) == whole
    single = A.GammaParams(per_channel=False)
    got = _combined_digest(lambda rng: _draw_apply("gamma", crop, rng, single), range(5))
    assert got == "a58a04c55e8c1d4d"


@pytest.mark.parametrize("name", list(OPS))
def test_op_works_on_a_strided_view(name: str) -> None:
    """Crops are views into the source image; ops must read them correctly."""
    big = make_fundus(96, seed=2)
    view = big[20:50, 30:70]
    values = OPS[name].draw(np.random.default_rng(1), getattr(DEFAULTS, name))
    assert np.array_equal(OPS[name].apply(view, **values), OPS[name].apply(view.copy(), **values))


def test_sharpen_without_strength_is_identity(crop: np.ndarray) -> None:
    assert np.array_equal(A.sharpen(crop, alpha=0.0, lightness=1.3), crop)


@pytest.mark.parametrize("seed", range(6))
def test_sharpen_is_exact_fixed_point(seed: int) -> None:
    """out = round_half_even((k * x - a * sum of 8 neighbours) / 256), k, a integers."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (int(rng.integers(3, 50)), int(rng.integers(3, 50)), 3), np.uint8)
    applied = A.draw_sharpen(np.random.default_rng(seed), DEFAULTS.sharpen)
    out = A.sharpen(img, **applied)
    a = round(applied["alpha"] * 256)
    k = round((1 + applied["alpha"] * (7 + applied["lightness"])) * 256)
    x = img.astype(np.int64)
    neighbours = cv2.boxFilter(img, cv2.CV_32S, (3, 3), normalize=False) - x
    ref = np.clip(np.rint((k * x - a * neighbours) / 256), 0, 255)
    assert np.array_equal(out, ref.astype(np.uint8))


def test_sharpen_matches_the_imgaug_kernel(crop: np.ndarray) -> None:
    params = A.SharpenParams(alpha=(1.0, 1.0), lightness=(1.5, 1.5))
    assert A.draw_sharpen(np.random.default_rng(0), params) == {"alpha": 1.0, "lightness": 1.5}
    out = A.sharpen(crop, alpha=1.0, lightness=1.5)
    kernel = -np.ones((3, 3), np.float32)
    kernel[1, 1] = 8 + 1.5
    ref = cv2.filter2D(crop.astype(np.float32), -1, kernel)
    assert np.abs(out.astype(int) - np.clip(np.rint(ref), 0, 255)).max() <= 1


def test_solarize_inverts_from_the_threshold(crop: np.ndarray) -> None:
    drawn = A.draw_solarize(np.random.default_rng(0), A.SolarizeParams(threshold=(90, 90)))
    assert drawn == {"threshold": 90}
    out = A.solarize(crop, threshold=90)
    assert np.array_equal(out, np.where(crop >= 90, 255 - crop, crop))


def test_gamma_per_channel(crop: np.ndarray) -> None:
    params = A.GammaParams(gamma=(0.5, 2.0), per_channel=True)
    applied = A.draw_gamma(np.random.default_rng(3), params)
    assert len(set(applied["gamma"])) == 3
    out = A.gamma(crop, gamma=applied["gamma"])
    ref = np.floor(255.0 * (crop / 255.0) ** np.array(applied["gamma"]) + 0.5)
    assert np.array_equal(out, ref.astype(np.uint8))
    single = A.draw_gamma(np.random.default_rng(3), A.GammaParams(per_channel=False))
    assert len(single["gamma"]) == 3 and len(set(single["gamma"])) == 1
    with pytest.raises(ValueError, match="one exponent per channel"):
        A.gamma(crop, gamma=[1.0, 2.0])


def test_hue_turns_red_into_green() -> None:
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    assert A.draw_hue(np.random.default_rng(0), A.HueParams(degrees=(120.0, 120.0))) == {
        "degrees": 120
    }
    out = A.hue(red, degrees=120)
    assert (out == np.array([0, 255, 0], np.uint8)).all()
    with pytest.raises(ValueError, match="even integer"):  # OpenCV's hue has 2-degree steps
        A.hue(red, degrees=121)


def test_temperature_uses_the_blackbody_table(crop: np.ndarray) -> None:
    assert A.kelvin_to_rgb(6500) == (1.0, 249 / 255, 253 / 255)
    warm, cool = A.kelvin_to_rgb(2000), A.kelvin_to_rgb(10000)
    assert warm[2] < 0.1 and warm[0] == 1.0  # candle light: no blue
    assert cool[2] == 1.0 and cool[0] < 0.81  # blue sky
    drawn = A.draw_temperature(np.random.default_rng(0), A.TemperatureParams((2000.0, 2000.0)))
    assert drawn == {"kelvin": 2000.0}
    out = A.temperature(crop, kelvin=2000.0)
    ref = np.floor(crop * np.array(warm) + 0.5).astype(np.uint8)
    assert np.array_equal(out, ref)


def test_autocontrast_stretches_each_channel(crop: np.ndarray) -> None:
    out = A.autocontrast(crop, cutoff=0.0)
    for c in range(3):
        if crop[..., c].min() < crop[..., c].max():
            assert out[..., c].min() == 0 and out[..., c].max() == 255
    flat = np.full((5, 5, 3), 77, np.uint8)
    assert np.array_equal(A.autocontrast(flat, cutoff=0.0), flat)


def test_autocontrast_cutoff_clips_outliers() -> None:
    img = np.full((10, 10, 3), 100, np.uint8)
    img[:5] = 120
    img[0, 0] = 0  # one outlier below, one above
    img[9, 9] = 255
    out = A.autocontrast(img, cutoff=2.0)
    assert out[1, 1, 0] == 255 and out[8, 8, 0] == 0  # 100..120 stretched to 0..255


def test_color_shift_adds_per_channel_and_saturates() -> None:
    img = np.array([[[0, 128, 250]]], np.uint8)
    drawn = A.draw_color_shift(np.random.default_rng(0), A.ColorShiftParams(offset=(9, 9)))
    assert drawn == {"offsets": [9, 9, 9]}
    assert A.color_shift(img, offsets=[9, 9, 9]).tolist() == [[[9, 137, 255]]]
    assert A.color_shift(img, offsets=[-9, 0, 9]).tolist() == [[[0, 128, 255]]]


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


@pytest.mark.parametrize("seed", range(4))
def test_augment_applies_the_reported_ops_in_order(seed: int, crop: np.ndarray) -> None:
    out, applied = augment(crop, np.random.default_rng(seed), AugmentConfig(ops=tuple(OPS)))
    replay = crop
    for a in applied:
        values = {k: v for k, v in a.items() if k != "op"}
        replay = OPS[a["op"]].apply(replay, **values)
    assert np.array_equal(out, replay)
    assert np.array_equal(apply_ops(crop, applied), out)
    assert apply_ops(crop, applied) is not crop


def test_apply_ops_refuses_what_it_cannot_replay(crop: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown operation 'blur'"):
        apply_ops(crop, [{"op": "blur", "sigma": 1.0}])
    with pytest.raises(ValueError, match="sharpen cannot take"):
        apply_ops(crop, [{"op": "sharpen", "alpha": 0.5}])  # lightness missing
    with pytest.raises(ValueError, match="solarize cannot take"):
        apply_ops(crop, [{"op": "solarize", "threshold": 9, "extra": 1}])
    with pytest.raises(ValueError, match="uint8"):
        apply_ops(crop.astype(np.float32), [])
    out = apply_ops(crop, [])
    assert np.array_equal(out, crop) and out is not crop


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
