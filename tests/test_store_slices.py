"""``SampleStore`` with slices and index arrays: ``store[10:20]`` and ``store[[3, 1, 4]]`` give
the samples stacked, in the order asked for, checked as single indices are."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from anomalygen import open_store
from anomalygen.errors import StoreError
from tests.synthetic import render_tiny_store

N = 12  # shards of 4


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_tiny_store(tmp_path_factory.mktemp("slices"), N, photos=3)


def _one_by_one(store, indices) -> tuple[np.ndarray, np.ndarray]:
    pairs = [store[int(i)] for i in indices]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@pytest.mark.parametrize(
    "key",
    [slice(2, 9), slice(None), slice(9, 2, -3), slice(-3, None), [7, 1, 1, 10], (0,),
     np.array([11, 4]), np.array([[5, 6], [0, 3]])],
    ids=str,
)  # fmt: skip
def test_stacked_samples_equal_single_reads(store_path: Path, key) -> None:
    store = open_store(store_path)
    images, masks = store[key]
    indices = range(N)[key] if isinstance(key, slice) else np.asarray(key).ravel()
    want_images, want_masks = _one_by_one(store, indices)
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(masks, want_masks)
    assert images.shape == (len(indices), 64, 64, 3) and masks.shape == (len(indices), 64, 64)


def test_empty_and_bad_selections(store_path: Path) -> None:
    store = open_store(store_path)
    images, masks = store[5:5]
    assert images.shape == (0, 64, 64, 3) and masks.shape == (0, 64, 64)
    assert store[[]][0].shape[0] == 0
    with pytest.raises(IndexError, match="out of range"):
        store[[3, N]]
    with pytest.raises(TypeError, match="integers"):
        store[[0.5, 1.0]]
    with pytest.raises(TypeError, match="integers"):
        store[np.ones(N, dtype=bool)]


def test_slices_of_unrendered_shards_are_refused(store_path: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial.zarr"
    shutil.copytree(store_path, partial)
    group = zarr.open_group(str(partial), mode="r+")
    group["done"][1] = 0  # as if the render had stopped before writing shard 1 (samples 4-7)
    del group.attrs["completed"]
    store = open_store(partial)
    assert store[0:4][0].shape[0] == 4 and store[[8, 0]][0].shape[0] == 2
    for key in (slice(2, 6), slice(None), [0, 5]):
        with pytest.raises(StoreError, match="shard 1, which is not rendered yet"):
            store[key]
