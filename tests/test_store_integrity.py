"""A lost, replaced or corrupted object is an error on every read, never zeros (issue 10,
items 1, 2 and 6).

Before: with ``completed`` set and ``image/c/1/0/0/0`` deleted, ``open_store(...)[20]`` returned
an all-zero image and ``resynth train`` trained stage 2 on blank images; a lost ``mask`` object
gave empty masks, a lost ``normals`` object black photographs for stage 1.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr

from anomalygen import open_store
from anomalygen.errors import StoreError
from anomalygen.render import render
from anomalygen.render.lock import lock_for, lock_holder
from anomalygen.store import StoreWriter, location, shard_key
from anomalygen.store.text import decode_texts
from anomalygen.verify import verify_store
from tests.synthetic import write_sources

N, SIZE, SHARD = 16, 32, 4


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return write_sources(tmp_path_factory.mktemp("src") / "normals", count=3)


@pytest.fixture(scope="module")
def good(src: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good") / "good.zarr"
    render(out, src, N, size=SIZE, shard_size=SHARD, workers=1, progress=False, layout="full")
    return out


@pytest.fixture()
def copy(good: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy.zarr"
    shutil.copytree(good, target)
    return target


def key(name: str, shard: int) -> str:
    ndim = {"image": 4, "mask": 3, "normals": 4, "normals_fov": 3, "digests": 2}.get(name, 1)
    ndim = 2 if name in ("meta", "normals_info", "textures_info") else ndim  # rows of bytes
    return shard_key(name, shard, ndim=ndim)


def lesioned_sample(store_path: Path, shard: int) -> int:
    """A sample of ``shard`` with a lesion (its mask is not the fill value)."""
    area = zarr.open_group(str(store_path), mode="r")["area"][:]
    r = range(shard * SHARD, (shard + 1) * SHARD)
    return next(i for i in r if area[i] > 0)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("name", "read"),
    [
        ("image", lambda store, i: store[i]),
        ("mask", lambda store, i: store[i]),
        ("meta", lambda store, i: store.meta(i)),
        ("target", lambda store, i: store.meta(i)),
        ("digests", lambda store, i: store[i]),
    ],
)
def test_a_lost_sample_object_is_an_error_naming_what_is_lost(copy: Path, name, read) -> None:
    i = lesioned_sample(copy, 1)
    (copy / key(name, 1)).unlink()
    store = open_store(copy)
    assert store.attrs["completed"]  # readers trust the flags of a completed store
    with pytest.raises(StoreError) as err:
        read(store, i)
    message = one_line(err)
    assert message.startswith(f"{copy}: sample {i} (shard 1) is damaged: array ")
    expected = "image" if name == "digests" else name  # the first array read
    assert f"array {expected!r}" in message and key(name, 1) in message
    assert f"`anomalygen verify {copy} --repair`" in message
    other = lesioned_sample(copy, 2)
    read(store, other)  # other shards are intact


def test_read_shard_is_checked_too(copy: Path) -> None:
    (copy / key("image", 1)).unlink()
    store = open_store(copy)
    with pytest.raises(StoreError, match=r"sample 4 \(shard 1\) is damaged: array 'image'"):
        store.read_shard(1)
    images, _ = store.read_shard(0)
    assert images.shape == (SHARD, SIZE, SIZE, 3) and images.any()


def test_a_lost_normals_object_is_an_error(copy: Path) -> None:
    (copy / key("normals", 0)).unlink()
    store = open_store(copy)
    with pytest.raises(StoreError) as err:
        store.normals[0]
    assert one_line(err).startswith(
        f"{copy}: normals slot 0 (pool shard 0) is damaged: array 'normals' does not match the "
        "digest written with it (object normals/c/0/0/0/0 is missing)"
    )


def test_a_replaced_object_is_an_error(copy: Path) -> None:
    """Another shard's object (a copy gone wrong) reads fine but holds other samples."""
    shutil.copy(copy / key("image", 2), copy / key("image", 1))
    with pytest.raises(StoreError, match=r"object image/c/1/0/0/0 holds other data"):
        open_store(copy)[4]


def test_a_corrupted_byte_is_an_error_without_raw_bytes(copy: Path) -> None:
    path = copy / key("image", 1)
    data = bytearray(path.read_bytes())
    data[64] ^= 0x10  # inside the first chunk's compressed data
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError) as err:
        open_store(copy)[4]
    assert one_line(err).endswith(
        "sample 4 (shard 1) is damaged: array 'image' cannot be read (a chunk's CRC32C checksum "
        f"fails: its bytes are corrupted); `anomalygen verify {copy} --repair` renders the "
        "damaged shards again"
    )


def test_verify_finds_every_lost_object_and_the_damaged_shards(copy: Path) -> None:
    for name, shard in (("image", 1), ("mask", 2), ("digests", 3), ("normals_fov", 0)):
        (copy / key(name, shard)).unlink()
    report = verify_store(str(copy), full=True)
    assert report.damaged == {"samples": {1, 2, 3}, "normals": {0}}
    for name, shard in (("image", 1), ("mask", 2), ("digests", 3)):
        assert f"shard {shard}: object {key(name, shard)} is missing" in report.problems
    assert f"normals shard 0: object {key('normals_fov', 0)} is missing" in report.problems


# ------------------------------------------------------------------------------------------
# Version 1 stores: no digests, still readable, a lost object still an error
# ------------------------------------------------------------------------------------------


def as_version_1(path: Path) -> None:
    """What a version-1 store is: the same image arrays, byte for byte, without the digests,
    its records (``meta``, ``normals_info``) in zarr-python's string type (versions 1 and 2)
    and no consolidated metadata."""
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    for name in ("digests", "normals_digests"):
        shutil.rmtree(path / name)
    for name, chunk, dim in (("meta", SHARD, "sample"), ("normals_info", 8, "normal")):
        texts = np.asarray(decode_texts(group[name][:]), dtype=object)
        shutil.rmtree(path / name)
        strings = group.create_array(
            name, shape=texts.shape, dtype=str, chunks=(min(chunk, len(texts)),), fill_value="",
            dimension_names=(dim,),
        )  # fmt: skip
        strings[:] = texts
    group.attrs["format_version"] = 1


def test_version_1_stores_stay_readable(good: Path, copy: Path) -> None:
    as_version_1(copy)
    old, new = open_store(copy), open_store(good)
    for i in range(N):
        for a, b in zip(old[i], new[i], strict=True):
            np.testing.assert_array_equal(a, b)
        assert old.meta(i) == new.meta(i)
    np.testing.assert_array_equal(old.normals[1][0], new.normals[1][0])
    assert verify_store(str(copy), full=True).ok


def test_a_lost_object_of_a_version_1_store_is_an_error(copy: Path) -> None:
    as_version_1(copy)
    (copy / key("image", 1)).unlink()
    with pytest.raises(StoreError) as err:
        open_store(copy)[5]
    assert "sample 5 (shard 1) is damaged: array 'image' is missing its object " in one_line(err)
    assert not verify_store(str(copy)).ok


def test_a_resumed_version_1_store_stays_version_1(src: Path, copy: Path) -> None:
    as_version_1(copy)
    group = zarr.open_group(str(copy), mode="r+")
    group["done"][3] = 0
    del group.attrs["completed"]
    render(copy, src, N, size=SIZE, shard_size=SHARD, workers=1, progress=False, layout="full")
    assert not (copy / "digests").exists()
    assert open_store(copy).attrs["format_version"] == 1
    assert verify_store(str(copy), full=True).ok


# ------------------------------------------------------------------------------------------
# Verify while a render writes the store (item 6)
# ------------------------------------------------------------------------------------------


def test_verify_during_a_render_checks_only_flagged_shards(
    src: Path, tmp_path: Path, monkeypatch
) -> None:
    """A render is stopped half-way through writing shard 2 (its image written, its area and
    meta not yet) while verify runs: verify reports nothing false, and says so."""
    out = tmp_path / "busy.zarr"
    paused, resume = threading.Event(), threading.Event()
    write = StoreWriter.write_samples

    def slow_shard_2(self, shard, start, images, *args, **kwargs):
        if shard == 2:
            self.array("image")[start : start + len(images)] = images
            self.array("area")[start : start + len(images)] = np.full(len(images), 7, np.int32)
            paused.set()
            resume.wait(60)
        write(self, shard, start, images, *args, **kwargs)

    monkeypatch.setattr(StoreWriter, "write_samples", slow_shard_2)
    box: dict = {}
    thread = threading.Thread(
        target=lambda: box.setdefault(
            "result",
            render(
                out, src, N, size=SIZE, shard_size=SHARD, workers=1, progress=False, layout="full"
            ),
        )
    )
    thread.start()
    try:
        assert paused.wait(60)
        assert lock_holder(location(out)) == "a render on this machine"
        report = verify_store(str(out), full=True)
    finally:
        resume.set()
        thread.join(60)
    assert report.ok, report.problems
    assert report.render_in_progress == "a render on this machine"
    assert report.warnings == [
        "a render on this machine holds the lock on this store: 2 of 4 shards are still being "
        "written (checked: the 2 complete ones)"
    ]
    assert report.shards_checked == 2 and "a render is writing it" in report.summary()
    assert box["result"].shards_rendered == 4 and lock_holder(location(out)) is None
    assert verify_store(str(out), full=True).ok


def test_without_a_render_unflagged_shards_are_problems(copy: Path) -> None:
    zarr.open_group(str(copy), mode="r+")["done"][2] = 0
    report = verify_store(str(copy))
    assert report.render_in_progress is None and not report.ok
    assert report.damaged == {"samples": {2}}
    lock = lock_for(location(copy))
    lock.acquire()
    try:
        busy = verify_store(str(copy))
    finally:
        lock.release()
    assert busy.ok and "1 of 4 shards are still being written" in busy.warnings[0]


def test_info_does_not_count_a_lost_area_object_as_zeros(copy: Path) -> None:
    from anomalygen.store import store_info

    assert store_info(copy)["anomalous_fraction"] > 0
    (copy / key("area", 2)).unlink()
    with pytest.raises(StoreError) as err:
        store_info(copy)
    assert "sample 8 (shard 2) is damaged: array 'area'" in one_line(err)


def test_slices_and_index_arrays_are_checked_too(copy: Path) -> None:
    i = lesioned_sample(copy, 1)
    (copy / key("image", 1)).unlink()
    store = open_store(copy)
    for selection in (slice(0, 8), [0, i], np.array([i])):
        with pytest.raises(StoreError, match=r"sample \d+ \(shard 1\) is damaged: array 'image'"):
            store[selection]
    images, _ = store[0:4]
    assert images.shape == (4, SIZE, SIZE, 3) and images.any()
    assert store[[3, 0]][0].shape == (2, SIZE, SIZE, 3)
