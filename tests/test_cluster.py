"""Rendering on Dask (anomalygen.render.dask): byte-identity with a local render, resume after the
cluster goes away, retried shards, and one-line failures for a misconfigured cluster."""

from __future__ import annotations

import io
import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from anomalygen import store as st
from anomalygen.errors import ConfigError, StoreError
from anomalygen.render import render
from anomalygen.render.tasks import RenderShard, SampleSpec
from anomalygen.verify import verify_store
from tests.synthetic import run_cli, write_sources

distributed = pytest.importorskip(
    "distributed", reason="Dask distributed is not installed (pip install -e '.[dev]')"
)
dask_mod = pytest.importorskip("anomalygen.render.dask")

N, SIZE, SHARD = 32, 64, 4


#: Group attributes that differ between two renders of the same content.
PER_RENDER_ATTRS = ("created", "completed", "store_id")


def store_objects(loc: st.StoreLocation) -> dict[str, bytes]:
    """Every object of a store, by key, except the group's zarr.json (compared apart)."""
    keys = sorted(k for k in loc.list_keys("") if k != "zarr.json")
    return {k: loc.read(k) for k in keys}


def assert_same_objects(a: st.StoreLocation, b: st.StoreLocation) -> None:
    """Byte-identical stores: every array object, and the group attributes except timestamps
    and the store's id (the sources with their hashes, the skipped files, the config...)."""
    got, expected = store_objects(a), store_objects(b)
    assert sorted(got) == sorted(expected)
    differing = [k for k in expected if got[k] != expected[k]]
    assert not differing, f"{len(differing)} objects differ, first {differing[0]}"
    attrs_a, attrs_b = st.read_attrs(a), st.read_attrs(b)
    assert attrs_a is not None and attrs_b is not None
    for key in PER_RENDER_ATTRS:
        attrs_a.pop(key, None)
        attrs_b.pop(key, None)
    assert attrs_a == attrs_b


def _render(out, src, **kwargs):
    options = {"size": SIZE, "shard_size": SHARD, "workers": 1, "progress": False, "layout": "full"}
    options.update(kwargs)
    return render(str(out), src, options.pop("n", N), **options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    return write_sources(tmp_path_factory.mktemp("src") / "normals")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sources) -> st.StoreLocation:
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    _render(out, sources)
    return st.location(str(out))


def local_cluster(n_workers: int) -> distributed.LocalCluster:
    """A LocalCluster of single-threaded worker processes, as a user's cluster would be."""
    return distributed.LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # any free port
        silence_logs=logging.ERROR,
    )


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(2) as c:
        yield c


def test_cluster_render_is_byte_identical_to_a_local_one(
    cluster, sources, reference, tmp_path
) -> None:
    out = tmp_path / "cluster.zarr"
    shown = io.StringIO()  # not a terminal: one plain line per step
    result = _render(
        out, sources, scheduler=cluster.scheduler_address, progress=True, progress_stream=shown
    )
    # The progress display follows the shards the cluster completes.
    assert "prepare: 4/4 images" in shown.getvalue()
    assert f"render: {N}/{N} samples" in shown.getvalue()
    assert result.cluster == cluster.scheduler_address
    assert result.workers == 2 and result.shards_rendered == N // SHARD
    assert "on the Dask cluster at tcp://" in result.summary()
    assert_same_objects(st.location(str(out)), reference)
    assert verify_store(str(out), full=True).ok


def test_resume_after_the_cluster_shut_down_mid_render(sources, tmp_path) -> None:
    n = 600  # 150 shards: the render is still running when the watcher closes the cluster
    out = tmp_path / "cut.zarr"
    local = tmp_path / "local.zarr"
    _render(local, sources, n=n)
    doomed = local_cluster(2)
    closed_at: list[int] = []

    def close_after_two_shards() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                done = st.SampleStore(str(out)).complete_shards()
            except StoreError:  # not created yet
                done = []
            if len(done) >= 2:
                closed_at.append(len(done))
                doomed.close()
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=close_after_two_shards)
    watcher.start()
    try:
        with pytest.raises(StoreError) as err:
            _render(out, sources, n=n, scheduler=doomed.scheduler_address)
    finally:
        watcher.join()
        doomed.close()
    message = str(err.value)
    assert "went away" in message and "run the same command again" in message
    assert "\n" not in message
    complete = st.SampleStore(str(out)).complete_shards()
    assert closed_at and 2 <= len(complete) < n // SHARD

    resumed = _render(out, sources, n=n, scheduler="local", workers=2)
    assert resumed.shards_already_done == len(complete)
    assert resumed.shards_rendered == n // SHARD - len(complete)
    assert_same_objects(st.location(str(out)), st.location(str(local)))


def test_ctrl_c_stops_a_local_cluster_render_cleanly(sources, tmp_path) -> None:
    """Ctrl-C reaches the whole process group (command, Dask's workers): one line, exit 130,
    no worker tracebacks, and a store that resumes to the same bytes."""
    import os
    import signal

    n, out, local = 400, tmp_path / "ctrlc.zarr", tmp_path / "local.zarr"
    args = ["render", "--src", sources, "--n", n, "--size", SIZE, "--shard-size", SHARD, "--layout"]
    args += ["full"]
    args += ["--out", out, "--scheduler", "local", "--workers", 2, "-q"]
    # The command as a terminal starts it: Ctrl-C raises KeyboardInterrupt. (A test run started
    # in the background, as CI may be, hands its children SIGINT ignored.)
    as_from_a_terminal = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"sys.argv = ['anomalygen', *{[str(a) for a in args]!r}]; "
        "runpy.run_module('anomalygen_cli.anomalygen_cli', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", as_from_a_terminal],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives it
        cwd=Path(__file__).resolve().parents[1],
    )
    # Each completed shard writes one `done` object: counting them needs no store open, which
    # can lag far behind the render on a loaded machine (the render then finished first).
    flags = out / "done" / "c"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if flags.is_dir() and sum(1 for _ in flags.iterdir()) >= 2:
            break
        time.sleep(0.01)
    running = proc.poll() is None
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert running, f"the render ended before Ctrl-C (exit {proc.returncode}): {err[-3000:]}"
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "run the same command again to resume" in err.strip().splitlines()[-1], err[-3000:]
    done = len(st.SampleStore(str(out)).complete_shards())
    assert 2 <= done < n // SHARD, (done, err[-3000:])
    _render(local, sources, n=n)
    assert _render(out, sources, n=n).shards_already_done == done
    assert_same_objects(st.location(str(out)), st.location(str(local)))


def test_a_shard_run_twice_writes_the_same_bytes(sources, reference, tmp_path, monkeypatch) -> None:
    """Dask reruns the task of a worker that died; the second run must change nothing."""
    import cv2

    # Run the task function here, without the one-time set-up meant for a worker process.
    monkeypatch.setattr(dask_mod, "WORKER_PROCESS", dask_mod.WorkerProcess(set_up=True))
    threads = cv2.getNumThreads()
    out = tmp_path / "twice.zarr"
    _render(out, sources)
    store_id = st.read_attrs(st.location(str(out)))["store_id"]
    options = dask_mod.StorageOptions(None)
    task = RenderShard(3, SampleSpec.of(st.open_store(out).spec))
    key = st.shard_key("image", 3, ndim=4)
    before = (out / key).read_bytes()
    try:
        for token in ("first", "second"):  # another token: fresh state, as on another worker
            report = dask_mod.run_dask_task(token, str(out), options, 1 << 24, store_id, task)
            assert report.samples == SHARD and report.cpu_seconds > 0
            dask_mod.forget(token)
    finally:
        cv2.setNumThreads(threads)
    assert (out / key).read_bytes() == before
    assert_same_objects(st.location(str(out)), reference)


def test_a_task_of_an_abandoned_render_does_not_write(sources, tmp_path, monkeypatch) -> None:
    """A task still running after its render gave up must not write into a store that has
    been started over (--overwrite) since: it checks the store's id first."""
    import cv2

    monkeypatch.setattr(dask_mod, "WORKER_PROCESS", dask_mod.WorkerProcess(set_up=True))
    threads = cv2.getNumThreads()
    out = tmp_path / "over.zarr"
    _render(out, sources, seed=1)
    old_id = st.read_attrs(st.location(str(out)))["store_id"]
    task = RenderShard(3, SampleSpec.of(st.open_store(out).spec))
    _render(out, sources, seed=2, overwrite=True)
    key = st.shard_key("image", 3, ndim=4)
    before = (out / key).read_bytes()
    try:
        with pytest.raises(StoreError, match="started over by another render"):
            dask_mod.run_dask_task(
                "stale", str(out), dask_mod.StorageOptions(None), 1 << 24, old_id, task
            )
    finally:
        dask_mod.forget("stale")
        cv2.setNumThreads(threads)
    assert (out / key).read_bytes() == before


def test_a_cluster_left_without_workers_fails_instead_of_waiting(
    sources, tmp_path, monkeypatch
) -> None:
    """Every worker gone but the scheduler up: tasks would wait forever; the render stops."""
    monkeypatch.setattr(dask_mod, "WATCH_INTERVAL_S", 0.2)
    monkeypatch.setattr(dask_mod, "WORKERS_TIMEOUT_S", 2.0)
    out = tmp_path / "orphan.zarr"
    with local_cluster(1) as lonely:

        def remove_the_worker() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if st.SampleStore(str(out)).complete_shards():
                        lonely.scale(0)
                        return
                except StoreError:
                    pass
                time.sleep(0.01)

        watcher = threading.Thread(target=remove_the_worker)
        watcher.start()
        try:
            with pytest.raises(StoreError, match="has had no workers for 2 s") as err:
                _render(out, sources, n=600, scheduler=lonely.scheduler_address)
        finally:
            watcher.join()
    assert "run the same command again" in str(err.value)


def test_a_dead_scheduler_fails_fast_in_one_line(sources, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(dask_mod, "CONNECT_TIMEOUT_S", 1.0)
    address = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(
        ConfigError, match=r"no Dask scheduler answers at tcp://127\.0\.0\.1"
    ) as err:
        _render(tmp_path / "x.zarr", sources, scheduler=address)
    assert time.monotonic() - t0 < 30
    assert "\n" not in str(err.value)


def test_workers_without_anomalygen_fail_fast(sources, tmp_path) -> None:
    """A worker whose Python cannot import anomalygen: refused before any task runs."""
    with local_cluster(0) as bare:
        hide = (
            "import sys; sys.modules['anomalygen'] = None; "  # import anomalygen now fails
            "from distributed.cli.dask_worker import main; main()"
        )
        worker = subprocess.Popen(
            [
                sys.executable,
                "-c",
                hide,
                bare.scheduler_address,
                "--nthreads",
                "1",
                "--no-nanny",
                "--no-dashboard",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with pytest.raises(ConfigError, match="cannot import anomalygen") as err:
                _render(tmp_path / "x.zarr", sources, scheduler=bare.scheduler_address)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    assert "install anomalygen" in str(err.value) and "\n" not in str(err.value)
    assert st.SampleStore(str(tmp_path / "x.zarr")).complete_shards() == []


def test_worker_access_check(reference, tmp_path) -> None:
    """What a worker reports when it cannot reach the store or the source photographs."""
    none = dask_mod.StorageOptions(None)
    missing = dask_mod.check_access(str(tmp_path / "nowhere.zarr"), none, None)
    assert missing is not None and "every worker reaches" in missing
    no_src = dask_mod.check_access(reference.url, none, str(tmp_path / "gone.png"))
    assert no_src is not None and "--src must be on a filesystem" in no_src
    assert dask_mod.check_access(reference.url, none, None) is None


def test_workers_with_another_version_are_refused(cluster, sources, tmp_path, monkeypatch):
    """Samples could differ between versions: a worker running another one is refused."""
    import anomalygen

    monkeypatch.setattr(anomalygen, "__version__", "0.0.0-other")
    with pytest.raises(ConfigError, match=r"runs anomalygen .*, this command 0\.0\.0-other"):
        _render(tmp_path / "v.zarr", sources, scheduler=cluster.scheduler_address)


@pytest.mark.parametrize(
    ("scheduler", "out", "message"),
    [
        ("localhost:8786", "x.zarr", "--scheduler: expected 'local' or a Dask scheduler address"),
        ("http://host:8786", "x.zarr", "--scheduler: expected"),
        ("tcp://localhost:notaport", "x.zarr", "--scheduler: no Dask scheduler answers"),
        ("local", "memory://x.zarr", "memory:// store lives in this process"),
    ],
)
def test_bad_scheduler_options(sources, tmp_path, scheduler, out, message) -> None:
    target = out if "://" in out else str(tmp_path / out)
    with pytest.raises(ConfigError, match=message):
        render(target, sources, 4, size=SIZE, scheduler=scheduler, progress=False)


def test_cli_scheduler_errors_are_one_line(sources, tmp_path, monkeypatch, capsys) -> None:
    from anomalygen_cli.anomalygen_cli import main

    monkeypatch.setattr(dask_mod, "CONNECT_TIMEOUT_S", 1.0)
    args = ["render", "--src", sources, "--n", 4, "--size", SIZE, "--out", tmp_path / "c.zarr"]
    code, _, err = run_cli(
        main, "anomalygen", monkeypatch, capsys, *args, "--scheduler", "tcp://127.0.0.1:1"
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --scheduler: no Dask scheduler")


def test_cli_renders_on_a_local_cluster(sources, reference, tmp_path, monkeypatch, capsys) -> None:
    from anomalygen_cli.anomalygen_cli import main

    out = tmp_path / "cli.zarr"
    args = ["render", "--src", sources, "--n", N, "--size", SIZE, "--shard-size", SHARD, "--layout"]
    args += ["full"]
    args += ["--out", out, "--scheduler", "local", "--workers", 2, "-q"]
    code, stdout, err = run_cli(main, "anomalygen", monkeypatch, capsys, *args)
    assert code == 0, err
    assert "2 workers on the Dask cluster at tcp://" in stdout
    assert_same_objects(st.location(str(out)), reference)
