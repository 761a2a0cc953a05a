"""Overlays: Fig. 4 colours (green TP, yellow FP, red FN), heat maps inside the FOV only."""

from __future__ import annotations

import numpy as np
import pytest

from resynth_models.overlay import (
    caption,
    colorbar,
    fig4_legend,
    fig4_overlay,
    heatmap_overlay,
    side_by_side,
)


@pytest.fixture()
def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A grey 16x16 image; FOV = all but the left 4 columns; pred and gt overlap in a band."""
    image = np.full((16, 16, 3), 100, dtype=np.uint8)
    image[:, :, 2] = 60  # not neutral grey, so an untouched pixel is recognisable
    fov = np.ones((16, 16), dtype=np.uint8)
    fov[:, :4] = 0
    pred = np.zeros((16, 16), dtype=np.uint8)
    gt = np.zeros((16, 16), dtype=np.uint8)
    pred[2:6, :] = 1  # rows 2-5: predicted
    gt[4:8, :] = 1  # rows 4-7: true -> rows 4-5 TP, rows 2-3 FP, rows 6-7 FN
    return image, pred, gt, fov


def _hue(rgb: np.ndarray) -> str:
    r, g, b = (int(v) for v in rgb)
    if g > r + 60 and g > b + 60:
        return "green"
    if r > b + 60 and g > b + 60 and abs(r - g) < 40:
        return "yellow"
    if r > g + 60 and r > b + 60:
        return "red"
    return "other"


def test_fig4_colours(scene) -> None:
    image, pred, gt, fov = scene
    before = image.copy()
    out = fig4_overlay(image, pred, gt, fov)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(image, before)  # the input is not modified
    assert _hue(out[4, 10]) == "green"  # TP
    assert _hue(out[2, 10]) == "yellow"  # FP
    assert _hue(out[7, 10]) == "red"  # FN
    np.testing.assert_array_equal(out[10, 10], image[10, 10])  # TN: untouched
    np.testing.assert_array_equal(out[:, :4], image[:, :4])  # outside the FOV: untouched
    # Translucent: the photograph still shows through (not the pure colour).
    assert tuple(out[4, 10]) != (0, 255, 0)
    opaque = fig4_overlay(image, pred, gt, fov, alpha=1.0)
    assert tuple(opaque[4, 10]) == (0, 255, 0)
    assert tuple(opaque[2, 10]) == (255, 255, 0)
    assert tuple(opaque[7, 10]) == (255, 0, 0)


def test_fig4_without_fov_and_legend(scene) -> None:
    image, pred, gt, _ = scene
    out = fig4_overlay(image, pred, gt)
    assert _hue(out[4, 1]) == "green"  # no FOV: everything counts
    big = np.full((128, 128, 3), 90, dtype=np.uint8)
    with_key = fig4_overlay(big, np.zeros((128, 128)), np.zeros((128, 128)), legend=True)
    assert not np.array_equal(with_key[:20, :40], big[:20, :40])  # the key, top-left
    np.testing.assert_array_equal(with_key[100:, 100:], big[100:, 100:])
    band = fig4_legend(300, side=128)
    assert band.shape[1] == 300 and band.ndim == 3
    assert (band == (0, 255, 0)).all(axis=2).any()  # the green swatch


def test_fig4_rejects_bad_shapes(scene) -> None:
    image, pred, gt, fov = scene
    with pytest.raises(ValueError, match="shape"):
        fig4_overlay(image, pred[:8], gt, fov)
    with pytest.raises(ValueError, match="RGB uint8"):
        fig4_overlay(image.astype(np.float32), pred, gt, fov)


def test_heatmap_inside_fov_only(scene) -> None:
    image, _, _, fov = scene
    prob = np.zeros((16, 16), dtype=np.float32)
    prob[:, 8:] = 1.0
    out = heatmap_overlay(image, prob, fov, alpha=0.6)
    np.testing.assert_array_equal(out[:, :4], image[:, :4])  # outside the FOV
    assert not np.array_equal(out[:, 4:], image[:, 4:])
    # inferno: high probability is bright yellow, low is near black
    assert out[5, 12].astype(int).sum() > out[5, 5].astype(int).sum() + 150
    assert _hue(heatmap_overlay(image, prob, fov, alpha=1.0)[5, 12]) in {"yellow", "other"}
    turbo = heatmap_overlay(image, prob, fov, colormap="turbo")
    assert not np.array_equal(turbo, out)
    wide = heatmap_overlay(image, prob, fov, with_colorbar=True)
    assert wide.shape[0] == 16 and wide.shape[1] > 16
    np.testing.assert_array_equal(wide[:, :16], heatmap_overlay(image, prob, fov))
    with pytest.raises(ValueError, match="colour map"):
        heatmap_overlay(image, prob, fov, colormap="jet")
    nan = np.full((16, 16), np.nan, dtype=np.float32)
    assert heatmap_overlay(image, nan, fov).shape == image.shape  # NaN drawn as 0, no crash


def test_colorbar_caption_side_by_side() -> None:
    bar = colorbar(200)
    assert bar.shape[0] == 200 and bar.dtype == np.uint8
    column = bar[:, 12:14].astype(int).sum(axis=(1, 2))
    assert column[10] > column[180]  # bright (1) at the top, dark (0) at the bottom
    a = np.zeros((32, 40, 3), np.uint8)
    b = np.full((32, 24, 3), 255, np.uint8)
    joined = side_by_side([a, b], gap=2)
    assert joined.shape == (32, 66, 3)
    with pytest.raises(ValueError, match="high"):
        side_by_side([a, b[:10]])
    short, long = caption(joined, "x"), caption(joined, "a much longer caption " * 5)
    assert short.shape == long.shape and short.shape[0] > 32  # band height does not depend on text
    assert long[:, :, :].max() == 255  # text drawn
    below = caption(joined, "x", where="bottom")
    np.testing.assert_array_equal(below[:32], joined)
