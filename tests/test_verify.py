"""verify: a good store passes; truncated, corrupted or missing shard files, incomplete shards and
broken contracts are caught."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from anomalygen import store as st
from anomalygen.errors import StoreError
from anomalygen.render import render
from anomalygen.store import digests as dg
from anomalygen.store.text import decode_texts
from anomalygen.verify import verify_store
from tests.synthetic import write_sources

N, SIZE, SHARD = 24, 64, 8


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    src = write_sources(tmp_path_factory.mktemp("src") / "normals")
    out = tmp_path_factory.mktemp("good") / "good.zarr"
    render(str(out), src, N, size=SIZE, shard_size=SHARD, workers=1, progress=False, layout="full")
    return out


@pytest.fixture()
def copy(good: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy.zarr"
    shutil.copytree(good, target)
    return target


def _problems(path: Path, full: bool = False) -> list[str]:
    report = verify_store(str(path), full=full)
    assert report.ok == (not report.problems)
    return report.problems


def test_good_store_passes(good: Path) -> None:
    spot = verify_store(str(good))
    assert spot.ok, spot.problems
    assert spot.shards_checked == 3 and 3 <= spot.samples_checked <= N
    full = verify_store(str(good), full=True)
    assert full.ok and full.samples_checked == N
    assert "OK" in full.summary()


def test_store_shorter_than_one_shard_passes(tmp_path: Path) -> None:
    src = write_sources(tmp_path / "normals")
    out = tmp_path / "short.zarr"
    render(str(out), src, 3, size=32, shard_size=SHARD, workers=1, progress=False, layout="full")
    report = verify_store(str(out), full=True)
    assert report.ok, report.problems


def test_truncated_shard_is_caught_by_the_spot_check(copy: Path) -> None:
    shard = copy / st.shard_key("image", 1, ndim=4)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    problems = _problems(copy)
    assert any(p.startswith("shard 1: unreadable") for p in problems), problems


def test_corrupted_byte_is_caught_by_the_full_check(copy: Path) -> None:
    shard = copy / st.shard_key("mask", 2, ndim=3)
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01  # one bit, inside some chunk's compressed data
    shard.write_bytes(bytes(data))
    problems = _problems(copy, full=True)
    assert any(p.startswith("shard 2: unreadable") and "checksum" in p for p in problems), problems


def test_missing_shard_object_is_caught(copy: Path) -> None:
    (copy / st.shard_key("image", 0, ndim=4)).unlink()
    problems = _problems(copy)
    assert any("shard 0: object image/c/0/0/0/0 is missing" in p for p in problems), problems


def test_incomplete_shard_is_reported(copy: Path) -> None:
    zarr.open_group(str(copy), mode="r+")["done"][2] = 0
    problems = _problems(copy)
    assert any("1 of 3 shards are not complete (first: shard 2" in p for p in problems), problems


def rewrite_shard_0(group: zarr.Group, **arrays: np.ndarray) -> None:
    """Write shard 0 of ``arrays`` whole, as the renderer does, with matching digests: what a
    renderer with a bug would write (the contracts must still catch it)."""
    for name, values in arrays.items():
        group[name][0:SHARD] = values
    items = {name: group[name][0:SHARD] for name in dg.SAMPLE_COLUMNS}
    items["meta"] = decode_texts(items["meta"])
    group["digests"][0:SHARD] = dg.item_digests(dg.SAMPLE_COLUMNS, items)


def test_broken_contracts_are_reported(copy: Path) -> None:
    group = zarr.open_group(str(copy), mode="r+")
    images, masks = group["image"][0:SHARD], group["mask"][0:SHARD]
    area = group["area"][:]
    i = int(np.flatnonzero(area[:SHARD] > 0)[0])  # an anomalous sample in shard 0
    images[i][masks[i] == 0] ^= 1  # the image no longer equals its target outside the mask
    masks[(i + 1) % SHARD, 0, 0] = 2  # not binary
    rewrite_shard_0(group, image=images, mask=masks)
    report = verify_store(str(copy), full=True)
    problems = report.problems
    assert any(f"sample {i} (shard 0): image differs from its target" in p for p in problems)
    assert any(f"sample {(i + 1) % SHARD} (shard 0): mask has values" in p for p in problems)
    assert report.damaged == {"samples": {0}}


def test_inconsistent_metadata_is_reported(copy: Path) -> None:
    group = zarr.open_group(str(copy), mode="r+")
    area = group["area"][0:SHARD]
    area[3] += 5
    rewrite_shard_0(group, area=area)
    problems = _problems(copy)
    assert any(p.startswith("sample 3 (shard 0): area array") for p in problems), problems


def test_data_changed_without_its_digests_is_reported(copy: Path) -> None:
    """Data replaced behind the writer's back (another store's object, an edit) no longer
    matches the digests written with it."""
    group = zarr.open_group(str(copy), mode="r+")
    area = group["area"][0:SHARD]
    area[3] += 5
    group["area"][0:SHARD] = area
    report = verify_store(str(copy))
    assert "sample 3 (shard 0): area does not match the digest written with it" in report.problems
    assert report.damaged == {"samples": {0}}


def test_not_a_store_raises(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        verify_store(str(tmp_path / "missing.zarr"))
