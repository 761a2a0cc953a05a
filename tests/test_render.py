"""The render scheduler: determinism across workers, kill -9 and resume, locking, parameter
changes, bad source files, errors that leave completed shards intact, texture mode."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from anomalygen import open_store
from anomalygen import store as st
from anomalygen.errors import ConfigError, ImageError, StoreError
from anomalygen.generator import GeneratorConfig, draw_pair, sample_rng
from anomalygen.progress import Progress
from anomalygen.render import RenderInterrupted, render
from anomalygen.store.text import meta_bytes
from anomalygen.verify import verify_store
from tests.badfiles import write_bad_files, write_odd_but_valid_files
from tests.synthetic import write_sources
from tests.test_store import arrays_of

N, SIZE, SHARD = 32, 64, 4
ROOT = Path(__file__).resolve().parents[1]


def _render(out, src, **kwargs):
    options = {"size": SIZE, "shard_size": SHARD, "workers": 1, "progress": False, "layout": "full"}
    options.update(kwargs)
    return render(str(out), src, options.pop("n", N), **options)


def _assert_same_arrays(a: str, b: str) -> None:
    got, expected = arrays_of(a), arrays_of(b)
    assert sorted(got) == sorted(expected)
    for name, arr in expected.items():
        assert got[name].dtype == arr.dtype
        np.testing.assert_array_equal(got[name], arr, err_msg=name)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    return write_sources(tmp_path_factory.mktemp("src") / "normals")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sources) -> str:
    """An uninterrupted in-process render that others must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    result = _render(out, sources)
    assert result.shards_rendered == N // SHARD and result.skipped == []
    return str(out)


def test_two_workers_write_the_same_bytes_as_one(reference: str, sources: Path, tmp_path) -> None:
    result = _render(tmp_path / "two.zarr", sources, workers=2)
    assert result.workers == 2 and result.samples_rendered == N
    assert result.peak_rss_per_worker > 0
    _assert_same_arrays(str(tmp_path / "two.zarr"), reference)
    # The shard objects themselves are identical (same data, same deterministic codec).
    key = st.shard_key("image", 3, ndim=4)
    assert (tmp_path / "two.zarr" / key).read_bytes() == (Path(reference) / key).read_bytes()


def test_samples_depend_on_seed_and_index_only(reference: str) -> None:
    store = open_store(reference)
    for i in (0, 13, 31):
        t, s = draw_pair(0, i, sample_rng(0, i), len(store.normals))
        meta = store.meta(i)
        assert (meta["target"], meta["source"]) == (t, s)


_SLOW_CHILD = """
import sys, time
from anomalygen import store as st
from anomalygen.render import render

write = st.StoreWriter.write_samples

def slow_write(self, *args, **kwargs):  # a slow disk: time to kill between shards
    write(self, *args, **kwargs)
    time.sleep(0.25)

st.StoreWriter.write_samples = slow_write
render(sys.argv[1], sys.argv[2], {n}, size={size}, shard_size={shard}, workers=1, progress=False,
       layout="full")
"""


def _flags(out: Path) -> int:
    folder = out / "done" / "c"
    return len(list(folder.iterdir())) if folder.is_dir() else 0


def test_kill_9_then_resume_is_byte_identical(reference: str, sources: Path, tmp_path) -> None:
    out = tmp_path / "killed.zarr"
    script = tmp_path / "child.py"
    script.write_text(_SLOW_CHILD.format(n=N, size=SIZE, shard=SHARD))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, str(script), str(out), str(sources)], env=env)
    try:
        deadline = time.monotonic() + 60
        while _flags(out) < 2:
            assert child.poll() is None, "the render ended before it could be killed"
            assert time.monotonic() < deadline, "no shard completed within 60 s"
            time.sleep(0.02)
        # While it runs, a second render into the same store is refused.
        with pytest.raises(StoreError, match="another render is writing this store"):
            _render(out, sources)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    done_before = _flags(out)
    assert 2 <= done_before < N // SHARD

    result = _render(out, sources)  # the lock died with the process: resume works
    assert result.shards_already_done == done_before
    assert result.shards_rendered == N // SHARD - done_before
    _assert_same_arrays(str(out), reference)
    assert not [p for p in out.rglob("*.partial")]


def test_parameter_change_is_refused_and_overwrite_starts_over(sources: Path, tmp_path) -> None:
    out = tmp_path / "p.zarr"
    _render(out, sources, n=8)
    with pytest.raises(StoreError) as err:
        _render(out, sources, n=8, seed=1, config=GeneratorConfig(p_normal=0.3))
    message = str(err.value)
    assert "different parameters" in message and "--overwrite" in message
    assert "seed 0 -> 1" in message and "generator.p_normal 0.2 -> 0.3" in message
    assert "\n" not in message and "--layout full" not in message
    assert open_store(out).seed == 0  # untouched
    # A full store resumed with the default (compact) layout: the message names the flag.
    with pytest.raises(StoreError, match=r"for this store: --layout full"):
        _render(out, sources, n=8, layout="compact")

    result = _render(out, sources, n=8, seed=1, overwrite=True)
    assert result.shards_rendered == 2
    assert open_store(out).seed == 1
    # Same parameters again: nothing to do.
    again = _render(out, sources, n=8, seed=1)
    assert again.shards_rendered == 0 and again.shards_already_done == 2


def test_bad_source_files_are_skipped_with_reasons(tmp_path) -> None:
    src = write_sources(tmp_path / "src", count=2)
    expected = write_bad_files(src)
    out = tmp_path / "bad.zarr"
    result = _render(out, src, n=8)
    skipped = {s["name"]: s["reason"] for s in result.skipped}
    assert set(skipped) == set(expected)
    for name, keyword in expected.items():
        assert keyword in skipped[name].lower(), (name, skipped[name])
        assert name not in skipped[name]  # the file is named once, in "name"
    store = open_store(out)
    assert len(store.normals) == 2
    assert {store.normals.name(j) for j in range(2)} == {"normal_0.png", "normal_1.png"}
    assert {s["name"] for s in store.attrs["skipped"]} == set(expected)
    assert verify_store(str(out), full=True).ok

    with pytest.raises(ImageError, match="--strict"):
        _render(tmp_path / "strict.zarr", src, n=8, strict=True)

    only_bad = tmp_path / "only_bad"
    write_bad_files(only_bad)
    with pytest.raises(ImageError, match=r"no usable source image .* all 7 files were skipped"):
        _render(tmp_path / "none.zarr", only_bad, n=8)


def test_odd_but_valid_files_are_all_used(tmp_path) -> None:
    names = write_odd_but_valid_files(tmp_path / "odd")
    result = _render(tmp_path / "odd.zarr", tmp_path / "odd", n=4)
    assert result.skipped == [] and result.normals == len(names)


def test_write_error_keeps_completed_shards(
    reference: str, sources: Path, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "full.zarr"
    write = st.StoreWriter.write_samples
    calls = []

    def disk_full_on_third(self, shard, *args, **kwargs):
        calls.append(shard)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, shard, *args, **kwargs)

    monkeypatch.setattr(st.StoreWriter, "write_samples", disk_full_on_third)
    with pytest.raises(StoreError) as err:
        _render(out, sources)
    message = str(err.value)
    assert "No space left on device" in message and "2 of 8 shards are complete" in message
    assert "\n" not in message
    monkeypatch.setattr(st.StoreWriter, "write_samples", write)
    result = _render(out, sources)
    assert result.shards_already_done == 2
    _assert_same_arrays(str(out), reference)


def test_ctrl_c_leaves_a_resumable_store(
    reference: str, sources: Path, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "ctrlc.zarr"
    write = st.StoreWriter.write_samples
    calls = []

    def interrupt_on_fourth(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        write(self, *args, **kwargs)

    monkeypatch.setattr(st.StoreWriter, "write_samples", interrupt_on_fourth)
    with pytest.raises(RenderInterrupted, match=r"3 of 8 shards .* run the same command again"):
        _render(out, sources)
    monkeypatch.setattr(st.StoreWriter, "write_samples", write)
    assert _render(out, sources).shards_already_done == 3
    _assert_same_arrays(str(out), reference)


def test_texture_mode_stores_its_textures(sources: Path, tmp_path) -> None:
    textures = tmp_path / "dtd"
    textures.mkdir()
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (40 + 10 * k, 50, 3), dtype=np.uint8)).save(
            textures / f"t{k}.png"
        )
    config = GeneratorConfig(source="texture", p_normal=0.0)
    out = tmp_path / "tex.zarr"
    result = _render(out, sources, n=8, config=config, textures=textures)
    assert result.textures == 3
    store = open_store(out)
    assert len(store.textures) == 3 and store.textures[0][0].shape == (SIZE, SIZE, 3)
    meta = store.meta(0)
    assert meta["source_pool"] == "textures" and 0 <= meta["source"] < 3
    crop = store.lesion_sources(0)[0]
    assert crop["source_pool"] == "textures" and crop["crop"].ndim == 3
    assert verify_store(str(out)).ok
    with pytest.raises(ConfigError, match="--texture-dir"):
        _render(tmp_path / "t2.zarr", sources, n=8, config=config)
    with pytest.raises(ConfigError, match="only used with --source texture"):
        _render(tmp_path / "t3.zarr", sources, n=8, textures=textures)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "--n: must be an integer >= 1"),
        ({"size": 8}, "--size: must be an integer >= 32"),
        ({"shard_size": 0}, "--shard-size"),
        ({"codec": "gzip"}, "--codec: unknown codec 'gzip'"),
        ({"workers": "many"}, "--workers: expected a positive integer or 'auto'"),
        ({"workers": 0}, "--workers: must be at least 1"),
    ],
)
def test_bad_options_are_one_line_errors(sources: Path, tmp_path, kwargs, message) -> None:
    with pytest.raises(ConfigError) as err:
        _render(tmp_path / "o.zarr", sources, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "o.zarr").exists()


def test_bad_destinations(sources: Path, tmp_path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create the store"):
        _render(blocker / "s.zarr", sources, n=4)
    with pytest.raises(StoreError, match="exists and is not a folder"):
        _render(blocker, sources, n=4)
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "thesis.txt").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="exists and is not an anomalygen store"):
            _render(documents, sources, n=4, overwrite=overwrite)
    assert (documents / "thesis.txt").read_text() == "precious"
    # Someone else's Zarr group, even without attributes, is never cleared.
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w").create_array("data", shape=(3,), dtype="int32")
    with pytest.raises(StoreError, match="not an anomalygen store"):
        _render(foreign, sources, n=4, overwrite=True)
    assert (foreign / "data" / "zarr.json").is_file()
    with pytest.raises(ConfigError, match="does not exist"):
        _render(tmp_path / "x.zarr", tmp_path / "no_such_folder", n=4)


def test_progress_plain_lines() -> None:
    stream = io.StringIO()
    with Progress(
        100, description="render", unit="samples", completed=40, stream=stream, interval=0.0
    ) as bar:
        bar.advance(30)
        bar.advance(30)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("render: 70/100 samples (70.0%), ")
    assert "samples/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("render: 100/100 samples (100.0%)")
    assert "ETA" not in lines[-1]
    quiet = io.StringIO()
    with Progress(10, stream=quiet, enabled=False) as bar:
        bar.advance(10)
    assert quiet.getvalue() == ""


def test_zarr_layout(reference: str) -> None:
    group = zarr.open_group(reference, mode="r")
    assert group["image"].shards == (SHARD, SIZE, SIZE, 3)
    assert group["image"].chunks == (1, SIZE, SIZE, 3)
    # format 3: records as rows of bytes, one chunk per shard
    assert group["meta"].chunks == (SHARD, meta_bytes(GeneratorConfig().lesions[1]))
    assert group["meta"].shards is None
    assert group["done"].chunks == (1,)
    assert group["normals"].shards[0] == min(st.POOL_SHARD_SIZE, 4)  # 4 source images


def test_lock_object_for_urls(sources: Path) -> None:
    """Stores behind URLs use a lock object with a heartbeat: a fresh one refuses a second
    render, a stale one (its render died) is taken over, and a finished render removes it."""
    import json

    import fsspec

    url = "memory://anomalygen-test/locked.zarr"
    fs, path = fsspec.core.url_to_fs(url + ".lock")
    fs.pipe_file(path, json.dumps({"owner": "host:123:abc", "heartbeat": time.time()}).encode())
    with pytest.raises(StoreError, match=r"another render \(host:123:abc\) is writing this store"):
        _render(url, sources, n=4)
    fs.pipe_file(
        path, json.dumps({"owner": "host:123:abc", "heartbeat": time.time() - 3600}).encode()
    )
    assert _render(url, sources, n=4).shards_rendered == 1
    assert not fs.exists(path)
