"""resynth_models.datasets: the IDRiD adapter (real idrid-mini photographs and a generated layout
with several lesion types), EyeQ filtering from a generated CSV, the folder layout and masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalygen.errors import AnomalygenError, ConfigError, ImageError
from resynth_models.datasets import (
    EvalItem,
    eyeq_items,
    folder_items,
    idrid_items,
    load_item,
    open_eval_set,
    read_mask,
)
from tests.synthetic import make_fundus

SIZE = 64
SEG = "A. Segmentation"
IMAGES = f"{SEG}/1. Original Images"
TRUTHS = f"{SEG}/2. All Segmentation Groundtruths"
TEST = "b. Testing Set"
TRAIN = "a. Training Set"
FOLDERS = {
    "MA": "1. Microaneurysms",
    "HE": "2. Haemorrhages",
    "EX": "3. Hard Exudates",
    "SE": "4. Soft Exudates",
    "OD": "5. Optic Disc",
}


def save_palette_tif(path: Path, mask: np.ndarray) -> None:
    """A 0/1 palette TIFF like IDRiD's (index 1 is red: a grey conversion would give 76)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.astype(np.uint8).tobytes())
    im.putpalette([0, 0, 0, 255, 0, 0])
    im.save(path)


def save_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def block(shape: tuple[int, int], y: int, x: int, side: int = 10) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[y : y + side, x : x + side] = 1
    return mask


def expected_centre(y: float, x: float, prepared) -> tuple[float, float]:
    """Where an original pixel centre lands in the prepared image (same crop and resize)."""
    sq = prepared.square
    scale = SIZE / sq.side
    return (y - sq.y0 + 0.5) * scale - 0.5, (x - sq.x0 + 0.5) * scale - 0.5


@pytest.fixture()
def idrid_layout(tmp_path: Path) -> Path:
    """A generated IDRiD layout: three test images (96 x 120) and one training image.

    IDRiD_55: MA and EX blocks, plus an optic-disc mask covering everything (not a lesion);
    IDRiD_56: HE only; IDRiD_57: no mask at all; IDRiD_01 (training): SE.
    """
    shape = (96, 120)
    for k, name in enumerate(["IDRiD_55", "IDRiD_56", "IDRiD_57"]):
        save_rgb(tmp_path / IMAGES / TEST / f"{name}.jpg", make_fundus(96, k, width_ratio=1.25))
    save_rgb(tmp_path / IMAGES / TRAIN / "IDRiD_01.jpg", make_fundus(96, 9, width_ratio=1.25))
    truth = tmp_path / TRUTHS / TEST
    save_palette_tif(truth / FOLDERS["MA"] / "IDRiD_55_MA.tif", block(shape, 30, 40))
    save_palette_tif(truth / FOLDERS["EX"] / "IDRiD_55_EX.tif", block(shape, 50, 70))
    save_palette_tif(truth / FOLDERS["OD"] / "IDRiD_55_OD.tif", np.ones(shape, np.uint8))
    save_palette_tif(truth / FOLDERS["HE"] / "IDRiD_56_HE.tif", block(shape, 45, 45, 14))
    (truth / FOLDERS["SE"]).mkdir(parents=True)  # a lesion type no test image has
    save_palette_tif(
        tmp_path / TRUTHS / TRAIN / FOLDERS["SE"] / "IDRiD_01_SE.tif", block(shape, 40, 50)
    )
    return tmp_path


def test_idrid_generated_layout(idrid_layout: Path, tmp_path: Path) -> None:
    dataset = idrid_items(idrid_layout, split="test")
    assert [item.name for item in dataset] == ["IDRiD_55.jpg", "IDRiD_56.jpg", "IDRiD_57.jpg"]
    assert all(item.label == 1 and item.segmented for item in dataset)
    first = dataset[0]
    assert [p.name for p in first.mask_paths] == ["IDRiD_55_MA.tif", "IDRiD_55_EX.tif"]  # no OD
    assert any("IDRiD_57.jpg" in line and "no lesion mask" in line for line in dataset.problems)

    prepared, mask = load_item(first, SIZE)
    assert mask is not None and mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert not (mask & (1 - prepared.fov)).any()
    assert mask.sum() < 0.1 * prepared.fov.sum()  # the optic-disc mask (everything) is ignored
    # union semantics: the union's mask is the OR of each lesion type's mask alone
    singles = [
        load_item(EvalItem("x", first.path, 1, mask_paths=(p,), segmented=True), SIZE)[1]
        for p in first.mask_paths
    ]
    np.testing.assert_array_equal(mask, singles[0] | singles[1])
    assert singles[0].any() and singles[1].any() and not (singles[0] & singles[1]).any()
    # each block lands where the crop and resize send it
    for single, (y, x) in zip(singles, [(30, 40), (50, 70)], strict=True):
        ys, xs = np.nonzero(single)
        ey, ex = expected_centre(y + 4.5, x + 4.5, prepared)
        assert abs(ys.mean() - ey) <= 1.0 and abs(xs.mean() - ex) <= 1.0

    _, empty = load_item(dataset[2], SIZE)  # abnormal without any mask file: empty, not None
    assert empty is not None and not empty.any()

    # the root may be given at "A. Segmentation"; "all" (the default, the paper's Table 2)
    # takes both splits
    assert len(idrid_items(idrid_layout / SEG, split="test")) == 3
    both = idrid_items(idrid_layout)
    assert both[0].name == "IDRiD_01.jpg" and len(both) == 4


def test_idrid_normals_and_errors(idrid_layout: Path, fundus_folder: Path, tmp_path: Path) -> None:
    dataset = idrid_items(idrid_layout, split="test", normal_dir=fundus_folder)
    normals = [item for item in dataset if item.label == 0]
    assert len(normals) == 6 and dataset.n_abnormal == 3 and dataset.n_normal == 6
    assert normals[0].name.startswith("normal/") and normals[0].segmented
    prepared, mask = load_item(normals[0], SIZE)
    assert mask is not None and mask.shape == (SIZE, SIZE) and not mask.any()
    assert prepared.image.shape == (SIZE, SIZE, 3)

    with pytest.raises(AnomalygenError, match=r"IDRiD layout not found: expected .*1\. Original"):
        idrid_items(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="split"):
        idrid_items(idrid_layout, split="validation")
    with pytest.raises(AnomalygenError, match="not a folder"):
        idrid_items(idrid_layout, normal_dir=tmp_path / "missing")


def test_mask_size_and_bad_files_raise_image_error(idrid_layout: Path, tmp_path: Path) -> None:
    image = idrid_layout / IMAGES / TEST / "IDRiD_56.jpg"
    wrong = tmp_path / "wrong.tif"
    save_palette_tif(wrong, np.ones((50, 50), np.uint8))
    with pytest.raises(ImageError, match=r"wrong\.tif: mask is 50 x 50 pixels"):
        load_item(EvalItem("x", image, 1, mask_paths=(wrong,), segmented=True), SIZE)
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"not a tiff at all")
    with pytest.raises(ImageError, match=r"garbage\.tif"):
        load_item(EvalItem("x", image, 1, mask_paths=(garbage,), segmented=True), SIZE)
    black = tmp_path / "black.png"
    save_rgb(black, np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ImageError, match=r"black\.png"):
        load_item(EvalItem("x", black, 0), SIZE)


def test_idrid_real_photographs(shared_data: Path, tmp_path: Path) -> None:
    """idrid-mini: the real EX mask lands on the exudates of the prepared image; union with a
    second lesion type and an ignored optic-disc mask on a layout linking the real files."""
    dataset = idrid_items(shared_data / "idrid-mini", split="test")  # IDRiD_55
    assert [item.name for item in dataset] == ["IDRiD_55.jpg"] and not dataset.problems
    item = dataset[0]
    raw = read_mask(item.mask_paths[0])
    assert set(np.unique(raw)) == {0, 1}  # palette indices, not the grey value 76

    prepared, mask = load_item(item, 128, clahe=False)
    assert mask is not None and set(np.unique(mask)) == {0, 1}
    assert not (mask & (1 - prepared.fov)).any()
    green = prepared.image[..., 1].astype(np.float64)
    lesion, fov = mask.astype(bool), prepared.fov.astype(bool)
    assert green[lesion].mean() > green[fov & ~lesion].mean() + 20  # exudates are bright
    for shift in [(5, 0), (0, 5), (-5, -5)]:  # and the mask is on them, not beside them
        moved = np.roll(lesion, shift, axis=(0, 1)) & fov
        assert green[lesion].mean() > green[moved].mean() + 5

    # union semantics on the real photograph: EX (real) + a generated HE block; OD ignored
    layout = tmp_path / "idrid"
    (layout / IMAGES / TEST).mkdir(parents=True)
    (layout / IMAGES / TEST / "IDRiD_55.jpg").symlink_to(item.path)
    (layout / TRUTHS / TEST / FOLDERS["EX"]).mkdir(parents=True)
    (layout / TRUTHS / TEST / FOLDERS["EX"] / "IDRiD_55_EX.tif").symlink_to(item.mask_paths[0])
    he = block(raw.shape, 1000, 1500, 300)
    save_palette_tif(layout / TRUTHS / TEST / FOLDERS["HE"] / "IDRiD_55_HE.tif", he)
    save_palette_tif(layout / TRUTHS / TEST / FOLDERS["OD"] / "IDRiD_55_OD.tif", 1 - he)
    (combined,) = idrid_items(layout).items
    assert [p.name for p in combined.mask_paths] == ["IDRiD_55_HE.tif", "IDRiD_55_EX.tif"]
    _, union = load_item(combined, 128, clahe=False)
    he_only = load_item(
        EvalItem("he", item.path, 1, mask_paths=combined.mask_paths[:1], segmented=True), 128
    )[1]
    np.testing.assert_array_equal(union, mask | he_only)
    assert (union.astype(int) - mask).sum() > 0


EYEQ_ROWS = [
    # image, quality, DR grade
    ("10_left.jpeg", 0, 0),  # file 10_left.jpeg
    ("10_right.jpeg", 0, 2),  # file 10_right.png: name with another extension
    ("13_left", 0, 4),  # file 13_left.jpeg: name without extension
    ("15_left.jpeg", 1, 1),  # usable quality: left out by default
    ("16_left.jpeg", 2, 3),  # reject
    ("20_left.jpeg", 0, 1),  # no such file
    ("21_right.jpeg", "0.0", "3.0"),  # numbers written as floats
    ("10_left.jpeg", 0, 0),  # listed twice
]


@pytest.fixture()
def eyeq_layout(tmp_path: Path) -> Path:
    folder = tmp_path / "eyeq"
    files = ["10_left.jpeg", "10_right.png", "13_left.jpeg", "15_left.jpeg", "16_left.jpeg"]
    for k, name in enumerate([*files, "21_right.jpeg"]):
        save_rgb(folder / name, make_fundus(64, k))
    lines = [",image,quality,DR_grade"]
    lines += [f"{i},{img},{q},{g}" for i, (img, q, g) in enumerate(EYEQ_ROWS)]
    (folder / "Label_EyeQ_test.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_eyeq_filtering(eyeq_layout: Path) -> None:
    dataset = eyeq_items(eyeq_layout)
    got = {item.name: (item.label, item.grade) for item in dataset}
    assert got == {
        "10_left.jpeg": (0, 0),
        "10_right.png": (1, 2),
        "13_left.jpeg": (1, 4),
        "21_right.jpeg": (1, 3),
    }
    assert not dataset.has_pixel_labels
    assert any("line 7" in p and "20_left.jpeg" in p and "no such" in p for p in dataset.problems)
    assert any("more than once" in p for p in dataset.problems)
    assert len(dataset.problems) == 2

    usable = eyeq_items(eyeq_layout, eyeq_layout / "Label_EyeQ_test.csv", quality=(0, 1))
    assert ("15_left.jpeg", 1) in {(item.name, item.grade) for item in usable}
    assert {item.grade for item in eyeq_items(eyeq_layout, grades=(0, 4))} == {0, 4}

    prepared, mask = load_item(dataset[0], SIZE)
    assert mask is None and prepared.image.shape == (SIZE, SIZE, 3)


def test_eyeq_errors(eyeq_layout: Path, tmp_path: Path) -> None:
    with pytest.raises(AnomalygenError, match=r"Label_EyeQ_test\.csv not found"):
        eyeq_items(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("image,quality,DR_grade\n10_left.jpeg,0,7\n")
    with pytest.raises(AnomalygenError, match=r"bad\.csv line 2: DR_grade '7'"):
        eyeq_items(eyeq_layout, bad)
    bad.write_text("image,level\n10_left.jpeg,0\n")
    with pytest.raises(AnomalygenError, match="no column 'quality'"):
        eyeq_items(eyeq_layout, bad)


def test_folder_layout(tmp_path: Path) -> None:
    for k in range(2):
        save_rgb(tmp_path / "normal" / f"n{k}.png", make_fundus(80, k))
    save_rgb(tmp_path / "abnormal" / "a0.jpg", make_fundus(80, 5))
    save_rgb(tmp_path / "abnormal" / "a1.png", make_fundus(80, 6))
    (tmp_path / "masks").mkdir()
    Image.fromarray(block((80, 80), 30, 30, 12) * 255).save(tmp_path / "masks" / "a0.png")
    Image.fromarray(block((80, 80), 5, 5) * 255).save(tmp_path / "masks" / "orphan.png")

    dataset = folder_items(tmp_path)
    names = [item.name for item in dataset]
    assert names == ["abnormal/a0.jpg", "abnormal/a1.png", "normal/n0.png", "normal/n1.png"]
    assert [item.label for item in dataset] == [1, 1, 0, 0]
    assert [item.segmented for item in dataset] == [True, False, True, True]
    assert any("a1.png: no mask" in p for p in dataset.problems)
    assert any("orphan.png" in p for p in dataset.problems)

    prepared, mask = load_item(dataset[0], SIZE)
    assert mask is not None and mask.any() and set(np.unique(mask)) <= {0, 1}
    ys, xs = np.nonzero(mask)
    ey, ex = expected_centre(35.5, 35.5, prepared)
    assert abs(ys.mean() - ey) <= 1.0 and abs(xs.mean() - ex) <= 1.0
    assert load_item(dataset[1], SIZE)[1] is None  # no mask: image-level metrics only
    assert not load_item(dataset[2], SIZE)[1].any()  # normal: empty mask

    assert open_eval_set("folder", tmp_path).items == dataset.items
    with pytest.raises(AnomalygenError, match="folder layout not found"):
        folder_items(tmp_path / "normal")
    with pytest.raises(ConfigError, match="dataset must be one of"):
        open_eval_set("kaggle", tmp_path)


def test_read_mask_formats(tmp_path: Path) -> None:
    m = block((40, 40), 10, 10, 12)
    Image.fromarray(m * 255).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "grey.png"), m)
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 3] = 255  # opaque everywhere: alpha must not count as lesion
    rgba[m == 1, 0] = 200
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgba.png"), m)
    Image.fromarray(m * 255).save(tmp_path / "lossy.jpg", quality=60)  # edges smeared
    assert np.mean(read_mask(tmp_path / "lossy.jpg") != m) < 0.02
    Image.fromarray(m.astype(bool)).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "bits.png"), m)
    with pytest.raises(ImageError, match="mask file not found"):
        read_mask(tmp_path / "absent.tif")


def test_exif_rotated_photograph_keeps_its_mask(tmp_path: Path) -> None:
    """A photograph stored rotated with an EXIF orientation: read_image turns it upright, and the
    mask drawn on the stored pixels is turned with it."""
    upright = make_fundus(96, 3, width_ratio=1.25)
    mask = block(upright.shape[:2], 20, 30, 12)
    save_rgb(tmp_path / "upright.png", upright)
    save_palette_tif(tmp_path / "upright_mask.tif", mask)
    exif = Image.Exif()
    exif[0x0112] = 3  # stored upside down
    Image.fromarray(upright[::-1, ::-1].copy()).save(tmp_path / "stored.png", exif=exif)
    save_palette_tif(tmp_path / "stored_mask.tif", mask[::-1, ::-1])
    a = load_item(
        EvalItem(
            "a",
            tmp_path / "upright.png",
            1,
            mask_paths=(tmp_path / "upright_mask.tif",),
            segmented=True,
        )
    )
    b = load_item(
        EvalItem(
            "b",
            tmp_path / "stored.png",
            1,
            mask_paths=(tmp_path / "stored_mask.tif",),
            segmented=True,
        )
    )
    np.testing.assert_array_equal(a[0].image, b[0].image)
    np.testing.assert_array_equal(a[1], b[1])
    assert a[1].any()
