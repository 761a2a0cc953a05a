"""Whole-image photometric augmentation (resynth_models.photometric) and its use in training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomalygen.errors import ConfigError
from resynth_models.data import SyntheticDataset, photometric_rng
from resynth_models.photometric import (
    NO_PHOTOMETRIC,
    Photometric,
    PhotometricConfig,
    apply_photometric,
    draw_photometric,
)
from tests.synthetic import make_fundus, render_tiny_store


def test_identity_and_disabled() -> None:
    image = make_fundus(64, 1)
    assert apply_photometric(image, Photometric()) is image
    rng = np.random.default_rng(0)
    assert draw_photometric(rng, NO_PHOTOMETRIC) == Photometric()
    # a disabled config draws as many numbers as an enabled one: streams stay aligned
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    draw_photometric(a, NO_PHOTOMETRIC)
    draw_photometric(b, PhotometricConfig())
    assert a.random() == b.random()


def test_gains_gamma_and_blur() -> None:
    image = make_fundus(64, 2)
    brighter = apply_photometric(image, Photometric(gains=(1.1, 1.0, 0.9)))
    inside = image.max(axis=2) > 30
    ratio = brighter[inside].astype(float).mean(0) / image[inside].astype(float).mean(0)
    assert ratio[0] > 1.05 and ratio[2] < 0.95 and ratio[1] == pytest.approx(1.0, abs=0.01)
    dark = apply_photometric(image, Photometric(gamma=1.25))
    assert dark[inside].mean() < image[inside].mean()
    black = image.max(axis=2) == 0
    for t in (Photometric(gains=(1.15, 1.15, 1.15), gamma=0.8), Photometric(gamma=1.2)):
        assert (apply_photometric(image, t)[black] == 0).all()  # the border stays black
    blurred = apply_photometric(image, Photometric(sigma=1.0))
    assert (
        np.abs(np.diff(blurred.astype(float), axis=1)).mean()
        < np.abs(np.diff(image.astype(float), axis=1)).mean()
    )


def test_draws_stay_in_range() -> None:
    config = PhotometricConfig(gain=(0.9, 1.1), gamma=(0.8, 1.25), p_blur=0.5, blur=(0.3, 0.6))
    rng = np.random.default_rng(3)
    draws = [draw_photometric(rng, config) for _ in range(200)]
    assert all(0.9 <= g <= 1.1 for t in draws for g in t.gains)
    assert all(0.8 <= t.gamma <= 1.25 for t in draws)
    blurred = [t.sigma for t in draws if t.sigma > 0]
    assert 60 < len(blurred) < 140 and all(0.3 <= s <= 0.6 for s in blurred)
    with pytest.raises(ConfigError, match=r"photometric\.gain"):
        PhotometricConfig(gain=(1.2, 0.8))
    with pytest.raises(ConfigError, match="p_blur"):
        PhotometricConfig(p_blur=2.0)


def test_dataset_applies_it_reproducibly_and_leaves_masks(tmp_path: Path) -> None:
    store_path = render_tiny_store(tmp_path, 8)
    import anomalygen

    store = anomalygen.open_store(store_path)
    plain = SyntheticDataset(store)
    jittered = SyntheticDataset(store, photometric=PhotometricConfig(p_blur=0.0))
    again = SyntheticDataset(store, photometric=PhotometricConfig(p_blur=0.0))
    changed = 0
    for k in range(len(plain)):
        a, b, c = plain[(0, k)], jittered[(0, k)], again[(0, k)]
        assert (a["mask"] == b["mask"]).all()
        assert (b["image"] == c["image"]).all()  # a function of (seed, stage, pass, index)
        changed += bool((a["image"] != b["image"]).any())
    assert changed == len(plain)
    other_pass = jittered[(1, 0)]["image"]
    assert (other_pass != jittered[(0, 0)]["image"]).any()
    assert photometric_rng(0, 2, 0, 0).random() != photometric_rng(0, 2, 1, 0).random()
