"""``anomalygen export``: a store's samples as PNG image/mask pairs in the folder layout that
anomalib's Folder datamodule (and ``resynth evaluate --dataset folder``) reads, read back
pixel for pixel."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from anomalygen import open_store
from anomalygen.errors import ConfigError, StoreError
from anomalygen.export import export_store
from anomalygen_cli.anomalygen_cli import main
from tests.synthetic import render_tiny_store, run_cli

N = 12


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_tiny_store(tmp_path_factory.mktemp("export_store"), N, photos=3)


def _rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "samples.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_round_trip(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    result = export_store(store, out, progress=False)
    samples = open_store(store)
    rows = _rows(out)
    assert [int(r["index"]) for r in rows] == list(range(N))
    assert result.normal + result.abnormal == N and result.normal > 0 and result.abnormal > 0
    for row in rows:
        image, mask = samples[int(row["index"])]
        name = f"{int(row['index']):02d}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(out / row["image"])), image)
        assert int(row["area"]) == int(mask.sum())
        if mask.any():
            assert row["image"] == f"abnormal/{name}" and row["mask"] == f"masks/{name}"
            saved = np.asarray(Image.open(out / row["mask"]))
            assert saved.dtype == np.uint8 and set(np.unique(saved)) <= {0, 255}
            np.testing.assert_array_equal(saved // 255, mask)
        else:
            assert row["image"] == f"normal/{name}" and row["mask"] == ""
    files = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert files == {r["image"] for r in rows} | {r["mask"] for r in rows if r["mask"]}
    assert "exported 12 sample(s)" in result.summary()


def test_resynth_reads_the_export_as_a_folder_dataset(store: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from resynth_models.datasets import folder_items, read_mask

    out = tmp_path / "exported"
    result = export_store(store, out, progress=False)
    found = folder_items(out)
    assert not found.problems  # every abnormal image has exactly one mask, every mask an image
    assert sum(item.label for item in found.items) == result.abnormal
    samples = open_store(store)
    for item in found.items:
        if item.label:
            (mask_path,) = item.mask_paths
            index = int(Path(item.path).stem)
            np.testing.assert_array_equal(read_mask(mask_path), samples[index][1])


def test_cli_range_and_errors(store: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "part"
    code, stdout, err = run_cli(main, "anomalygen", monkeypatch, capsys, "export", store, out,
                                "--range", "5-9", "-q")  # fmt: skip
    assert code == 0, err
    assert [int(r["index"]) for r in _rows(out)] == [5, 6, 7, 8, 9]
    assert "exported 5 sample(s)" in stdout
    for args, message in [
        ([out], "not empty; choose another, or --overwrite"),
        ([tmp_path / "x", "--range", "10-20"], "--range: 10-20 is not a range of the store's"),
        ([tmp_path / "x", "--range", "a-b"], "--range: expected MIN-MAX"),
        ([tmp_path / "x", "--format", "coco"], "--format: must be one of folder"),
    ]:
        code, _, err = run_cli(main, "anomalygen", monkeypatch, capsys, "export", store, *args)
        assert code == 1 and err.startswith("error: ") and message in err, err
        assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(main, "anomalygen", monkeypatch, capsys, "export", store, out,
                           "--range", "0-1", "--overwrite", "-q")  # fmt: skip
    assert code == 0, err
    assert [int(r["index"]) for r in _rows(out)] == [0, 1]


def test_an_unrendered_shard_is_refused(store: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial.zarr"
    shutil.copytree(store, partial)
    group = zarr.open_group(str(partial), mode="r+")
    group["done"][1] = 0  # as if the render had stopped before writing shard 1
    del group.attrs["completed"]
    export_store(partial, tmp_path / "first", indices=range(0, 4), progress=False)
    with pytest.raises(StoreError, match="shard 1, which is not rendered yet"):
        export_store(partial, tmp_path / "all", progress=False)
    with pytest.raises(ConfigError, match="a file is in the way"):
        export_store(store, partial / "zarr.json", progress=False)
