"""Rendering on a Dask cluster: ``anomalygen render --scheduler tcp://HOST:8786`` (or ``local``).

The render's coordinator (:mod:`anomalygen.render`) is the same whatever runs its tasks; this
module gives it a :class:`DaskRunner` in place of the local process pool. The unit of work stays
the shard: one Dask task prepares one pool shard (phase 1) or renders one sample shard (phase 2)
and writes it once, then returns a small report. So:

- *Determinism*: a task runs the same ``_Worker`` code as a local worker; sample ``i`` depends on
  ``(seed, i)`` alone, so the store is byte-identical to a local render.
- *Retries are harmless*: Dask reruns a task whose worker died (and, with ``RETRIES``, one that
  raised, e.g. for a transient object-store error). A rerun writes the same bytes, and every
  write replaces a whole object at once (an object PUT, or zarr's write-then-rename on local
  disks), so a shard is never seen half-written by a reader of a flagged shard.
- *Resume*: completion flags live in the store, so a render whose cluster went away is resumed
  by running the same command again, on the cluster or locally.

Workers need anomalygen (the same version: samples would differ otherwise), read access to the
source photographs at the same paths (a shared filesystem), and write access to the store (an
object-store URL, with credentials in ``storage_options`` or in the workers' environment, or a
shared filesystem). :class:`DaskRunner` checks all three on every worker before any task runs,
so a misconfigured cluster fails in seconds with one line instead of a task traceback.

Dask (``pip install anomalygen[dask]``) is imported only here, and only when a scheduler is given.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from anomalygen import store as st
from anomalygen.errors import AnomalygenError, ConfigError, StoreError, one_line

__all__ = ["DaskRunner", "check_scheduler"]

#: Seconds to wait for the scheduler to answer. Our choice: a live scheduler answers in
#: milliseconds; a dead address should fail while the user is still watching.
CONNECT_TIMEOUT_S = 10.0
#: Seconds to wait for the first worker of a cluster that has none (e.g. still scaling up).
WORKERS_TIMEOUT_S = 60.0
#: Extra attempts Dask makes for a task that raised (a worker that died is rescheduled anyway,
#: up to Dask's ``allowed-failures``). A rerun writes the same bytes, so retries are safe.
RETRIES = 2


def check_scheduler(scheduler: str) -> str:
    """Validate ``--scheduler``: ``local`` or a Dask address (``tcp://HOST:PORT``, ``tls://...``,
    ``ucx://...``, ``inproc://...``). Returns it stripped; raises :class:`ConfigError`."""
    text = scheduler.strip()
    if text.lower() == "local":
        return "local"
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("tcp", "tls", "ucx", "inproc", "ws", "wss") or not rest:
        raise ConfigError(
            f"--scheduler: expected 'local' or a Dask scheduler address such as "
            f"tcp://HOST:8786, got {scheduler!r}"
        )
    return text


class DaskRunner:
    """Runs ``_Worker`` methods (``prepare_pool_shard``, ``render_shard``) as Dask tasks.

    ``scheduler`` is ``"local"`` (a ``LocalCluster`` of ``workers`` single-threaded processes,
    closed with the runner) or the address of a running scheduler (``workers`` is then ignored:
    the cluster has what it has). ``probe_path`` is a source file every worker must be able to
    read (None when phase 1 has nothing left to do). Same interface as the local runner:
    :meth:`run`, :meth:`abort`, :meth:`close`.
    """

    def __init__(
        self,
        scheduler: str,
        loc: st.StoreLocation,
        cache_bytes: int,
        *,
        workers: int,
        probe_path: str | None,
    ) -> None:
        self.loc = loc
        self.cache_bytes = cache_bytes
        # Tasks of one render share worker state (the opened store, the cache); a new render,
        # even of the same URL, starts fresh.
        self.token = uuid.uuid4().hex[:12]
        self._cluster: Any = None
        self._futures: list[Any] = []
        self.address = scheduler
        _quiet_dask_logs()
        try:
            self.client = self._connect(scheduler, workers)
        except BaseException:
            self._close_cluster()
            raise
        try:
            self.workers = self._check_workers(probe_path)
        except BaseException:
            self.close()
            raise

    # --- setting up -----------------------------------------------------------------------
    def _connect(self, scheduler: str, workers: int) -> Any:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ConfigError(
                "--scheduler: Dask is not installed here; pip install 'anomalygen[dask]' "
                "(and the same on the cluster's workers)"
            ) from None
        if scheduler == "local":
            import dask

            # Dask's statistical profiler samples every task thread's stack 100 times a second:
            # 5 to 10% of a render's CPU here. Our own cluster goes without it; a user's keeps
            # its settings (docs: distributed.worker.profile.enabled).
            with dask.config.set({"distributed.worker.profile.enabled": False}):
                self._cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",  # any free port: never clash with a running cluster
                    silence_logs=logging.ERROR,
                )
            self.address = self._cluster.scheduler_address
            return Client(self._cluster, set_as_default=False)
        try:
            return Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError) as err:
            raise ConfigError(
                f"--scheduler: no Dask scheduler answers at {scheduler} "
                f"({one_line(err)}); start one (dask scheduler) or check the address"
            ) from None

    def _check_workers(self, probe_path: str | None) -> int:
        """Fail fast unless every worker has this anomalygen, reads the store and the sources.
        Returns the number of worker threads (tasks that run at once)."""
        from anomalygen import __version__

        try:
            self.client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
        except (TimeoutError, OSError):
            raise ConfigError(
                f"--scheduler: the Dask cluster at {self.address} has no workers "
                f"(waited {WORKERS_TIMEOUT_S:.0f} s); start some (dask worker {self.address})"
            ) from None
        # Sent by value (a closure), so that it runs on a worker that lacks anomalygen.
        versions = self.client.run(_make_import_probe())
        bad = {w: r["error"] for w, r in versions.items() if "error" in r}
        if bad:
            worker, error = next(iter(bad.items()))
            raise ConfigError(
                f"--scheduler: {len(bad)} of {len(versions)} Dask worker(s) cannot import "
                f"anomalygen (first: {worker}: {error}); install anomalygen {__version__} on "
                "every worker"
            )
        other = {w: r["version"] for w, r in versions.items() if r["version"] != __version__}
        if other:
            worker, version = next(iter(other.items()))
            raise ConfigError(
                f"--scheduler: Dask worker {worker} runs anomalygen {version}, this command "
                f"{__version__}; samples could differ between versions: install {__version__} "
                "on every worker"
            )
        problems = self.client.run(
            _check_access, self.loc.url, self.loc.storage_options, probe_path
        )
        for worker, problem in problems.items():
            if problem:
                raise StoreError(f"Dask worker {worker}: {problem}")
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        return max(1, sum(int(w.get("nthreads", 1)) for w in info.values()))

    # --- running tasks --------------------------------------------------------------------
    def run(self, method: str, tasks: Sequence[tuple]) -> Iterator[dict[str, Any]]:
        """Submit every task and yield each result as its task completes on the cluster."""
        from distributed import as_completed
        from distributed.client import FutureCancelledError

        from anomalygen.render import _task_name, _TaskFailed

        args_of: dict[str, tuple] = {}
        futures = []
        for args in tasks:
            key = f"anomalygen-{method}-{'-'.join(str(a) for a in args[:2])}-{self.token}"
            fut = self.client.submit(
                run_task,
                self.token,
                self.loc.url,
                self.loc.storage_options,
                self.cache_bytes,
                method,
                args,
                key=key,
                pure=False,
                retries=RETRIES,
            )
            args_of[fut.key] = args
            futures.append(fut)
        self._futures = futures
        for fut in as_completed(futures, loop=self.client.loop):
            args = args_of[fut.key]
            try:
                result = fut.result()
            except (AnomalygenError, KeyboardInterrupt):
                raise
            except FutureCancelledError:
                raise _TaskFailed(
                    _task_name(method, args),
                    f"the Dask cluster at {self.address} went away (scheduler or workers "
                    "shut down)",
                ) from None
            except Exception as err:
                reason = one_line(err)
                if type(err).__name__ == "KilledWorker":
                    reason = (
                        "Dask workers died running it several times (out of memory? raise "
                        "the workers' memory limit or lower --cache-mb / --shard-size)"
                    )
                raise _TaskFailed(_task_name(method, args), reason) from err
            fut.release()
            yield result
        self._futures = []

    def abort(self) -> None:
        """Cancel the tasks not yet run; running ones finish their shard (harmless)."""
        if self._futures:
            try:
                self.client.cancel(self._futures)
            except Exception:  # the cluster may be gone already
                pass
            self._futures = []

    def close(self) -> None:
        self.abort()
        try:
            self.client.close()
        except Exception:
            pass
        self._close_cluster()

    def _close_cluster(self) -> None:
        if self._cluster is not None:
            try:
                self._cluster.close()
            except Exception:
                pass
            self._cluster = None


def _quiet_dask_logs() -> None:
    """A lost connection makes distributed log tracebacks; the render reports it in one line."""
    for name in ("distributed", "distributed.client", "distributed.comm", "distributed.core"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _make_import_probe() -> Any:
    def probe() -> dict[str, str]:
        import importlib

        try:
            module = importlib.import_module("anomalygen")
        except Exception as err:
            return {"error": f"{type(err).__name__}: {err}"}
        return {"version": str(getattr(module, "__version__", "unknown"))}

    return probe


def _check_access(url: str, storage_options: Any, probe_path: str | None) -> str | None:
    """On a worker: None if it reads the store and ``probe_path``, else what is wrong."""
    loc = st.StoreLocation(url, storage_options)
    try:
        attrs = st.read_attrs(loc)
    except Exception as err:
        return f"cannot read the store {url} ({one_line(err)}){st.access_hint(loc, err)}"
    if attrs is None:
        return (
            f"finds no store at {url}: --out must be storage that every worker reaches "
            "(an object-store URL such as s3://bucket/synth.zarr, or a shared filesystem)"
        )
    if probe_path is not None and not os.access(probe_path, os.R_OK):
        return (
            f"cannot read the source photograph {probe_path}: --src must be on a filesystem "
            "that every worker reaches, at the same path"
        )
    return None


# ------------------------------------------------------------------------------------------
# On the workers
# ------------------------------------------------------------------------------------------

_STATE_LOCK = threading.Lock()
_STATE: dict[str, Any] = {"token": None, "workers": {}, "set_up": False}


def run_task(
    token: str, url: str, storage_options: Any, cache_bytes: int, method: str, args: tuple
) -> dict[str, Any]:
    """One Dask task: run ``_Worker.<method>(*args)`` with this thread's worker state."""
    from anomalygen.render import _Worker

    thread = threading.get_ident()
    with _STATE_LOCK:
        if not _STATE["set_up"]:
            # Each task thread encodes on one core, as a local worker process does.
            from anomalygen.render import _limit_zarr_threads

            _limit_zarr_threads(_nthreads())
            _undo_malloc_trim()
            _STATE["set_up"] = True
        if _STATE["token"] != token:  # a new render: drop the previous one's state
            _STATE.update(token=token, workers={})
        worker = _STATE["workers"].get(thread)
        if worker is None:
            worker = _Worker(url, storage_options, cache_bytes, os.getpid(), mode="dask")
            _STATE["workers"][thread] = worker
    return getattr(worker, method)(*args)


#: glibc ``mallopt`` parameters and the values set on Dask workers (see ``_undo_malloc_trim``).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_TRIM_BYTES, _MMAP_BYTES = 64 << 20, 32 << 20


def _undo_malloc_trim() -> None:
    """Give a Dask worker glibc's usual allocator behaviour back for image-sized buffers.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (its
    ``pre-spawn-environ``), so that freed memory goes back to the OS at once. That also pins
    glibc's mmap threshold at 128 KB: every temporary image of a sample becomes a fresh
    ``mmap`` and pays its page faults again. Measured here at 768 px: 2.00 ms of CPU per sample
    for the generator against 1.17 ms without the variable, 1.14 ms with the values below. A
    render task frees and reallocates the same sizes for every sample, so the worker keeps at
    most 64 MB more than with Dask's setting. Linux with glibc only; elsewhere nothing to do.
    """
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES)
    except (OSError, AttributeError):  # musl or another libc: it has no such knobs
        pass


def _nthreads() -> int:
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except Exception:  # not on a Dask worker (a direct call, as in the tests)
        return 1
