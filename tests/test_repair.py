"""``anomalygen verify STORE --repair``: damaged or missing shards rendered again, byte-identical
to the undamaged store; sources that changed, another anomalygen version, or a shard that would
come out different are refused with one line before anything is written (issue 10, item 4)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import zarr

from anomalygen.errors import StoreError
from anomalygen.render import render
from anomalygen.repair import repair_store
from anomalygen.store import shard_key
from anomalygen.verify import verify_store
from anomalygen_cli.anomalygen_cli import main as anomalygen_main
from tests.files import file_digests
from tests.synthetic import run_cli, write_sources

N, SIZE, SHARD = 20, 32, 4


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return write_sources(tmp_path_factory.mktemp("src") / "normals", count=3)


@pytest.fixture(scope="module")
def reference(src: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    render(out, src, N, size=SIZE, shard_size=SHARD, workers=1, progress=False, layout="full")
    return out


@pytest.fixture()
def damaged(reference: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "damaged.zarr"
    shutil.copytree(reference, copy)
    return copy


def key(name: str, shard: int) -> str:
    ndim = {"image": 4, "mask": 3, "normals": 4, "normals_fov": 3, "digests": 2}.get(name, 1)
    ndim = 2 if name in ("meta", "normals_info", "textures_info") else ndim  # rows of bytes
    return shard_key(name, shard, ndim=ndim)


def corrupt(path: Path, at: int = 40) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))


def damage(store: Path) -> None:
    """Three sample shards damaged in three arrays, a pool shard and a flag lost, a leftover
    temporary file."""
    (store / key("image", 1)).unlink()  # a lost object (reads as zeros)
    corrupt(store / key("mask", 2))  # a corrupted byte (its CRC32C fails)
    shutil.copy(store / key("meta", 4), store / key("meta", 3))  # another shard's object
    (store / key("normals", 0)).unlink()  # the photographs stage 1 trains on
    (store / key("done", 0)).unlink()  # a lost flag
    (store / "image" / "c" / "x.partial").write_bytes(b"half")


def test_repair_gives_a_byte_identical_store(reference: Path, damaged: Path) -> None:
    damage(damaged)
    assert file_digests(damaged) != file_digests(reference)
    result = repair_store(str(damaged))
    assert result.repaired == {"samples": [0, 1, 2, 3], "normals": [0]}
    assert result.ok and result.after is not None and result.after.ok
    assert file_digests(damaged) == file_digests(reference)
    assert result.summary() == (
        f"{damaged}: repaired 4 sample shards (0, 1, 2, 3) and 1 normals shard (0); the store is OK"
    )
    again = repair_store(str(damaged))
    assert again.repaired == {} and again.summary().startswith(f"{damaged}: nothing to repair")


def test_the_cli_repairs_and_says_what(reference: Path, damaged: Path, monkeypatch, capsys):
    (damaged / key("image", 4)).unlink()
    code, out, _ = run_cli(anomalygen_main, "anomalygen", monkeypatch, capsys, "verify", damaged)
    assert code == 1 and f"problem: shard 4: object {key('image', 4)} is missing" in out
    code, out, err = run_cli(
        anomalygen_main, "anomalygen", monkeypatch, capsys, "verify", damaged, "--repair", "-q"
    )
    assert code == 0, err
    assert out.strip().splitlines()[-1] == (
        f"{damaged}: repaired 1 sample shard (4); the store is OK"
    )
    assert file_digests(damaged) == file_digests(reference)


def test_a_truncated_shard_is_repaired(reference: Path, damaged: Path) -> None:
    """zarr reads a shard object before replacing it: a truncated one (its index cut off)
    cannot be read, and is replaced whole."""
    path = damaged / key("image", 3)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    assert repair_store(str(damaged)).ok
    assert file_digests(damaged) == file_digests(reference)


def test_repair_with_two_workers(reference: Path, damaged: Path) -> None:
    for shard in (0, 2, 3):
        (damaged / key("image", shard)).unlink()
    assert repair_store(str(damaged), workers=2).ok
    assert file_digests(damaged) == file_digests(reference)


def test_an_interrupted_render_is_completed(src: Path, reference: Path, damaged: Path) -> None:
    group = zarr.open_group(str(damaged), mode="r+")
    group["done"][3] = 0
    del group.attrs["completed"]
    (damaged / key("image", 3)).unlink()
    result = repair_store(str(damaged))
    assert result.repaired == {"samples": [3]} and result.ok
    assert zarr.open_group(str(damaged), mode="r").attrs["completed"]
    arrays = {k: v for k, v in file_digests(damaged).items() if k != "zarr.json"}
    assert arrays == {k: v for k, v in file_digests(reference).items() if k != "zarr.json"}


def test_a_changed_source_is_refused_before_anything_is_written(
    src: Path, damaged: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(src, moved)
    (damaged / key("normals", 0)).unlink()
    (damaged / key("image", 1)).unlink()
    (moved / "normal_1.png").write_bytes((moved / "normal_1.png").read_bytes() + b"\0")
    before = file_digests(damaged)
    with pytest.raises(StoreError) as err:
        repair_store(str(damaged), src=moved)
    message = str(err.value)
    assert message.startswith(f"{moved / 'normal_1.png'}: the source photograph changed since")
    assert "nothing was written" in message and "\n" not in message
    assert file_digests(damaged) == before
    (moved / "normal_1.png").unlink()
    with pytest.raises(StoreError, match=r"normal_1\.png: the source photograph to prepare again"):
        repair_store(str(damaged), src=moved)
    shutil.copy(src / "normal_1.png", moved / "normal_1.png")  # the same file, elsewhere
    assert repair_store(str(damaged), src=moved).ok


def test_a_shard_that_would_come_out_different_is_not_written(damaged: Path) -> None:
    """A store whose attributes were edited (here its seed) would be repaired with samples
    other than its own: the digests that survive tell, and nothing is written."""
    (damaged / key("image", 1)).unlink()
    group = zarr.open_group(str(damaged), mode="r+")
    group.attrs["seed"] = 1
    before = file_digests(damaged)
    with pytest.raises(StoreError) as err:
        repair_store(str(damaged))
    message = str(err.value)
    assert "shard 1 made again differs from what the store recorded" in message
    assert "nothing was written" in message and "\n" not in message
    assert file_digests(damaged) == before


def test_another_version_is_refused(damaged: Path, monkeypatch) -> None:
    (damaged / key("image", 1)).unlink()
    monkeypatch.setattr("anomalygen.__version__", "9.9.9")
    with pytest.raises(StoreError, match=r"rendered by anomalygen 0\.1\.0, this is 9\.9\.9"):
        repair_store(str(damaged))


def test_a_damaged_layout_is_refused(damaged: Path) -> None:
    shutil.rmtree(damaged / "lesions")
    with pytest.raises(StoreError, match=r"cannot be repaired: .* array 'lesions' is missing"):
        repair_store(str(damaged))


def test_a_render_running_is_refused(damaged: Path) -> None:
    from anomalygen.render.lock import lock_for
    from anomalygen.store import location

    lock = lock_for(location(damaged))
    lock.acquire()
    try:
        with pytest.raises(StoreError, match="another render is writing this store"):
            repair_store(str(damaged))
    finally:
        lock.release()
    assert verify_store(str(damaged)).ok


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_repair_never_writes_through_an_escaping_link(damaged: Path, tmp_path: Path) -> None:
    (damaged / key("image", 1)).unlink()
    outside = tmp_path / "outside"
    shutil.move(damaged / "image" / "c", outside)
    os.symlink(outside, damaged / "image" / "c")
    with pytest.raises(StoreError, match=r"image/c is a link to .*outside, outside the store"):
        repair_store(str(damaged))
    assert not (outside / "1" / "0" / "0" / "0").exists()
