"""Running tasks: the :class:`Runner` contract, in this process or on a local process pool.

A runner yields each task's :class:`~anomalygen.render.tasks.TaskReport` as the task completes.
A task that fails raises :class:`TaskFailed` (an :class:`~anomalygen.errors.AnomalygenError`
or Ctrl-C from a task passes as it is); :meth:`Runner.abort` stops handing out tasks and waits
for the running ones, which are whole shards. The Dask runner (:mod:`anomalygen.render.dask`)
keeps the same contract.

The process pool uses the "spawn" start method (zarr runs an asyncio loop in a thread, which
fork would copy in a broken state); each worker limits OpenCV and zarr to one thread, so W
workers use W cores. The inline runner is for one worker, and for ``memory://`` stores, which
other processes cannot see.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

from anomalygen.errors import AnomalygenError, one_line
from anomalygen.render.tasks import Task, TaskReport, WorkerState, run_task
from anomalygen.render.threads import limit_opencv_threads, limit_zarr_threads
from anomalygen.store.location import StoreLocation

__all__ = ["InlineRunner", "ProcessPoolRunner", "Runner", "TaskFailed"]


class TaskFailed(Exception):
    """A task raised (or its worker died): ``what`` the task was doing and why it failed."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


class Runner(Protocol):
    """Runs a render's tasks somewhere; one runner per render."""

    #: Tasks that run at once (processes, or a Dask cluster's worker threads).
    workers: int
    #: The Dask scheduler's address; None for a runner on this machine.
    cluster: str | None

    def run(self, tasks: Sequence[Task]) -> Iterator[TaskReport]:
        """Yield each task's report as it completes; raise :class:`TaskFailed` for a failed
        task."""
        ...

    def abort(self) -> None:
        """Stop handing out tasks; tasks already running finish (they are whole shards)."""
        ...

    def close(self) -> None:
        """Free the workers (after :meth:`abort` when tasks may still run)."""
        ...


class InlineRunner:
    """Runs tasks one at a time in this process, on one OpenCV and one zarr codec thread
    (given back on :meth:`close`)."""

    workers = 1
    cluster = None

    def __init__(self, loc: StoreLocation, cache_bytes: int) -> None:
        restore = [limit_opencv_threads(1), limit_zarr_threads(1)]
        self._restore: list[Callable[[], None]] = restore
        self._state = WorkerState(loc, cache_bytes)

    def run(self, tasks: Sequence[Task]) -> Iterator[TaskReport]:
        for task in tasks:
            try:
                yield run_task(task, self._state)
            except (AnomalygenError, KeyboardInterrupt):
                raise
            except Exception as err:
                raise TaskFailed(task.describe(), one_line(err)) from err

    def abort(self) -> None:
        """Nothing runs in the background."""

    def close(self) -> None:
        self._state.close()
        while self._restore:
            self._restore.pop()()


class ProcessPoolRunner:
    """Runs tasks on ``workers`` spawned processes, each with its own :class:`WorkerState`.
    A worker whose coordinator died (``kill -9``) exits before it writes."""

    cluster = None

    def __init__(self, loc: StoreLocation, workers: int, cache_bytes: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(loc, cache_bytes, os.getpid()),
        )

    def run(self, tasks: Sequence[Task]) -> Iterator[TaskReport]:
        # Keep a bounded number of tasks queued: a Ctrl-C then waits for little work.
        assert self._pool is not None, "the runner was closed"
        pending = list(tasks)[::-1]
        running: dict[Future, Task] = {}
        while pending or running:
            while pending and len(running) < 2 * self.workers:
                task = pending.pop()
                running[self._pool.submit(_run_here, task)] = task
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                yield _report(future, running.pop(future))

    def abort(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        self.abort()


def _report(future: Future, task: Task) -> TaskReport:
    try:
        return future.result()
    except (AnomalygenError, KeyboardInterrupt):
        raise
    except BrokenProcessPool:
        raise TaskFailed(
            task.describe(),
            "a worker process died: out of memory, killed, or a script that calls render() "
            "without an `if __name__ == '__main__':` guard",
        ) from None
    except Exception as err:
        raise TaskFailed(task.describe(), one_line(err)) from err


# ------------------------------------------------------------------------------------------
# In a pool process
# ------------------------------------------------------------------------------------------

#: This pool process's state (one render's: the pool lives as long as its render).
_STATE: WorkerState | None = None


class ParentAlive:
    """The guard of a pool process: exit, without writing, once the coordinator that started
    it has died (the rerun that resumes its render may be writing the same shard)."""

    def __init__(self, parent: int) -> None:
        self.parent = parent

    def __call__(self) -> None:
        if os.getppid() != self.parent:
            os._exit(1)


def _start_worker(loc: StoreLocation, cache_bytes: int, parent: int) -> None:
    global _STATE
    # Ctrl-C goes to the whole process group; the coordinator alone decides what to do.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit_opencv_threads(1)
    limit_zarr_threads(1)
    _STATE = WorkerState(loc, cache_bytes, guard=ParentAlive(parent))
    # Imported now, while phase 1 starts up.
    import anomalygen.fundus  # noqa: F401
    import anomalygen.generator  # noqa: F401


def _run_here(task: Task) -> TaskReport:
    assert _STATE is not None, "worker not started"
    return run_task(task, _STATE)
