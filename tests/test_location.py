"""StoreLocation: the same operations on a local folder and on an fsspec URL (memory://), all
through zarr's Store API."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from anomalygen.errors import StoreError
from anomalygen.store.location import StoreLocation, location


@pytest.fixture(params=["folder", "memory"])
def loc(request, tmp_path: Path) -> StoreLocation:
    if request.param == "folder":
        return location(tmp_path / "s.zarr")
    return location(f"memory://anomalygen-location-test/{uuid.uuid4().hex}/s.zarr")


def test_objects_written_are_listed_read_sized_and_deleted(loc: StoreLocation) -> None:
    assert loc.is_empty() and loc.list_keys() == set() and loc.sizes() == {}
    assert loc.read("zarr.json") is None
    loc.write("zarr.json", b"{}")
    loc.write("image/c/0/0/0/0", b"12345")
    loc.write("image/zarr.json", b"{}")
    assert not loc.is_empty()
    assert loc.list_keys() == {"zarr.json", "image/c/0/0/0/0", "image/zarr.json"}
    assert loc.list_keys("image/c/") == {"image/c/0/0/0/0"}
    assert loc.read("image/c/0/0/0/0") == b"12345"
    assert loc.sizes() == {"zarr.json": 2, "image": 7} and loc.bytes_on_disk() == 9
    loc.delete("image/c/0/0/0/0")
    loc.delete("image/c/0/0/0/0")  # gone already: nothing to do
    assert loc.list_keys() == {"zarr.json", "image/zarr.json"}


def test_clear_empties_the_store(loc: StoreLocation) -> None:
    for key in ("zarr.json", "mask/zarr.json", "mask/c/1/0/0"):
        loc.write(key, b"x")
    loc.clear()
    assert loc.is_empty() and loc.list_keys() == set()


def test_clear_keeps_a_local_store_folder_for_its_lock(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    loc = location(path)
    loc.write("image/c/0", b"x")
    inode = path.stat().st_ino
    loc.clear()
    assert path.is_dir() and path.stat().st_ino == inode and not any(path.iterdir())


def test_a_folder_with_an_empty_subfolder_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    assert not location(tmp_path / "docs").is_empty()
    assert location(tmp_path / "nothing").is_empty()


def test_addresses(tmp_path: Path) -> None:
    assert location(tmp_path).local_path == tmp_path
    assert location(f"file://{tmp_path}").local_path == tmp_path
    assert location("memory://b/x.zarr").in_memory
    assert location("s3://bucket/x.zarr").protocol == "s3"
    assert location("rel.zarr").resolved().url == str(Path("rel.zarr").resolve())
    assert location("s3://bucket/sub/x.zarr").beside(".lock") == (
        StoreLocation("s3://bucket/sub"),
        "x.zarr.lock",
    )
    folder, key = location(tmp_path / "x.zarr").beside(".lock")
    assert (folder.url, key) == (str(tmp_path), "x.zarr.lock")
    with pytest.raises(StoreError, match="a folder above it"):
        location("s3://bucket").beside(".lock")
