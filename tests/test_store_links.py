"""A link planted inside a store never makes a writer write outside it (issue 10, item 10).

Before: with ``image/c`` a link to another folder, resuming the render wrote shard 1 there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from anomalygen.errors import StoreError
from anomalygen.render import render
from anomalygen.store import StoreWriter, location
from anomalygen_cli.anomalygen_cli import main as anomalygen_main
from tests.synthetic import run_cli, write_sources

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")

N, SIZE, SHARD = 8, 32, 4


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return write_sources(tmp_path_factory.mktemp("src") / "normals", count=2)


def _render(out: Path, src: Path, **kwargs):
    return render(
        out, src, N, size=SIZE, shard_size=SHARD, workers=1, progress=False, layout="full", **kwargs
    )


@pytest.fixture()
def linked(src: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A store whose shard 1 is to be rendered again, with ``image/c`` moved to a folder
    outside it and linked back: ``(store, outside)``."""
    out = tmp_path / "s.zarr"
    _render(out, src)
    group = zarr.open_group(str(out), mode="r+")
    group["done"][1] = 0  # as if the render had been interrupted before shard 1
    del group.attrs["completed"]
    outside = tmp_path / "elsewhere"
    shutil.move(out / "image" / "c", outside)
    (outside / "1").rename(outside / "old-1")  # what the resume would rewrite
    os.symlink(outside, out / "image" / "c")
    return out, outside


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_resuming_a_store_with_an_escaping_link_is_refused(src: Path, linked) -> None:
    out, outside = linked
    before = _files(outside)
    with pytest.raises(StoreError) as err:
        _render(out, src)
    assert str(err.value) == (
        f"{out}: image/c is a link to {outside}, outside the store; a render never writes "
        "through such a link: remove it (or copy the store without links) and run again"
    )
    assert _files(outside) == before and not (outside / "1").exists()
    with pytest.raises(StoreError, match="is a link to"):
        _render(out, src, overwrite=True)  # clearing would follow the link too
    assert _files(outside) == before


def test_the_cli_says_it_in_one_line(src: Path, linked, monkeypatch, capsys) -> None:
    out, outside = linked
    code, _, err = run_cli(
        anomalygen_main, "anomalygen", monkeypatch, capsys,
        "render", "--src", src, "--n", N, "--size", SIZE, "--shard-size", SHARD,
        "--workers", "1", "--out", out, "--quiet",
    )  # fmt: skip
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "image/c is a link to" in err and not (outside / "1").exists()


def test_a_writer_never_writes_through_a_link_planted_during_a_render(linked) -> None:
    """The writer checks each shard's objects as it writes them (a link may be planted after
    the render's start-up check)."""
    out, outside = linked
    writer = StoreWriter(location(out))
    images = np.zeros((SHARD, SIZE, SIZE, 3), np.uint8)
    masks = np.zeros((SHARD, SIZE, SIZE), np.uint8)
    metas = [{"area": 0, "lesions": [], "normal": True}] * SHARD
    with pytest.raises(StoreError, match=r"image/c/1/0/0/0 would be written at .*elsewhere"):
        writer.write_samples(1, SHARD, images, masks, [0] * SHARD, [0] * SHARD, metas)
    assert not (outside / "1").exists()
    assert zarr.open_group(str(out), mode="r")["done"][1] == 0


def test_links_that_stay_inside_the_store_are_fine(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "inside.zarr"
    _render(out, src)
    (out / "image" / "c").rename(out / "image" / "real-c")
    os.symlink("real-c", out / "image" / "c")  # relative, resolves inside the store
    assert location(out).escaping_link() is None
    result = _render(out, src)
    assert result.shards_rendered == 0
