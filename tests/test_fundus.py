"""anomalygen.fundus: reading any image file, the field of view, the square crop, CLAHE."""

from __future__ import annotations

import functools
import io
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile
from scipy import ndimage as ndi

from anomalygen.config import from_dict, to_dict
from anomalygen.errors import ConfigError, ImageError
from anomalygen.fundus import (
    MAX_PIXELS,
    FovParams,
    PreparedFundus,
    Square,
    apply_square,
    find_fov,
    load_fundus,
    prepare_fundus,
    read_image,
    unapply_square,
)
from tests.badfiles import (
    ODD_SHAPE,
    huge_png_header,
    odd_reference,
    write_bad_files,
    write_odd_but_valid_files,
)
from tests.conftest import SHARED_DATA
from tests.synthetic import make_fundus

# --------------------------------------------------------------------------------------------
# helpers (independent of the implementation: scipy labelling, analytic discs)
# --------------------------------------------------------------------------------------------


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float((a & b).sum() / max(1, (a | b).sum()))


def is_one_filled_blob(mask: np.ndarray) -> bool:
    """One 8-connected region with no holes (scipy, not the OpenCV code under test)."""
    mask = mask.astype(bool)
    _, n = ndi.label(mask, structure=np.ones((3, 3)))
    return n == 1 and bool((ndi.binary_fill_holes(mask) == mask).all())


def threshold_fov(rgb: np.ndarray, threshold: int = 25) -> np.ndarray:
    """Reference FOV at full resolution: 3x3 median of max(R, G, B) > a fixed threshold, largest
    region, holes filled."""
    bright = cv2.medianBlur(np.ascontiguousarray(rgb.max(axis=2)), 3) > threshold
    labels, _ = ndi.label(bright, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    fg = labels == sizes.argmax()
    background, count = ndi.label(~fg)
    edge = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    reaches_edge = np.zeros(count + 1, dtype=bool)
    reaches_edge[edge] = True
    reaches_edge[0] = False
    return ~reaches_edge[background]


def disc_image(
    shape: tuple[int, int],
    centre: tuple[float, float],
    radius: float,
    colour: tuple[int, int, int],
    glow: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A noisy black canvas with a disc, dark at its rim, and a black lesion inside; (rgb, FOV).

    ``glow`` (0..0.5) adds a halo outside the disc as bright as that fraction of the rim, as
    around IDRiD's discs.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - centre[0], xx - centre[1]) / radius
    truth = r <= 1.0
    colour_ = np.asarray(colour, dtype=np.float64)
    rgb = rng.integers(0, 6, size=(h, w, 3)).astype(np.float64)
    rgb += (glow * 0.4 * np.exp(-np.maximum(r - 1, 0) / 0.08))[..., None] * colour_
    disc = (1.0 - 0.6 * r**2)[..., None] * colour_  # the rim is 40 % as bright as the centre
    rgb[truth] = disc[truth]
    # A black "haemorrhage" well inside the disc must not make a hole in the FOV.
    cv2.circle(rgb, (round(centre[1]), round(centre[0])), max(1, round(radius / 5)), (0, 0, 0), -1)
    return np.clip(rgb, 0, 255).astype(np.uint8), truth


def assert_square_of(square: Square, fov: np.ndarray, size: int) -> None:
    """``square`` is the documented bounding square of ``fov`` for an output of ``size``.

    Side: the box's longer side, rounded up to a multiple of the largest power of two k with
    k <= side / size; centre: the box's (within a pixel, the rounding split either way).
    """
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    height, width = rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]
    longest = max(height, width)
    k = 2 ** max(0, int(np.log2(max(1, longest // size))))
    assert square.side % k == 0 and longest <= square.side < longest + k
    assert abs(square.y0 + square.side / 2 - (rows[0] + rows[-1] + 1) / 2) <= 1
    assert abs(square.x0 + square.side / 2 - (cols[0] + cols[-1] + 1) / 2) <= 1


def reference_bbox(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1), end exclusive, of :func:`threshold_fov`."""
    fov = threshold_fov(rgb)
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


# --------------------------------------------------------------------------------------------
# read_image
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("odd")
    write_odd_but_valid_files(folder)
    return folder


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("bad")
    return folder, write_bad_files(folder)


# name -> (compare with the colour or the grey reference, largest mean abs difference allowed)
ODD_EXPECTED = {
    "rgb16.png": ("rgb", 1.0),
    "grey16.png": ("grey", 1.0),
    "rgb16.tif": ("rgb", 1.0),
    "grey.png": ("grey", 0.1),
    "rgba.png": ("rgb", 2.0),
    "la.png": ("grey", 2.0),
    "palette.png": ("rgb", 2.0),
    "palette_transparent.png": ("rgb", 3.0),
    "cmyk.jpg": ("rgb", 3.0),
    "image.bmp": ("rgb", 0.0),
    "image.webp": ("rgb", 4.0),
    "exif_rotated.jpg": ("rgb", 4.0),
}


def test_odd_corpus_is_complete(tmp_path: Path) -> None:
    assert sorted(write_odd_but_valid_files(tmp_path)) == sorted(ODD_EXPECTED)


@pytest.mark.parametrize("name", sorted(ODD_EXPECTED))
def test_odd_but_valid_files_read_as_rgb8(odd_folder: Path, name: str) -> None:
    rgb = read_image(odd_folder / name)
    assert rgb.shape == (*ODD_SHAPE, 3)  # EXIF rotation applied: still wider than high
    assert rgb.dtype == np.uint8
    assert rgb.flags.c_contiguous and rgb.flags.writeable
    kind, tolerance = ODD_EXPECTED[name]
    ref = odd_reference()
    if kind == "grey":
        ref = cv2.cvtColor(cv2.cvtColor(ref, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    diff = np.abs(rgb.astype(int) - ref.astype(int)).mean()
    assert diff <= tolerance, f"{name}: mean |difference| {diff:.2f} > {tolerance}"
    prepared = load_fundus(odd_folder / name, size=64)
    assert prepared.fov.mean() > 0.6


def test_transparent_background_is_black(odd_folder: Path) -> None:
    for name in ("rgba.png", "la.png", "palette_transparent.png"):
        with Image.open(odd_folder / name) as im:
            alpha = np.asarray(im.convert("RGBA"))[..., 3]
        rgb = read_image(odd_folder / name)
        assert (alpha == 0).sum() > 1000
        assert rgb[alpha == 0].max() == 0, name  # the loud colours under it are gone


def test_partial_alpha_is_composited_on_black(tmp_path: Path) -> None:
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = 128
    Image.fromarray(rgba).save(tmp_path / "half.png")
    assert np.abs(read_image(tmp_path / "half.png")[0, 0].astype(int) - (100, 50, 25)).max() <= 1


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    cv2.imwrite(str(tmp_path / "grey16.png"), ramp)
    cv2.imwrite(str(tmp_path / "rgb16.png"), np.dstack([ramp, ramp[::-1], ramp.T]))
    cv2.imwrite(str(tmp_path / "rgb16.tif"), np.dstack([ramp, ramp[::-1], ramp.T]))
    expected = np.round(ramp / 257.0)
    grey = read_image(tmp_path / "grey16.png")
    assert np.abs(grey[..., 0] - expected).max() == 0
    for name in ("rgb16.png", "rgb16.tif"):
        rgb = read_image(tmp_path / name).astype(int)
        # OpenCV wrote BGR: red is ramp.T
        assert np.abs(rgb[..., 0] - expected.T).max() <= 1, name
        assert np.abs(rgb[..., 2] - expected).max() <= 1, name
    assert grey.max() == 255 and grey.min() == 0
    # A mid-grey 16-bit value is mid-grey, not white (as clipping to 255 would make it).
    assert 100 < grey[32, 32, 0] < 160


def test_exif_orientation_is_applied(odd_folder: Path) -> None:
    with Image.open(odd_folder / "exif_rotated.jpg") as im:
        assert im.size == (ODD_SHAPE[0], ODD_SHAPE[1])  # stored on its side
    rgb = read_image(odd_folder / "exif_rotated.jpg")
    ref = odd_reference().astype(int)
    assert np.abs(rgb.astype(int) - ref).mean() < np.abs(rgb[::-1, ::-1].astype(int) - ref).mean()


def test_float_images_are_refused_with_a_reason(tmp_path: Path) -> None:
    Image.fromarray(np.ones((16, 16), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ImageError, match=r"float\.tif: unsupported pixel format"):
        read_image(tmp_path / "float.tif")


@pytest.mark.parametrize(
    "name",
    [
        "empty.jpg",
        "truncated.jpg",
        "not_an_image.jpg",
        "huge_header.png",
        "corrupt.png",
        "all_black.png",
        "uniform_grey.png",
    ],
)
def test_bad_files_raise_one_line_image_errors(
    bad_folder: tuple[Path, dict[str, str]], name: str
) -> None:
    folder, expected = bad_folder
    assert name in expected
    with pytest.raises(ImageError) as info:
        load_fundus(folder / name, size=64)
    message = str(info.value)
    assert message.startswith(f"{folder / name}: ")
    assert expected[name] in message.lower()
    assert "\n" not in message


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"nope\.png: file not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a directory"):
        read_image(tmp_path)


def test_huge_header_is_refused_quickly(tmp_path: Path) -> None:
    for width, height in [(100_000, 100_000), (13_000, 12_000)]:  # Pillow's limit; ours
        path = tmp_path / f"huge_{width}.png"
        path.write_bytes(huge_png_header(width, height))
        assert width * height > MAX_PIXELS
        start = time.perf_counter()
        with pytest.raises(ImageError, match="too large"):
            read_image(path)
        assert time.perf_counter() - start < 1.0


def test_pixel_limit_is_checked_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.fromarray(make_fundus(64)).save(tmp_path / "small.png")
    assert read_image(tmp_path / "small.png", max_pixels=64 * 64).shape == (64, 64, 3)

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageError, match=r"small\.png: image too large \(64 x 64"):
        read_image(tmp_path / "small.png", max_pixels=64 * 64 - 1)


# --------------------------------------------------------------------------------------------
# find_fov, prepare_fundus
# --------------------------------------------------------------------------------------------


def check_prepared(p: PreparedFundus, size: int) -> None:
    assert isinstance(p.square, Square)
    assert p.image.shape == (size, size, 3) and p.image.dtype == np.uint8
    assert p.fov.shape == (size, size) and p.fov.dtype == np.uint8
    assert p.image.flags.c_contiguous and p.fov.flags.c_contiguous
    assert set(np.unique(p.fov)) <= {0, 1}
    assert p.image[p.fov == 0].max(initial=0) == 0
    assert is_one_filled_blob(p.fov)


def test_prepare_contract_on_a_synthetic_fundus(fundus_128: np.ndarray) -> None:
    before = fundus_128.copy()
    p = prepare_fundus(fundus_128, size=96)
    check_prepared(p, 96)
    assert np.array_equal(fundus_128, before)  # the input is not modified
    assert 0.72 < p.fov.mean() < 0.85  # a full disc fills pi/4 of its square
    assert p.image[p.fov == 1].mean() > 40


@pytest.mark.parametrize("cut", [False, True])
@pytest.mark.parametrize("width_ratio", [1.0, 1.25, 0.8])
def test_fov_matches_the_synthetic_disc(cut: bool, width_ratio: float) -> None:
    rgb = make_fundus(96, seed=2, cut=cut, width_ratio=width_ratio)
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    truth = np.hypot(yy - h / 2, xx - w / 2) <= 0.46 * 96 * (1.25 if cut else 1.0)
    if cut:
        band = int(h * 0.04)
        truth[:band] = truth[h - band :] = False
    fov = find_fov(rgb)
    assert fov.shape == (h, w) and fov.dtype == bool
    assert iou(fov, truth) > 0.97
    check_prepared(prepare_fundus(rgb, size=64), 64)


def test_cut_circle_is_padded_to_a_square() -> None:
    rgb = make_fundus(96, seed=4, cut=True, width_ratio=1.25)  # disc cut at top and bottom
    y0, x0, y1, x1 = reference_bbox(rgb)
    assert (y0, y1) == (int(96 * 0.04), 96 - int(96 * 0.04))  # cut by the black bands
    p = prepare_fundus(rgb, size=64)
    assert abs(p.square.side - (x1 - x0)) <= 1  # the side is the disc's width
    assert p.square.y0 < 0 < p.square.y0 + p.square.side - 96  # overhangs top and bottom
    pad_rows = round((y0 - p.square.y0) * 64 / p.square.side)
    assert pad_rows >= 4
    assert p.fov[: pad_rows - 1].max() == 0 and p.image[: pad_rows - 1].max() == 0
    assert p.fov[pad_rows + 1 : 64 - pad_rows - 1].any(axis=1).all()
    assert p.fov[:, 0].any() and p.fov[:, -1].any()  # the disc spans the full width


def test_prepare_is_deterministic(fundus_128: np.ndarray) -> None:
    a, b = prepare_fundus(fundus_128, size=64), prepare_fundus(fundus_128.copy(), size=64)
    assert a.square == b.square
    assert a.image.tobytes() == b.image.tobytes() and a.fov.tobytes() == b.fov.tobytes()


def test_without_clahe_the_image_is_the_masked_crop(fundus_128: np.ndarray) -> None:
    p = prepare_fundus(fundus_128, size=80, clahe=False)
    crop = apply_square(fundus_128, p.square, 80, nearest=False)
    assert np.array_equal(p.image, crop * p.fov[..., None])


def test_clahe_equalises_lightness_and_keeps_hue() -> None:
    rgb = make_fundus(128, seed=5)
    rgb = (rgb.astype(np.float32) * 0.5).astype(np.uint8)  # dull, low-contrast photograph
    plain = prepare_fundus(rgb, size=128, clahe=False)
    equalised = prepare_fundus(rgb, size=128, clahe=True)
    assert np.array_equal(plain.fov, equalised.fov)
    inside = plain.fov == 1
    lab_plain = cv2.cvtColor(plain.image, cv2.COLOR_RGB2LAB).astype(float)[inside]
    lab_eq = cv2.cvtColor(equalised.image, cv2.COLOR_RGB2LAB).astype(float)[inside]
    assert lab_eq[:, 0].std() > 1.15 * lab_plain[:, 0].std()  # more lightness contrast
    assert np.abs(lab_eq[:, 1:] - lab_plain[:, 1:]).mean() < 3.0  # a*, b* (hue) barely move


@pytest.mark.parametrize(
    "rgb, why",
    [
        (np.zeros((64, 64, 3), np.uint8), "black"),
        (np.full((64, 64, 3), 200, np.uint8), "uniform"),
        (np.random.default_rng(0).integers(0, 6, (64, 64, 3)).astype(np.uint8), "black"),
        (cv2.circle(np.zeros((128, 128, 3), np.uint8), (64, 64), 9, (200, 90, 40), -1), "5%"),
        (make_fundus(64)[:10, :10], "too small"),
    ],
)
def test_no_field_of_view_is_an_image_error(rgb: np.ndarray, why: str) -> None:
    for call in (find_fov, prepare_fundus):
        with pytest.raises(ImageError, match=f"^photo_7.png: no field of view.*{why}"):
            call(rgb, name="photo_7.png")


def test_a_photograph_without_black_border_is_all_field_of_view() -> None:
    rgb = np.ascontiguousarray(make_fundus(160, seed=8)[40:120, 30:130])  # inside the disc
    assert find_fov(rgb).all()
    p = prepare_fundus(rgb, size=50, clahe=False)
    assert p.square == Square(-10, 0, 100)  # 80 x 100 photograph, padded to a square
    assert p.fov[:4].max() == 0 and p.fov[6:44].all()


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="size"):
        prepare_fundus(make_fundus(64), size=4)
    with pytest.raises(ConfigError, match="min_threshold"):
        FovParams(min_threshold=80)
    with pytest.raises(ConfigError, match="median_ksize"):
        FovParams(median_ksize=4)
    params = FovParams(detect_size=256, min_area_fraction=0.1)
    assert from_dict(FovParams, to_dict(params)) == params
    # A stricter area limit is honoured.
    small_disc = cv2.circle(np.zeros((96, 96, 3), np.uint8), (48, 48), 20, (200, 90, 40), -1)
    assert find_fov(small_disc).any()  # 14 % of the image
    with pytest.raises(ImageError, match="20%"):
        find_fov(small_disc, params=FovParams(min_area_fraction=0.2))


def test_wrong_array_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="uint8"):
        prepare_fundus(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        find_fov(np.zeros((64, 64, 3), np.float32))


def test_big_photographs_get_a_square_that_halves_exactly() -> None:
    rgb = cv2.resize(make_fundus(200, seed=6), (331, 317), interpolation=cv2.INTER_LINEAR)
    size = 64
    p = prepare_fundus(rgb, size=size, clahe=False)
    y0, x0, y1, x1 = reference_bbox(rgb)
    longest = max(y1 - y0, x1 - x0)
    assert longest // size == 4  # so the side is rounded up to a multiple of 4
    assert p.square.side % 4 == 0 and 0 <= p.square.side - longest < 4 + 2
    check_prepared(p, size)


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(48, 96),
    w=st.integers(48, 128),
    radius_frac=st.floats(0.3, 0.65),
    dy=st.floats(-0.2, 0.2),
    dx=st.floats(-0.2, 0.2),
    colour=st.tuples(st.integers(60, 255), st.integers(10, 200), st.integers(0, 120)),
    glow=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**16),
)
def test_fov_of_random_discs(h, w, radius_frac, dy, dx, colour, glow, seed) -> None:
    radius = radius_frac * min(h, w)
    centre = (h / 2 + dy * h, w / 2 + dx * w)  # may be cut by the image edges
    rgb, truth = disc_image((h, w), centre, radius, colour, glow, seed)
    fov = find_fov(rgb)
    assert iou(fov, truth) > 0.95
    assert is_one_filled_blob(fov)  # the black lesion inside is not a hole
    p = prepare_fundus(rgb, size=32)
    check_prepared(p, 32)
    assert_square_of(p.square, fov, 32)


# --------------------------------------------------------------------------------------------
# apply_square
# --------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 60),
    w=st.integers(1, 60),
    y0=st.integers(-40, 40),
    x0=st.integers(-40, 40),
    side=st.integers(1, 120),
    size=st.integers(1, 48),
)
def test_apply_square_of_ones_is_the_valid_region(h, w, y0, x0, side, size) -> None:
    square = Square(y0, x0, side)
    centres = np.arange(size) + 0.5  # output pixel centres, in output pixels
    rows = (y0 + centres * side / size >= 0) & (y0 + centres * side / size < h)
    cols = (x0 + centres * side / size >= 0) & (x0 + centres * side / size < w)
    expected = rows[:, None] & cols[None, :]

    nearest = apply_square(np.ones((h, w), np.uint8), square, size, nearest=True)
    assert nearest.shape == (size, size) and nearest.dtype == np.uint8
    assert np.array_equal(nearest == 1, expected)

    smooth = apply_square(np.ones((h, w), np.float32), square, size, nearest=False)
    assert smooth.shape == (size, size) and smooth.dtype == np.float32
    assert ((smooth >= -1e-6) & (smooth <= 1 + 1e-6)).all()
    # Exact where an output pixel's footprint, widened by an output pixel (or a source pixel
    # when enlarging), lies wholly inside or wholly outside the image.
    step = side / size
    lo = np.arange(size) * step
    widen = max(1.0, step)
    inside_y = (y0 + lo - widen >= 0) & (y0 + lo + step + widen <= h)
    inside_x = (x0 + lo - widen >= 0) & (x0 + lo + step + widen <= w)
    touch_y = (y0 + lo + step + widen > 0) & (y0 + lo - widen < h)
    touch_x = (x0 + lo + step + widen > 0) & (x0 + lo - widen < w)
    inner = inside_y[:, None] & inside_x[None, :]
    outer = ~(touch_y[:, None] & touch_x[None, :])
    assert np.allclose(smooth[inner], 1, atol=1e-5)
    assert np.allclose(smooth[outer], 0, atol=1e-5)
    if side >= size:  # shrinking averages areas: the mean is the square's valid fraction
        overlap_y = max(0, min(h, y0 + side) - max(0, y0))
        overlap_x = max(0, min(w, x0 + side) - max(0, x0))
        assert abs(smooth.mean() - overlap_y * overlap_x / side**2) < 1e-4


def test_apply_square_nearest_keeps_values_and_dtypes() -> None:
    labels = np.random.default_rng(0).choice(np.array([0, 3, 7], np.int64), size=(50, 70))
    out = apply_square(labels, Square(-10, 5, 60), 40, nearest=True)
    assert out.dtype == np.int64 and set(np.unique(out)) <= {0, 3, 7}
    assert apply_square(labels > 0, Square(0, 0, 50), 25, nearest=True).dtype == bool
    assert apply_square(labels, Square(0, 0, 50), 25, nearest=False).dtype == np.float64
    assert apply_square(
        np.zeros((50, 70, 1), np.uint8), Square(0, 0, 50), 25, nearest=False
    ).shape == (25, 25, 1)
    assert apply_square(
        np.zeros((50, 70, 5), np.uint8), Square(0, 0, 50), 25, nearest=True
    ).shape == (25, 25, 5)


def test_apply_square_nearest_samples_pixel_centres() -> None:
    coords = np.arange(100, dtype=np.int64)[:, None].repeat(3, axis=1)  # value = row index
    out = apply_square(coords, Square(10, 0, 60), 20, nearest=True)
    assert out[:, 0].tolist() == [10 + (3 * i + 1) for i in range(20)]  # centre of each 3-block


@pytest.mark.parametrize(
    "square", [Square(-40, -13, 400), Square(7, 3, 256), Square(-3, 50, 201), Square(5, -7, 384)]
)
def test_two_stage_shrink_matches_a_single_resize(square: Square) -> None:
    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur(rng.integers(0, 256, (300, 330, 3)).astype(np.uint8), (0, 0), 3)
    cv2.circle(img, (200, 120), 15, (255, 255, 255), -1)
    size = 64
    out = apply_square(img, square, size, nearest=False)
    # Reference: pad the whole square, then one INTER_AREA resize.
    canvas = np.zeros((square.side, square.side, 3), np.uint8)
    ys, xs = max(0, square.y0), max(0, square.x0)
    ye, xe = min(300, square.y0 + square.side), min(330, square.x0 + square.side)
    canvas[ys - square.y0 : ye - square.y0, xs - square.x0 : xe - square.x0] = img[ys:ye, xs:xe]
    ref = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < 1.0

    def centroid(a: np.ndarray) -> np.ndarray:
        weight = (a.astype(float).sum(axis=2) > 600).astype(float)
        return np.array(ndi.center_of_mass(weight))

    assert np.abs(centroid(out) - centroid(ref)).max() < 0.15


# --------------------------------------------------------------------------------------------
# the real photographs in ../shared/data
# --------------------------------------------------------------------------------------------

SHARED_IMAGES = sorted(
    str(p.relative_to(SHARED_DATA))
    for p in SHARED_DATA.rglob("*")
    if p.suffix.lower() in {".jpg", ".png"} and "Groundtruths" not in str(p)
) or ["<../shared/data absent>"]
IDRID = "idrid-mini/A. Segmentation"
IDRID_IMAGES = {
    "IDRiD_01": f"{IDRID}/1. Original Images/a. Training Set/IDRiD_01.jpg",
    "IDRiD_55": f"{IDRID}/1. Original Images/b. Testing Set/IDRiD_55.jpg",
}
GROUNDTRUTH = f"{IDRID}/2. All Segmentation Groundtruths"
IDRID_EX = {
    "IDRiD_01": f"{GROUNDTRUTH}/a. Training Set/3. Hard Exudates/IDRiD_01_EX.tif",
    "IDRiD_55": f"{GROUNDTRUTH}/b. Testing Set/3. Hard Exudates/IDRiD_55_EX.tif",
}


@functools.cache
def shared_rgb(relative: str) -> np.ndarray:
    rgb = read_image(SHARED_DATA / relative)
    rgb.flags.writeable = False  # shared between tests
    return rgb


@pytest.mark.parametrize("relative", SHARED_IMAGES)
def test_real_photographs_prepare(shared_data: Path, relative: str) -> None:
    rgb = shared_rgb(relative)
    p = prepare_fundus(rgb, size=256, name=relative)
    check_prepared(p, 256)
    # A full disc covers pi/4 = 0.785 of its square, HRF's cut discs about 0.65.
    assert 0.55 < p.fov.mean() < 0.82
    y0, x0, y1, x1 = reference_bbox(rgb)
    slack = 12  # IDRiD's glow around the disc is brighter than the reference threshold
    assert abs(p.square.side - max(y1 - y0, x1 - x0)) <= slack
    if Path(relative).name.startswith("HRF"):  # cut at top and bottom: side = disc width
        assert y0 == 0 and y1 == rgb.shape[0]
        assert p.square.side > rgb.shape[0] and p.square.y0 < 0
        assert abs(p.square.side - (x1 - x0)) <= 3


@pytest.mark.parametrize(
    "relative", [r for r in SHARED_IMAGES if "HRF_07_dr" not in r and "IDRiD_55" not in r]
)
def test_real_photographs_fov_at_full_resolution(shared_data: Path, relative: str) -> None:
    rgb = shared_rgb(relative)
    fov = find_fov(rgb, name=relative)
    assert fov.shape == rgb.shape[:2]
    assert iou(fov, threshold_fov(rgb)) > 0.98
    # The square, found on a coarse grid and refined on strips, is exactly that of this mask.
    assert_square_of(prepare_fundus(rgb, size=256).square, fov, 256)


@pytest.mark.parametrize("image_id", sorted(IDRID_IMAGES))
def test_idrid_lesion_mask_lands_on_the_exudates(shared_data: Path, image_id: str) -> None:
    rgb = shared_rgb(IDRID_IMAGES[image_id])
    with Image.open(SHARED_DATA / IDRID_EX[image_id]) as im:
        assert im.mode == "P"
        lesion = np.asarray(im) > 0  # palette indices 0/1: any value > 0 is lesion
    assert lesion.shape == rgb.shape[:2]
    size = 512
    p = prepare_fundus(rgb, size=size, clahe=False, name=image_id)
    mask = apply_square(lesion, p.square, size, nearest=True)
    assert mask.sum() > 50 and not (mask & (p.fov == 0)).any()
    # Hard exudates are bright yellow: far brighter in green than the retina around them.
    green = p.image[..., 1].astype(float)
    assert green[mask].mean() > green[p.fov == 1].mean() + 25
    # And the mask sits exactly on them: no shift of it matches better. (A square moved by
    # 7 original pixels, 1 output pixel, loses about 1 grey level to the best shift.)
    scores = {
        (dy, dx): green[np.roll(mask, (dy, dx), axis=(0, 1))].mean()
        for dy in range(-3, 4)
        for dx in range(-3, 4)
    }
    assert scores[(0, 0)] >= max(scores.values()) - 0.25, scores


def test_load_fundus_names_the_file(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format="PNG")
    (tmp_path / "dark.png").write_bytes(buf.getvalue())
    with pytest.raises(ImageError, match=r"dark\.png: no field of view"):
        load_fundus(tmp_path / "dark.png")
    Image.fromarray(make_fundus(100, seed=9)).save(tmp_path / "ok.png")
    p = load_fundus(tmp_path / "ok.png", size=48)
    check_prepared(p, 48)


# --------------------------------------------------------------------------------------------
# unapply_square: the prepared frame back to the photograph's


@pytest.mark.parametrize("size", [60, 120, 240, 30, 37])
def test_unapply_square_inverts_apply_square(size: int) -> None:
    square = Square(y0=-5, x0=3, side=60)  # overhangs the top; the image ends inside it
    shape = (50, 70)
    inside = np.zeros(shape, bool)
    inside[0:50, 3:63] = True
    labels = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    back = unapply_square(apply_square(labels, square, size, nearest=True), square, shape,
                          nearest=True)  # fmt: skip
    assert back.dtype == np.uint8 and not back[~inside].any()
    if size % 60 == 0:  # enlarged by a whole factor (or not resized): every pixel comes back
        np.testing.assert_array_equal(back[inside], labels[inside])
    # a linear ramp comes back exactly where no interpolation reaches the padding
    ramp = np.fromfunction(lambda y, x: 2.0 * y + 1.5 * x, shape).astype(np.float32)
    smooth = unapply_square(apply_square(ramp, square, size, nearest=False), square, shape,
                            nearest=False)  # fmt: skip
    assert smooth.dtype == np.float32 and not smooth[:, :2].any() and not smooth[:, 64:].any()
    tolerance = 0.2 if size % 30 else 1e-3
    np.testing.assert_allclose(smooth[8:42, 12:55], ramp[8:42, 12:55], atol=tolerance)


def test_unapply_square_puts_a_pixel_where_it_came_from() -> None:
    photo = make_fundus(90, seed=2, width_ratio=1.4)  # 90 x 126, disc centred
    prepared = prepare_fundus(photo, 64, clahe=False)
    spot = np.zeros((64, 64), np.float32)
    spot[20, 40] = 1.0
    back = unapply_square(spot, prepared.square, photo.shape[:2], nearest=True)
    ys, xs = np.nonzero(back)
    k = prepared.square.side / 64
    assert ys.min() == pytest.approx(prepared.square.y0 + 20 * k, abs=1)
    assert xs.min() == pytest.approx(prepared.square.x0 + 40 * k, abs=1)
    assert ys.max() - ys.min() + 1 == pytest.approx(k, abs=1)
    with pytest.raises(ValueError, match="size, size"):
        unapply_square(np.zeros((4, 5)), prepared.square, (9, 9), nearest=True)
