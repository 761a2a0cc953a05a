"""Stores that other Zarr readers open (issue 12, items 7 and 8), and stores of older format
versions that this code still reads.

Before: tensorstore refused the ``meta`` and ``normals_info`` arrays ("string data type is not
one of the supported data types": zarr-python's ``string`` is not a core Zarr v3 type), and
xarray warned that the store had no consolidated metadata (then refused it: two arrays named
their column dimensions alike with different lengths).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from anomalygen import open_store
from anomalygen.errors import StoreError
from anomalygen.render import render
from anomalygen.repair import repair_store
from anomalygen.store import shard_key, store_info
from anomalygen.store.format import FORMAT_VERSION
from anomalygen.store.text import decode_texts, encode_texts, meta_bytes
from anomalygen.verify import verify_store
from tests.files import file_digests
from tests.test_store_digests import pinned_generator, write_photographs, write_textures

#: A version-2 store rendered by the code before format version 3 (commit 58a6778) with
#: ``render(out, write_photographs(...), 6, size=32, seed=5, config=pinned_generator(),
#: shard_size=4, workers=1)``; its ``sources`` root and description were then set to
#: "photographs" (they named a temporary folder).
FIXTURE_V2 = Path(__file__).parent / "fixtures" / "store-v2.zarr"


@pytest.fixture(scope="module")
def photographs(tmp_path_factory) -> Path:
    return write_photographs(tmp_path_factory.mktemp("inputs") / "photographs")


@pytest.fixture(scope="module")
def texture_store(photographs: Path, tmp_path_factory) -> Path:
    """Texture mode: every kind of array a store can have (textures and their records too)."""
    textures = write_textures(tmp_path_factory.mktemp("tex") / "textures")
    out = tmp_path_factory.mktemp("store") / "texture.zarr"
    config = pinned_generator(source="texture", p_normal=0.25)
    render(
        out, photographs, 12, size=32, seed=2, config=config, textures=textures, shard_size=8,
        workers=1, progress=False, layout="full",
    )  # fmt: skip
    return out


def array_names(path: Path) -> list[str]:
    group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    return sorted(name for name, _ in group.arrays())


# ------------------------------------------------------------------------------------------
# Item 7: every array is of a core Zarr v3 type, and tensorstore reads what zarr-python reads
# ------------------------------------------------------------------------------------------


def test_records_are_nul_padded_utf8_rows() -> None:
    texts = ['{"a":1}', '{"name":"caf\u00e9"}', ""]
    rows = encode_texts(texts, 64)
    assert rows.shape == (3, 64) and rows.dtype == np.uint8
    data = texts[1].encode("utf-8")
    assert bytes(rows[1, : len(data)]) == data and not rows[1, len(data) :].any()
    assert decode_texts(rows) == texts
    assert decode_texts(np.asarray(texts, dtype=object)) == texts  # versions 1 and 2
    with pytest.raises(ValueError, match="record 0 is 65 bytes long"):
        encode_texts(["x" * 65], 64)
    assert meta_bytes(12) == 28672 and meta_bytes(4) % 4096 == 0


def test_a_meta_row_holds_a_sample_with_the_most_lesions(photographs: Path, tmp_path) -> None:
    """The meta row width grows with the lesions the generator may draw: 40 lesions fit."""
    out = tmp_path / "many.zarr"
    config = pinned_generator(lesions=[40, 40], p_normal=0.0)
    render(out, photographs, 4, size=64, seed=1, config=config, workers=1, progress=False)
    store = open_store(out)
    longest = max(len(json.dumps(store.meta(i))) for i in range(4))
    assert 20 * 40 < longest < meta_bytes(40) / 2, longest  # lesions drawn, room to spare
    assert verify_store(str(out), full=True).ok


def test_every_array_has_a_core_zarr_v3_data_type(texture_store: Path) -> None:
    core = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
    core |= {"float16", "float32", "float64", "complex64", "complex128"}
    for name in array_names(texture_store):
        meta = json.loads((texture_store / name / "zarr.json").read_text())
        assert meta["data_type"] in core, (name, meta["data_type"])


def test_tensorstore_reads_every_array_as_zarr_python_does(texture_store: Path) -> None:
    ts = pytest.importorskip("tensorstore", reason="tensorstore is not installed (dev extra)")
    group = zarr.open_group(str(texture_store), mode="r", use_consolidated=False)
    names = array_names(texture_store)
    assert {"meta", "normals_info", "textures_info", "image", "mask"} <= set(names)
    for name in names:
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(texture_store / name)}}
        array = ts.open(spec, read=True).result()
        np.testing.assert_array_equal(array.read().result(), group[name][:], err_msg=name)
    store = open_store(texture_store)
    rows = ts.open(
        {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(texture_store / "meta")}}
    ).result()
    added = ("index", "target", "source", "source_pool")  # SampleStore.meta's own keys
    expected = {k: v for k, v in store.meta(5).items() if k not in added}
    assert json.loads(decode_texts(rows[5].read().result())[0]) == expected


# ------------------------------------------------------------------------------------------
# Item 8: consolidated metadata, and xarray opens the store without a warning
# ------------------------------------------------------------------------------------------


def test_the_consolidated_metadata_lists_every_array_as_its_own_zarr_json(
    texture_store: Path,
) -> None:
    root = json.loads((texture_store / "zarr.json").read_text())
    consolidated = root["consolidated_metadata"]["metadata"]
    names = array_names(texture_store)
    assert sorted(consolidated) == names
    for name in names:
        own = json.loads((texture_store / name / "zarr.json").read_text())
        assert consolidated[name] == own, name
    assert root["attributes"]["completed"]  # attribute updates kept it


def test_xarray_opens_the_store_without_a_warning(texture_store: Path) -> None:
    xr = pytest.importorskip("xarray", reason="xarray is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails
        ds = xr.open_zarr(str(texture_store))
    store = open_store(texture_store)
    np.testing.assert_array_equal(ds["image"][3].values, store[3][0])
    np.testing.assert_array_equal(ds["mask"][3].values, store[3][1])
    assert ds.sizes["sample"] == 12 and ds["image"].dims == ("sample", "y", "x", "rgb")


def test_a_lost_array_is_missing_for_our_readers_despite_the_consolidated_metadata(
    texture_store: Path, tmp_path: Path
) -> None:
    """zarr-python would open a deleted array from the consolidated metadata and read fill
    values; our readers open each array's own metadata."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(texture_store, copy)
    shutil.rmtree(copy / "lesions")
    report = verify_store(str(copy))
    assert "array 'lesions' is missing" in report.problems


# ------------------------------------------------------------------------------------------
# Older format versions stay readable (and repairable, in their own representation)
# ------------------------------------------------------------------------------------------


def test_a_version_2_store_reads_as_the_same_render_in_version_3(
    photographs: Path, tmp_path: Path
) -> None:
    old = open_store(FIXTURE_V2)
    assert old.attrs["format_version"] == 2 and FORMAT_VERSION == 3
    assert json.loads((FIXTURE_V2 / "meta" / "zarr.json").read_text())["data_type"] == "string"
    out = tmp_path / "v3.zarr"
    render(
        out, photographs, 6, size=32, seed=5, config=pinned_generator(), shard_size=4, workers=1,
        progress=False,
    )  # fmt: skip
    new = open_store(out)
    for i in range(len(old)):
        for a, b in zip(old[i], new[i], strict=True):
            np.testing.assert_array_equal(a, b)
        assert old.meta(i) == new.meta(i)
    assert old.pool_info("normals") == new.pool_info("normals")
    assert [old.normals.name(j) for j in range(4)] == [new.normals.name(j) for j in range(4)]
    assert verify_store(str(FIXTURE_V2), full=True).ok
    info = store_info(FIXTURE_V2)
    assert info["format_version"] == 2 and info["samples_complete"] == 6


def test_a_damaged_version_2_store_is_repaired_byte_for_byte(tmp_path: Path) -> None:
    copy = tmp_path / "v2.zarr"
    shutil.copytree(FIXTURE_V2, copy)
    (copy / shard_key("meta", 1, ndim=1)).unlink()
    with pytest.raises(StoreError, match="sample 4 \\(shard 1\\) is damaged: array 'meta'"):
        open_store(copy).meta(4)
    result = repair_store(str(copy))
    assert result.repaired == {"samples": [1]} and result.ok
    assert file_digests(copy) == file_digests(
        FIXTURE_V2
    )  # strings again, and still no consolidated metadata
