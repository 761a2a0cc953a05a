"""s3:// stores against a real S3 API on loopback (moto's server mode, started here): a render on
a Dask cluster reads back byte-identical to a local one; info, verify, open_store and preview
work on the URL; missing credentials fail in one line."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from anomalygen import open_store
from anomalygen import store as st
from anomalygen.errors import ConfigError, StoreError
from anomalygen.render import render
from tests.synthetic import run_cli, write_sources
from tests.test_cluster import assert_same_objects

pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e '.[dev]')")
moto_server = pytest.importorskip(
    "moto.server", reason="moto's server mode is not installed (pip install -e '.[dev]')"
)
distributed = pytest.importorskip("distributed", reason="Dask distributed is not installed")

N, SIZE, SHARD = 32, 64, 4
BUCKET = "anomalygen-test"
REGION = "us-west-2"  # moto refuses a LocationConstraint of us-east-1


@pytest.fixture(scope="module", autouse=True)
def no_real_aws():
    """Never look for credentials beyond what a test gives, and never ask an instance-metadata
    endpoint (botocore would try 169.254.169.254 when it finds no credentials). Module-scoped,
    so that it is in force before the module-scoped store fixtures run."""
    with pytest.MonkeyPatch.context() as mp:
        for name in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
        ):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
        yield


@pytest.fixture(scope="module")
def s3(no_real_aws):
    """An S3 API on 127.0.0.1 (a free port) with one bucket; yields the storage options."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {
        "key": "testing",
        "secret": "testing",
        "endpoint_url": f"http://{host}:{port}",
        "client_kwargs": {"region_name": REGION},
    }
    import s3fs

    s3fs.S3FileSystem(**options).mkdir(BUCKET)
    yield options
    server.stop()


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    return write_sources(tmp_path_factory.mktemp("src") / "normals")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sources) -> st.StoreLocation:
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    render(str(out), sources, N, size=SIZE, shard_size=SHARD, workers=1, progress=False)
    return st.location(str(out))


@pytest.fixture(scope="module")
def s3_store(s3, sources) -> str:
    """A store rendered into the bucket by a LocalCluster of 2 workers (options travel to them)."""
    url = f"s3://{BUCKET}/synth.zarr"
    result = render(
        url,
        sources,
        N,
        size=SIZE,
        shard_size=SHARD,
        workers=2,
        scheduler="local",
        storage_options=s3,
        progress=False,
    )
    assert result.workers == 2 and result.samples_rendered == N
    return url


def test_a_cluster_render_to_s3_reads_back_identically(s3, s3_store, reference) -> None:
    assert_same_objects(st.location(s3_store, s3), reference)
    store = open_store(s3_store, s3)
    local = open_store(reference.url)
    assert len(store) == N and store.complete_shards() == list(range(N // SHARD))
    for i in (0, 13, N - 1):
        for got, expected in zip(store[i], local[i], strict=True):
            np.testing.assert_array_equal(got, expected)
    assert store.meta(5) == local.meta(5)


def test_a_local_pool_render_to_s3_matches_too(s3, sources, reference) -> None:
    url = f"s3://{BUCKET}/pool.zarr"
    render(url, sources, N, size=SIZE, shard_size=SHARD, workers=2, storage_options=s3,
           progress=False)  # fmt: skip
    assert_same_objects(st.location(url, s3), reference)
    # The lock object beside the store is gone once the render ends.
    keys = st.location(f"s3://{BUCKET}", s3).list_keys()
    assert "pool.zarr.lock" not in keys and "pool.zarr/zarr.json" in keys


def test_info_and_verify_on_the_url(s3, s3_store, monkeypatch, capsys) -> None:
    from anomalygen_cli.anomalygen_cli import main

    so = [f"--storage-option={k}={v}" for k, v in s3.items() if k != "client_kwargs"]
    so.append(f'--storage-option=client_kwargs={{"region_name": "{REGION}"}}')
    code, out, err = run_cli(main, "anomalygen", monkeypatch, capsys, "info", s3_store, *so)
    assert code == 0, err
    assert f"{N} of {N} complete" in out and s3_store in out
    code, out, err = run_cli(
        main, "anomalygen", monkeypatch, capsys, "verify", s3_store, "--full", "-q", *so
    )
    assert code == 0, err + out
    assert "problem" not in out


def test_preview_of_the_url(s3, s3_store, tmp_path, monkeypatch, capsys) -> None:
    from PIL import Image

    from anomalygen_cli.anomalygen_cli import main

    so = ["-S", "key=testing", "-S", "secret=testing", "-S", f"endpoint_url={s3['endpoint_url']}"]
    png = tmp_path / "p.png"
    code, _, err = run_cli(
        main, "anomalygen", monkeypatch, capsys, "preview", s3_store, "--n", 4, "--out", png, *so
    )
    assert code == 0, err
    assert Image.open(png).size[0] > 0


def test_missing_credentials_fail_in_one_line(s3, sources, monkeypatch, capsys) -> None:
    anonymous_user = {"endpoint_url": s3["endpoint_url"], "client_kwargs": s3["client_kwargs"]}
    url = f"s3://{BUCKET}/nocreds.zarr"
    with pytest.raises(StoreError, match="credentials") as err:
        render(url, sources, 4, size=SIZE, storage_options=anonymous_user, progress=False)
    message = str(err.value)
    assert "--storage-option" in message and "\n" not in message

    from anomalygen_cli.anomalygen_cli import main

    code, _, stderr = run_cli(
        main, "anomalygen", monkeypatch, capsys, "info", url, "-S",
        f"endpoint_url={s3['endpoint_url']}",
    )  # fmt: skip
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "credentials" in lines[0]


def test_a_worker_without_credentials_is_told_so(s3, s3_store) -> None:
    """The command may have credentials that a worker lacks: the worker check names them."""
    from anomalygen.render.dask import StorageOptions, check_access

    anonymous_worker = StorageOptions({"endpoint_url": s3["endpoint_url"]})
    problem = check_access(s3_store, anonymous_worker, None)
    assert problem is not None and "credentials" in problem and "--storage-option" in problem
    assert check_access(s3_store, StorageOptions(s3), None) is None


def test_storage_options_are_hidden_from_dask_logs(s3) -> None:
    """Dask logs a failed task's arguments: the options travel in a wrapper that hides them."""
    from anomalygen.render.dask import StorageOptions

    wrapped = StorageOptions(s3)
    assert "testing" not in repr(wrapped) and "testing" not in str(wrapped)
    assert "testing" not in repr((1, "s3://b/x.zarr", wrapped))


def test_storage_option_parsing() -> None:
    parse = st.parse_storage_options
    assert parse([]) is None
    assert parse(["anon=true", "endpoint_url=http://h:9000", 'client_kwargs={"a": 1}']) == {
        "anon": True,
        "endpoint_url": "http://h:9000",
        "client_kwargs": {"a": 1},
    }
    assert parse(["secret=0123", "key=1e5", "default_block_size=5242880"]) == {
        "secret": "0123",  # credentials stay strings
        "key": "1e5",
        "default_block_size": 5242880,
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse(["anon"])


def test_train_reads_the_store_from_s3(s3, s3_store, tmp_path, monkeypatch, capsys) -> None:
    """`resynth train --data s3://... -S ...`: options reach the DataLoader, not the run folder."""
    pytest.importorskip("torch", reason="torch is not installed (the train extra)")
    from anomalygen_cli.resynth_cli import main

    run = tmp_path / "run"
    so = [f"--storage-option={k}={v}" for k, v in s3.items() if k != "client_kwargs"]
    tiny = ["--rec-width", 4, "--rec-depth", 3, "--loc-width", 4, "--loc-depth", 3]
    code, _, err = run_cli(
        main, "resynth", monkeypatch, capsys, "train", "--data", s3_store, "--out", run,
        "--steps", 2, "--batch-size", 4, "--device", "cpu", "--workers", 0, *tiny, "-q", *so,
    )  # fmt: skip
    assert code == 0, err
    assert (run / "stage2.safetensors").is_file()
    written = "".join(p.read_text(errors="ignore") for p in run.rglob("*.json"))
    assert s3_store in written and "testing" not in written  # the URL, never the secret


def test_a_compact_render_to_s3_matches_a_local_one(s3, sources, tmp_path) -> None:
    """The compact layout's patches rows (written in part, after deleting the object) on an
    object store."""
    local = tmp_path / "compact.zarr"
    render(str(local), sources, N, size=SIZE, shard_size=SHARD, workers=1, progress=False,
           layout="compact")  # fmt: skip
    url = f"s3://{BUCKET}/compact.zarr"
    render(url, sources, N, size=SIZE, shard_size=SHARD, workers=1, storage_options=s3,
           progress=False, layout="compact")  # fmt: skip
    assert_same_objects(st.location(url, s3), st.location(str(local)))
    store, reference = open_store(url, s3), open_store(str(local))
    for got, expected in zip(store[7], reference[7], strict=True):
        np.testing.assert_array_equal(got, expected)
