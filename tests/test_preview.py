"""Contact sheets: live from a folder and from a store, through the library and the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalygen.generator import AnomalyGenerator, GeneratorConfig, sample_rng
from anomalygen.preview import (
    OUTLINE,
    PreviewItem,
    contact_sheet,
    live_preview,
    outline,
    render_tile,
    store_preview,
)
from anomalygen.render import render
from tests.synthetic import make_fundus


def _sample(seed: int = 0, p_normal: float = 0.0):
    target, source = make_fundus(128, seed=1), make_fundus(128, seed=2)
    gen = AnomalyGenerator(GeneratorConfig(p_normal=p_normal))
    return gen.generate(target, source, sample_rng(seed, 0)), source


def test_outline_marks_only_the_mask_border() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[10:20, 10:20] = 1
    drawn = outline(image, mask)
    coloured = np.all(drawn == OUTLINE, axis=2)
    assert coloured[10, 10:20].all() and not coloured[12:18, 12:18].any()
    gapped = np.all(outline(image, mask, gap=2) == OUTLINE, axis=2)
    assert not gapped[10:20, 10:20].any() and gapped.any()  # the lesion itself stays visible
    assert not image.any()  # input untouched


def test_tile_layout_and_labels_change_with_the_sample() -> None:
    sample, source = _sample()
    assert not sample.meta["normal"]
    y0, x0, y1, x1 = sample.meta["lesions"][0]["source_box"]
    item = PreviewItem("#0", sample.image, sample.mask, sample.meta, source[y0:y1, x0:x1])
    tile = render_tile(item, 128)
    assert tile.shape == (128 + 34, 128 + 64, 3) and tile.dtype == np.uint8
    assert np.all(tile[:128, :128] == OUTLINE, axis=2).any()  # the lesion is outlined
    normal, _ = _sample(p_normal=1.0)
    plain = render_tile(PreviewItem("#0", normal.image, normal.mask, normal.meta), 128)
    assert plain.shape == tile.shape
    assert not np.all(plain[:128, :128] == OUTLINE, axis=2).any()
    assert not np.array_equal(plain[128:], tile[128:])  # different caption


def test_contact_sheet_grid() -> None:
    cells = [np.full((10, 20, 3), k, np.uint8) for k in range(5)]
    sheet = contact_sheet(cells, columns=2)
    assert sheet.shape == (3 * 16 + 6, 2 * 26 + 6, 3)
    assert (sheet[6:16, 32:52] == 1).all()


def test_live_preview_matches_a_render_with_the_same_seed(fundus_folder: Path, tmp_path) -> None:
    sheet, skipped = live_preview(fundus_folder, n=4, seed=5, size=64, tile=64)
    again, _ = live_preview(fundus_folder, n=4, seed=5, size=64, tile=64)
    assert skipped == [] and np.array_equal(sheet, again)
    out = tmp_path / "s.zarr"
    render(out, fundus_folder, 4, size=64, seed=5, shard_size=4, workers=1, progress=False)
    from_store = store_preview(out, n=4, tile=64)
    assert np.array_equal(sheet, from_store)  # same samples, same drawing


def test_live_preview_skips_bad_files(fundus_folder: Path) -> None:
    (fundus_folder / "broken.jpg").write_text("not an image")
    _, skipped = live_preview(fundus_folder, n=1, size=64, tile=64)
    assert [name for name, _ in skipped] == ["broken.jpg"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "anomalygen_cli.anomalygen_cli", "preview", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_cli_preview_writes_png_and_reports_bad_input(fundus_folder: Path, tmp_path) -> None:
    out = tmp_path / "p.png"
    done = _cli("--src", str(fundus_folder), "--n", "2", "--size", "64", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size[0] > 0
    for args, message in [
        ((), "exactly one of"),
        (("--src", str(tmp_path / "missing")), "does not exist"),
        (("--src", str(fundus_folder), "--lesions", "3-1"), "--lesions"),
        (("--src", str(fundus_folder), "--indices", "1"), "--indices"),
    ]:
        bad = _cli(*args, "--out", str(tmp_path / "x.png"))
        assert bad.returncode == 1
        assert message in bad.stderr and "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("indices", ["0,2", "1-2"])
def test_cli_store_preview_indices(fundus_folder: Path, tmp_path, indices: str) -> None:
    store = tmp_path / "s.zarr"
    render(store, fundus_folder, 4, size=64, shard_size=4, workers=1, progress=False)
    out = tmp_path / "p.png"
    done = _cli(str(store), "--indices", indices, "--tile", "64", "--out", str(out))
    assert done.returncode == 0, done.stderr
    bad = _cli(str(store), "--indices", "9", "--out", str(out))
    assert bad.returncode == 1 and "out of range" in bad.stderr
