"""Hostile or absurd store attributes: every attribute is checked on open, before anything is
computed from it, and a bad one is one StoreError line naming it; never another exception.

Before: ``shard_size: 0`` gave ``internal error: ZeroDivisionError`` in verify, info, preview and
train; ``n: -5`` an internal ValueError; ``n: 10**15`` a MemoryError; ``format_version: true``
was accepted; ``size: -1`` trained; a 50 MB string was printed by ``anomalygen info``.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomalygen import open_store
from anomalygen.errors import StoreError
from anomalygen.render import render
from anomalygen.store import store_info
from anomalygen.verify import verify_store
from anomalygen_cli.anomalygen_cli import main as anomalygen_main
from tests.synthetic import run_cli, write_sources

N, SIZE, SHARD = 8, 32, 4


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    src = write_sources(tmp_path_factory.mktemp("src") / "normals", count=2)
    out = tmp_path_factory.mktemp("good") / "good.zarr"
    render(out, src, N, size=SIZE, shard_size=SHARD, workers=1, progress=False, layout="full")
    return out


def read_attrs_file(path: Path) -> dict[str, Any]:
    return json.loads((path / "zarr.json").read_text())["attributes"]


def write_attrs_file(path: Path, attrs: dict[str, Any]) -> None:
    """Replace the group's attributes in its zarr.json (as an editor or a bad copy would)."""
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"] = attrs
    (path / "zarr.json").write_text(json.dumps(meta))


@pytest.fixture()
def edited(good: Path, tmp_path: Path) -> Path:
    target = tmp_path / "edited.zarr"
    shutil.copytree(good, target)
    return target


def set_attr(path: Path, key: str, value: Any) -> None:
    attrs = read_attrs_file(path)
    attrs[key] = value
    write_attrs_file(path, attrs)


def one_line_store_error(fn) -> str:
    with pytest.raises(StoreError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    return message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("shard_size", 0, "attribute 'shard_size' must be an integer from 1 to 4,096, got 0"),
        ("n", -5, "attribute 'n' must be an integer from 1 to 100,000,000, got -5"),
        ("n", 10**15, "attribute 'n' must be an integer from 1"),
        ("size", -1, "attribute 'size' must be an integer from 32 to 4,096, got -1"),
        ("size", 64.0, "attribute 'size' must be an integer"),
        ("format_version", True, "store format version True is not known"),
        ("seed", "0", "attribute 'seed' must be an integer"),
        ("codec", "lzma", "attribute 'codec' must be one of zstd, blosc-lz4, none"),
        ("clahe", 1, "attribute 'clahe' must be true or false"),
        ("pools", {"normals": 99}, "attribute 'pools.normals' must equal the 2 files listed"),
        ("pools", [], "attribute 'pools' must map 'normals'"),
        ("generator", {"alpha": 7}, "attribute 'generator' is not a valid generator config"),
        ("generator", {"lesions": "many"}, "attribute 'generator' is not a valid generator"),
        ("sources", {"files": "x"}, "attribute 'sources.files' must be a list"),
        ("skipped", [{"pool": "x"}], "attribute 'skipped[0].pool' must be one of normals"),
        ("skipped", [{}] * 3, "attribute 'skipped' must be a list of at most 2"),
        ("created", "x" * 50_000_000, "attribute 'created' is 50,000,000 characters long"),
    ],
)
def test_bad_attributes_are_one_line_errors_naming_them(
    edited: Path, key: str, value: Any, expected: str
) -> None:
    set_attr(edited, key, value)
    for call in (lambda: open_store(edited), lambda: store_info(edited)):
        assert expected in one_line_store_error(call)
    assert expected in one_line_store_error(lambda: verify_store(str(edited)))


def test_a_huge_string_is_not_printed_by_info(edited: Path, monkeypatch, capsys) -> None:
    attrs = read_attrs_file(edited)
    attrs["sources"]["description"] = "y" * 50_000_000
    write_attrs_file(edited, attrs)
    code, out, err = run_cli(anomalygen_main, "anomalygen", monkeypatch, capsys, "info", edited)
    assert code == 1 and out == ""
    assert err.strip() == (
        f"error: {edited}: attribute 'sources.description' is 50,000,000 characters long "
        "(at most 4,096)"
    )


@pytest.mark.parametrize("command", ["info", "verify", "preview"])
def test_commands_print_one_line_for_a_zero_shard_size(
    edited: Path, tmp_path: Path, monkeypatch, capsys, command: str
) -> None:
    set_attr(edited, "shard_size", 0)
    args = [command, edited] + (["--out", tmp_path / "p.png"] if command == "preview" else [])
    code, _, err = run_cli(anomalygen_main, "anomalygen", monkeypatch, capsys, *args)
    assert code == 1 and "internal error" not in err
    assert err.strip().endswith("attribute 'shard_size' must be an integer from 1 to 4,096, got 0")
    assert len(err.strip().splitlines()) == 1


def test_train_refuses_a_store_with_a_negative_size(edited: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from resynth_models.train import make_configs, train

    set_attr(edited, "size", -1)
    config, network = make_configs("small", steps=1, workers=0, device="cpu")
    message = one_line_store_error(lambda: train(edited, tmp_path / "run", config, network))
    assert message.startswith("--data: ") and "attribute 'size'" in message


def test_attributes_of_another_store_are_caught(edited: Path) -> None:
    """Valid attributes that do not describe these arrays (a zarr.json copied from another
    store, or n edited) would read wrong samples: refused."""
    for key, value in (("n", N - 1), ("size", 64), ("shard_size", 2)):
        attrs = read_attrs_file(edited)
        saved = copy.deepcopy(attrs)
        attrs[key] = value
        write_attrs_file(edited, attrs)
        assert "disagree with array 'image'" in one_line_store_error(lambda: open_store(edited))
        write_attrs_file(edited, saved)
    assert len(open_store(edited)) == N


# ------------------------------------------------------------------------------------------
# Property: any mutation of the attributes gives a one-line StoreError or a correct result
# ------------------------------------------------------------------------------------------

#: Paths (keys into nested attributes) that a mutation may replace or delete.
PATHS = [
    ("format",), ("format_version",), ("anomalygen_version",), ("created",), ("completed",),
    ("store_id",), ("n",), ("size",), ("seed",), ("shard_size",), ("pool_shard_size",),
    ("codec",), ("clahe",), ("generator",), ("generator", "alpha"), ("generator", "lesions"),
    ("generator", "perlin"), ("generator", "augment", "ops"), ("sources",),
    ("sources", "files"), ("sources", "files", 0), ("sources", "files", 0, 1),
    ("sources", "root"), ("textures",), ("pools",), ("pools", "normals"), ("normals_count",),
    ("skipped",), ("unknown_key",),
]  # fmt: skip

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1, -1, 2, 3, 4, 7, 8, 9, 31, 32, 33, 64, 4096, 4097, 10**15])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["zstd", "none", "normals", "textures", "fundus", "texture", "x" * 5000])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
DELETE = object()


def mutate(attrs: dict[str, Any], path: tuple, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(attrs)
    node: Any = out
    for key in path[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return out
    last = path[-1]
    try:
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    except (KeyError, IndexError, TypeError):
        pass
    return out


def exercise(path: Path) -> None:
    """What a user does with a store: open it, read a sample, its meta and a normal, info and
    a spot check."""
    store = open_store(path)
    len(store)
    store[0]
    store.meta(0)
    store.normals[0]
    store_info(path)
    verify_store(str(path), samples=2)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    mutations=st.lists(
        st.tuples(st.sampled_from(PATHS), JSON_VALUES | st.just(DELETE)), min_size=1, max_size=3
    )
)
def test_mutated_attributes_give_a_store_error_or_a_correct_result(
    good: Path, tmp_path_factory, mutations
) -> None:
    target = tmp_path_factory.mktemp("mutated") / "m.zarr"
    shutil.copytree(good, target)
    attrs = read_attrs_file(good)
    for path, value in mutations:
        attrs = mutate(attrs, path, value)
    write_attrs_file(target, attrs)
    try:
        exercise(target)
    except StoreError as err:
        assert "\n" not in str(err) and len(str(err)) < 400, str(err)
    finally:
        shutil.rmtree(target)
