"""The store format v1 and its reader: open_store, SampleStore, NormalsView, URLs, versions."""

from __future__ import annotations

import multiprocessing
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from anomalygen import open_store
from anomalygen.errors import StoreError
from anomalygen.generator import GeneratorConfig
from anomalygen.render import render
from anomalygen.store import (
    FORMAT_VERSION,
    SampleStore,
    parameter_differences,
    store_info,
)
from tests.synthetic import write_sources

N, SIZE, SHARD = 24, 64, 8


def arrays_of(url: str) -> dict[str, np.ndarray]:
    """Every array of a store, read whole (for byte-identity comparisons)."""
    group = zarr.open_group(url, mode="r")
    return {name: arr[:] for name, arr in group.arrays()}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    return write_sources(tmp_path_factory.mktemp("src") / "normals")


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, sources) -> str:
    out = str(tmp_path_factory.mktemp("store") / "small.zarr")
    render(out, sources, N, size=SIZE, shard_size=SHARD, workers=1, progress=False, layout="full")
    return out


def test_reader_api(small_store: str) -> None:
    store = open_store(small_store)
    assert len(store) == N and store.size == SIZE and store.seed == 0
    assert store.shard_size == SHARD and store.n_shards == 3
    assert store.shard_range(2) == range(16, 24)
    assert store.complete_shards() == [0, 1, 2]
    image, mask = store[5]
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(store[-1][0], store[N - 1][0])
    with pytest.raises(IndexError):
        store[N]
    assert isinstance(store.config, GeneratorConfig)
    assert len(list(iter(store))) == N
    images, masks = store.read_shard(1)
    assert masks.shape == (SHARD, SIZE, SIZE)
    np.testing.assert_array_equal(images[3], store[11][0])

    assert len(store.normals) == 4
    normal, fov = store.normals[0]
    assert normal.shape == (SIZE, SIZE, 3) and fov.shape == (SIZE, SIZE)
    assert not normal[fov == 0].any()
    assert store.normals.name(0) == "normal_0.png"


def test_attributes_record_everything(small_store: str) -> None:
    attrs = open_store(small_store).attrs
    assert attrs["format"] == "anomalygen-store"
    assert attrs["format_version"] == FORMAT_VERSION
    for key in ("anomalygen_version", "generator", "seed", "size", "n", "shard_size", "codec"):
        assert key in attrs
    files = attrs["sources"]["files"]
    assert [f[0] for f in files] == [f"normal_{k}.png" for k in range(4)]
    assert all(f[1] > 0 and len(f[2]) == 64 for f in files)  # size, sha256
    assert attrs["skipped"] == []
    assert attrs["normals_count"] == 4


def test_meta_and_sample_contract(small_store: str) -> None:
    store = open_store(small_store)
    anomalous = 0
    for i in range(N):
        meta = store.meta(i)
        image, mask = store[i]
        target, fov = store.normals[meta["target"]]
        assert meta["source"] != meta["target"]  # another normal image, when there are several
        assert meta["area"] == int(mask.sum())
        np.testing.assert_array_equal(image[mask == 0], target[mask == 0])
        assert not (mask & (fov == 0)).any()
        if not meta["normal"]:
            anomalous += 1
            crops = store.lesion_sources(i)
            assert len(crops) == len(meta["lesions"])
            for crop in crops:
                y0, x0, y1, x1 = crop["source_box"]
                assert crop["crop"].shape == (y1 - y0, x1 - x0, 3)
                assert crop["source"] == meta["source"]
    assert 0 < anomalous < N


def test_store_info(small_store: str) -> None:
    info = store_info(small_store)
    assert info["n"] == N and info["samples_complete"] == N
    assert info["shards_complete"] == info["shards"] == 3
    assert info["image_shape"] == [N, SIZE, SIZE, 3]
    assert info["bytes_on_disk"] > 0 and info["bytes_per_sample"] > 0
    assert info["pools"] == {"normals": {"slots": 4, "usable": 4}}


def _checksum(store: SampleStore, i: int) -> tuple[int, int]:
    image, mask = store[i]
    return int(image.astype(np.int64).sum()), int(mask.sum())


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_pickles_and_reads_in_other_processes(small_store: str, method: str) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{method} is not available here")
    store = open_store(small_store)
    expected = [_checksum(store, i) for i in (0, 9, 23)]  # zarr is now running in the parent
    clone = pickle.loads(pickle.dumps(store))
    assert [_checksum(clone, i) for i in (0, 9, 23)] == expected
    with multiprocessing.get_context(method).Pool(1) as pool:
        got = pool.starmap(_checksum, [(store, 0), (store, 9), (store, 23)])
    assert got == expected


def test_missing_and_foreign_stores(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store there"):
        open_store(tmp_path / "nothing.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["title"] = "not ours"
    with pytest.raises(StoreError, match="not an anomalygen store"):
        open_store(tmp_path / "other.zarr")


def test_unknown_format_version_is_refused(small_store: str, sources: Path, tmp_path: Path) -> None:
    copy = tmp_path / "future.zarr"
    shutil.copytree(small_store, copy)
    zarr.open_group(str(copy), mode="r+").attrs["format_version"] = 99
    with pytest.raises(StoreError, match="format version 99 is not known") as err:
        open_store(copy)
    assert "\n" not in str(err.value)
    # A render into it is refused too, and leaves it alone.
    with pytest.raises(StoreError, match="format version 99"):
        render(
            copy, sources, N, size=SIZE, shard_size=SHARD, workers=1, progress=False, layout="full"
        )
    assert zarr.open_group(str(copy), mode="r").attrs["format_version"] == 99


def test_incomplete_shard_is_not_read_as_zeros(small_store: str, tmp_path: Path) -> None:
    copy = tmp_path / "partial.zarr"
    shutil.copytree(small_store, copy)
    group = zarr.open_group(str(copy), mode="r+")
    group["done"][1] = 0  # as if the render had stopped before writing shard 1
    del group.attrs["completed"]
    store = open_store(copy)
    assert store.complete_shards() == [0, 2]
    store[7]
    with pytest.raises(StoreError, match="shard 1, which is not rendered yet"):
        store[8]


def test_memory_and_file_urls_match_a_local_render(
    small_store: str, sources: Path, tmp_path: Path
) -> None:
    expected = arrays_of(small_store)
    # memory:// lives in this process: the render runs in-process whatever --workers says.
    result = render(
        "memory://anomalygen-test/m.zarr",
        sources,
        N,
        size=SIZE,
        shard_size=SHARD,
        workers=2,
        progress=False,
        layout="full",
    )
    assert result.workers == 1 and any("memory://" in note for note in result.notes)
    url = f"file://{tmp_path}/f.zarr"
    render(url, sources, N, size=SIZE, shard_size=SHARD, workers=1, progress=False, layout="full")
    for where in ("memory://anomalygen-test/m.zarr", url):
        store = open_store(where)
        assert len(store) == N
        np.testing.assert_array_equal(store[3][0], expected["image"][3])
        got = arrays_of(where)
        assert sorted(got) == sorted(expected)
        for name, arr in expected.items():
            np.testing.assert_array_equal(got[name], arr, err_msg=f"{where}: {name}")
    assert (tmp_path / "f.zarr" / "zarr.json").is_file()


def test_parameter_differences_name_what_differs() -> None:
    old = {
        "n": 10,
        "seed": 0,
        "generator": {"alpha": 0.7, "perlin": {"threshold": 0.5}},
        "sources": {"files": [["a.png", 10, "x"], ["b.png", 20, None]]},
    }
    new = {
        "n": 20,
        "seed": 0,
        "generator": {"alpha": 0.5, "perlin": {"threshold": 0.5}},
        "sources": {"files": [["a.png", 10, None], ["c.png", 30, None]]},
    }
    diffs = parameter_differences(old, new)
    assert "n 10 -> 20" in diffs
    assert "generator.alpha 0.7 -> 0.5" in diffs
    assert any(d.startswith("sources (2 -> 2 files, missing: b.png, new: c.png") for d in diffs)
    assert parameter_differences(old, old) == []
    # Hashes are results, not parameters: only names and sizes count.
    same = {**old, "sources": {"files": [["a.png", 10, None], ["b.png", 20, "y"]]}}
    assert parameter_differences(old, same) == []
