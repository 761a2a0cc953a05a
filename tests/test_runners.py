"""Runners: one contract that every :class:`~anomalygen.render.runners.Runner` passes (in this
process, a process pool, a Dask cluster), as zarr's stores pass its ``StoreTests``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from anomalygen import store as st
from anomalygen.errors import ConfigError
from anomalygen.render import render
from anomalygen.render.dask import DaskRunner
from anomalygen.render.runners import InlineRunner, ProcessPoolRunner, Runner, TaskFailed
from anomalygen.render.tasks import RenderShard, SampleSpec, TaskReport, WorkerState
from tests.contracts import implementations, qualname
from tests.synthetic import write_sources

N, SIZE, SHARD = 16, 48, 4


@dataclass(frozen=True)
class Failing:
    """A task that raises ``error`` (a ValueError, or our own ConfigError) when it runs."""

    error: str = "value"

    @property
    def key(self) -> str:
        return f"failing-{self.error}"

    def describe(self) -> str:
        return "failing on purpose"

    def run(self, state: WorkerState) -> TaskReport:
        if self.error == "config":
            raise ConfigError("--option: bad on purpose")
        raise ValueError("broken on purpose")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> st.StoreLocation:
    """A complete store; the tasks render its shards again (the same bytes)."""
    src = write_sources(tmp_path_factory.mktemp("src") / "normals")
    out = tmp_path_factory.mktemp("store") / "s.zarr"
    render(out, src, N, size=SIZE, shard_size=SHARD, workers=1, progress=False)
    return st.location(str(out))


def shard_tasks(loc: st.StoreLocation) -> list[RenderShard]:
    spec = SampleSpec.of(st.open_store(loc.url).spec)
    return [RenderShard(s, spec) for s in range(N // SHARD)]


class RunnerContract:
    """What the coordinator relies on. Subclasses name the ``implementation`` they test and give
    ``make_runner(loc) -> Runner``."""

    implementation: type

    @pytest.fixture()
    def make_runner(self) -> Callable[[st.StoreLocation], Runner]:
        raise NotImplementedError

    @pytest.fixture()
    def runner(self, make_runner, store) -> Iterator[Runner]:
        runner = make_runner(store)
        try:
            yield runner
        finally:
            runner.close()

    def test_every_task_is_run_once_and_reported(self, runner, store) -> None:
        before = {k: store.read(k) for k in store.list_keys("image/")}
        reports = list(runner.run(shard_tasks(store)))
        assert len(reports) == N // SHARD
        assert all(isinstance(r, TaskReport) for r in reports)
        assert sum(r.samples for r in reports) == N
        assert all(r.maxrss > 0 and r.cpu_seconds > 0 for r in reports)
        assert {k: store.read(k) for k in store.list_keys("image/")} == before

    def test_the_runner_says_how_many_tasks_run_at_once(self, runner) -> None:
        assert runner.workers >= 1
        assert runner.cluster is None or runner.cluster.startswith("tcp://")

    def test_a_failing_task_raises_task_failed_naming_it(self, runner) -> None:
        with pytest.raises(TaskFailed) as err:
            list(runner.run([Failing()]))
        assert err.value.what == "failing on purpose"
        assert "broken on purpose" in err.value.reason and "\n" not in err.value.reason
        runner.abort()

    def test_our_own_errors_pass_as_they_are(self, runner) -> None:
        with pytest.raises(ConfigError, match="bad on purpose"):
            list(runner.run([Failing("config")]))
        runner.abort()

    def test_runs_again_after_a_run(self, runner, store) -> None:
        tasks = shard_tasks(store)
        assert len(list(runner.run(tasks[:1]))) == 1
        assert len(list(runner.run(tasks[1:]))) == len(tasks) - 1

    def test_abort_and_close_are_safe_at_any_time(self, make_runner, store) -> None:
        runner = make_runner(store)
        runner.abort()
        runner.close()
        runner.close()


class TestInlineRunner(RunnerContract):
    implementation = InlineRunner

    @pytest.fixture()
    def make_runner(self) -> Callable[[st.StoreLocation], Runner]:
        return lambda loc: InlineRunner(loc, 1 << 24)

    def test_close_gives_the_threads_back(self, store) -> None:
        import cv2

        threads = cv2.getNumThreads()
        runner = InlineRunner(store, 1 << 24)
        assert cv2.getNumThreads() == 1
        runner.close()
        assert cv2.getNumThreads() == threads


class TestProcessPoolRunner(RunnerContract):
    implementation = ProcessPoolRunner

    @pytest.fixture()
    def make_runner(self) -> Callable[[st.StoreLocation], Runner]:
        return lambda loc: ProcessPoolRunner(loc, 2, 1 << 24)

    def test_runs_again_after_a_run(self, runner, store) -> None:  # type: ignore[override]
        super().test_runs_again_after_a_run(runner, store)
        assert runner.workers == 2


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("distributed", reason="Dask distributed is not installed")
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as cluster:
        yield cluster


class TestDaskRunner(RunnerContract):
    implementation = DaskRunner

    @pytest.fixture()
    def make_runner(self, dask_cluster) -> Callable[[st.StoreLocation], Runner]:
        def make(loc: st.StoreLocation) -> Runner:
            store_id = st.read_attrs(loc)["store_id"]
            address = dask_cluster.scheduler_address
            return DaskRunner(address, loc, 1 << 24, workers=1, probe_path=None, store_id=store_id)

        return make

    def test_the_runner_says_how_many_tasks_run_at_once(self, runner) -> None:  # type: ignore[override]
        assert runner.workers == 2  # worker threads
        assert runner.cluster.startswith("tcp://")


def test_every_runner_passes_the_contract() -> None:
    """Each class in anomalygen with a Runner's methods has a RunnerContract suite here."""
    tested = {qualname(suite.implementation) for suite in RunnerContract.__subclasses__()}
    found = implementations(Runner)
    assert {qualname(c) for c in (InlineRunner, ProcessPoolRunner, DaskRunner)} <= found
    assert found == tested, f"runners without a contract suite: {sorted(found - tested)}"
