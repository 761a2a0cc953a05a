"""``anomalygen convert STORE OUT --layout full|compact`` and ``render --layout`` (issue 13): a
converted store's arrays are byte for byte a render of the same command in that layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from anomalygen import open_store
from anomalygen.convert import convert_store
from anomalygen.errors import StoreError
from anomalygen.render import render
from anomalygen.store import shard_key
from anomalygen.verify import verify_store
from anomalygen_cli.anomalygen_cli import main as anomalygen_main
from tests.files import file_digests
from tests.synthetic import run_cli
from tests.test_store_digests import pinned_generator, write_photographs
from tests.test_store_readers import FIXTURE_V2

N, SIZE, SHARD = 40, 48, 16
#: Attributes that differ between two stores of the same content.
PER_STORE = ("created", "completed", "store_id")


@pytest.fixture(scope="module")
def photographs(tmp_path_factory) -> Path:
    return write_photographs(tmp_path_factory.mktemp("inputs") / "photographs")


def _render(out: Path, photographs: Path, layout: str) -> Path:
    render(
        out, photographs, N, size=SIZE, seed=4, config=pinned_generator(), shard_size=SHARD,
        workers=1, progress=False, layout=layout,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def renders(photographs: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("renders")
    return {
        layout: _render(root / f"{layout}.zarr", photographs, layout)
        for layout in ("full", "compact")
    }


def array_objects(path: Path) -> dict[str, str]:
    """Every object of every array (names and sha256): all but the group's zarr.json."""
    return {name: digest for name, digest in file_digests(path).items() if name != "zarr.json"}


def same_content(a: Path, b: Path) -> None:
    assert array_objects(a) == array_objects(b)
    attrs = [dict(zarr.open_group(str(p), mode="r").attrs) for p in (a, b)]
    for one in attrs:
        for key in PER_STORE:
            one.pop(key)
    assert attrs[0] == attrs[1]


@pytest.mark.parametrize(("start", "layout"), [("compact", "full"), ("full", "compact")])
def test_a_converted_store_is_the_render_in_that_layout(
    renders: dict[str, Path], tmp_path: Path, start: str, layout: str
) -> None:
    out = tmp_path / "converted.zarr"
    result = convert_store(renders[start], out, layout=layout, progress=False)
    assert result.layout == layout and result.n == N
    same_content(out, renders[layout])
    assert verify_store(str(out), full=True).ok


def test_a_version_2_store_converts_to_the_current_format(photographs: Path, tmp_path) -> None:
    out = tmp_path / "v3.zarr"
    convert_store(FIXTURE_V2, out, progress=False)
    fresh = tmp_path / "fresh.zarr"
    render(
        fresh, photographs, 6, size=32, seed=5, config=pinned_generator(), shard_size=4,
        workers=1, progress=False, layout="full",
    )  # fmt: skip
    assert array_objects(out) == array_objects(fresh)
    assert open_store(out).attrs["format_version"] == 3


def test_a_damaged_store_is_not_converted(renders: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "damaged.zarr"
    shutil.copytree(renders["compact"], copy)
    (copy / shard_key("patches", 1, ndim=2)).unlink()
    with pytest.raises(StoreError, match=r"sample \d+ \(shard 1\) is damaged"):
        convert_store(copy, tmp_path / "out.zarr", progress=False)


def test_an_incomplete_store_or_an_existing_out_is_refused(
    renders: dict[str, Path], tmp_path: Path
) -> None:
    copy = tmp_path / "partial.zarr"
    shutil.copytree(renders["compact"], copy)
    group = zarr.open_group(str(copy), mode="r+", use_consolidated=False)
    group["done"][1] = 0
    group.attrs.pop("completed")
    with pytest.raises(StoreError, match="not completely rendered; resume its render first"):
        convert_store(copy, tmp_path / "out.zarr", progress=False)
    with pytest.raises(StoreError, match="exists; choose another OUT, or --overwrite"):
        convert_store(renders["compact"], renders["full"], progress=False)


def test_the_cli_renders_compact_and_converts(
    photographs: Path, renders: dict[str, Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    def cli(*args):
        return run_cli(anomalygen_main, "anomalygen", monkeypatch, capsys, *args)

    compact, full = tmp_path / "c.zarr", tmp_path / "f.zarr"
    code, out, err = cli(
        "render", "--n", N, "--out", compact, "--src", photographs, "--size", SIZE, "--seed", 4,
        "--shard-size", SHARD, "--workers", 1, "--layout", "compact", "--quiet",
        "--config", _config_file(tmp_path),
    )  # fmt: skip
    assert code == 0, err
    code, out, err = cli("info", compact)
    assert code == 0 and "compact: composed on read" in out
    code, out, err = cli("convert", compact, full, "--quiet")
    assert code == 0, err
    assert out.startswith(f"converted {N} samples to a full store at {full}")
    np.testing.assert_array_equal(open_store(full)[3][0], open_store(renders["full"])[3][0])
    code, out, err = cli("convert", compact, full, "--quiet")
    assert code == 1 and "exists; choose another OUT" in err
    code, out, err = cli("render", "--n", 4, "--out", tmp_path / "x.zarr", "--src", photographs,
                         "--layout", "tiny")  # fmt: skip
    assert code != 0 and "--layout: unknown layout 'tiny'" in err


def _config_file(folder: Path) -> Path:
    path = folder / "generator.json"
    from anomalygen.config import to_dict

    path.write_text(json.dumps(to_dict(pinned_generator())))
    return path
