"""The render scheduler: ``anomalygen render`` as a library call, :func:`render`.

Two phases, both made of shard tasks (one task writes one shard, once):

1. *Prepare* every source photograph once (``prepare_fundus``, paper 4.1) into the store's
   ``normals`` pool (and, in texture mode, every texture into ``textures``). A task prepares
   the files of one pool shard; a file that cannot be used is recorded with its reason.
2. *Render* the samples: a task makes every sample of one shard and writes the shard. Sample
   ``i`` uses ``sample_rng(seed, i)`` alone: it draws the target and source indices
   (``draw_pair``), then the generator draws the lesions. So the arrays are byte-identical with
   1 or many workers and after any interruption and resume. Workers read normals from the store
   on demand through a bounded cache, so their memory depends on neither N nor the number of
   source images; blocks of 64 consecutive samples share 16 photographs (``draw_pair``), so
   that cache hits even with thousands of sources.

Completion flags are written after each shard's data; a rerun skips flagged shards and redoes
the rest. A lock keeps a second render out of a store that is being written (an OS lock for
local stores, released by the kernel if the process dies; a heartbeat object for URLs).

Parallelism is a process pool with the "spawn" start method (zarr runs an asyncio loop in a
thread, which fork would copy in a broken state); each worker limits OpenCV and zarr to one
thread, so W workers use W cores. ``workers=1`` renders in this process (required for
``memory://`` stores, which other processes cannot see). With ``scheduler`` the same tasks run
on a Dask cluster instead (:mod:`anomalygen.cluster`); the coordinator does not change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anomalygen import store as st
from anomalygen.errors import AnomalygenError, ConfigError, ImageError, StoreError, one_line
from anomalygen.progress import Progress, format_bytes, format_duration
from anomalygen.sources import SourceList, find_sources

__all__ = [
    "RenderInterrupted",
    "RenderResult",
    "render",
    "resolve_workers",
]

#: Default memory for a worker's cache of decoded pool images (normals, textures). At 768 px a
#: normal with its FOV takes 2.4 MB, so 256 MB hold about 100: all of a small source set, and a
#: bounded share of a large one, where most reads miss (each miss costs about 5 ms at 768 px:
#: rendering runs at about half the speed it reaches with a small source set).
DEFAULT_CACHE_MB = 256
#: A non-local lock whose heartbeat is older than this is taken over (seconds). Our choice: eight
#: missed heartbeats, so a render is never taken over for a slow object store alone, while a
#: crashed one blocks its resume for two minutes at most.
LOCK_STALE_AFTER = 120.0
LOCK_HEARTBEAT = 15.0
#: Smallest image side the renderer accepts (the generator needs room for its crops).
MIN_SIZE = 32


class RenderInterrupted(KeyboardInterrupt):
    """Ctrl-C during a render: completed shards are kept; ``str(err)`` says how to resume."""


@dataclass(frozen=True)
class RenderResult:
    """What a render did. ``summary()`` is the one-line report the CLI prints."""

    url: str
    n: int
    n_shards: int
    shards_rendered: int  # by this call
    shards_already_done: int  # complete before this call (resume)
    samples_rendered: int  # by this call
    seconds: float  # wall time of this call
    bytes_on_disk: int
    sample_bytes: int  # the samples' share of bytes_on_disk (pools excluded)
    normals: int  # usable source images
    textures: int | None  # usable textures (texture mode)
    skipped: list[dict[str, str]]  # [{"pool", "name", "reason"}] files that could not be used
    workers: int  # processes (local) or worker threads (Dask) that ran tasks
    peak_rss_per_worker: int  # bytes (max over workers)
    render_seconds: float = 0.0  # of which phase 2
    render_cpu_seconds: float = 0.0  # CPU time of the workers' phase-2 tasks (all threads)
    notes: list[str] = field(default_factory=list)
    cluster: str | None = None  # the Dask scheduler's address, for a render on a cluster

    @property
    def samples_per_second(self) -> float:
        return self.samples_rendered / self.render_seconds if self.render_seconds > 0 else 0.0

    @property
    def samples_per_cpu_second(self) -> float:
        """Throughput per core, independent of other load on the machine."""
        cpu = self.render_cpu_seconds
        return self.samples_rendered / cpu if cpu > 0 else 0.0

    def summary(self) -> str:
        per = self.sample_bytes / self.n if self.n else 0
        resumed = (
            f" (resumed: {self.shards_already_done} of {self.n_shards} shards were done)"
            if self.shards_already_done
            else ""
        )
        where = f" on the Dask cluster at {self.cluster}" if self.cluster else ""
        return (
            f"rendered {self.samples_rendered} samples in {format_duration(self.seconds)} "
            f"({self.samples_per_second:.1f} samples/s while rendering, {self.workers} "
            f"worker{'s' if self.workers != 1 else ''}{where}){resumed}; store {self.url}: "
            f"{self.n} samples, {format_bytes(self.bytes_on_disk)} on disk "
            f"({format_bytes(per)}/sample); {self.normals} normals, "
            f"{len(self.skipped)} file{'s' if len(self.skipped) != 1 else ''} skipped"
        )


def resolve_workers(workers: int | str | None) -> int:
    """``None``/``"auto"`` -> the CPUs this process may use; else a positive int."""
    if workers is None or (isinstance(workers, str) and workers.strip().lower() == "auto"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # macOS, Windows
            return max(1, os.cpu_count() or 1)
    try:
        value = int(workers)
    except (TypeError, ValueError):
        raise ConfigError(
            f"--workers: expected a positive integer or 'auto', got {workers!r}"
        ) from None
    if value < 1:
        raise ConfigError(f"--workers: must be at least 1, got {value}")
    return value


# ------------------------------------------------------------------------------------------
# The public entry point
# ------------------------------------------------------------------------------------------


def render(
    out: str | os.PathLike,
    src: SourceList | str | os.PathLike,
    n: int,
    *,
    size: int = 768,
    seed: int = 0,
    config: Any = None,
    textures: SourceList | str | os.PathLike | None = None,
    workers: int | str | None = None,
    shard_size: int = st.DEFAULT_SHARD_SIZE,
    codec: str = st.DEFAULT_CODEC,
    clahe: bool = True,
    strict: bool = False,
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
    progress_stream: Any = None,
    cache_mb: int = DEFAULT_CACHE_MB,
    scheduler: str | None = None,
) -> RenderResult:
    """Render ``n`` synthetic samples from the images at ``src`` into the store at ``out``.

    ``src`` is a folder, a list file or a :class:`SourceList` (``find_sources`` with a labels
    CSV). ``config`` is a :class:`GeneratorConfig` (default: the paper's settings); in texture
    mode (``config.source == "texture"``) ``textures`` gives the texture images. Rerunning with
    the same arguments resumes; different arguments raise :class:`StoreError` naming what
    differs unless ``overwrite``. Bad source files are skipped and listed in the result and the
    store (``strict=True`` makes them fatal). Ctrl-C raises :class:`RenderInterrupted` with the
    store left resumable. Errors a user can fix raise :class:`AnomalygenError` subclasses.

    ``scheduler`` runs the tasks on Dask: ``"local"`` starts a ``LocalCluster`` of ``workers``
    processes, ``"tcp://HOST:PORT"`` uses a running cluster whose workers reach ``out`` (an
    object-store URL with ``storage_options``, or a shared filesystem) and ``src`` (a shared
    filesystem). The result is byte-identical to a local render (:mod:`anomalygen.cluster`).
    """
    t_start = time.monotonic()
    from anomalygen.config import to_dict
    from anomalygen.generator import GeneratorConfig

    config = GeneratorConfig() if config is None else config
    if not isinstance(config, GeneratorConfig):
        raise ConfigError(f"config: expected a GeneratorConfig, got {type(config).__name__}")
    _check_options(n=n, size=size, seed=seed, shard_size=shard_size, codec=codec, cache_mb=cache_mb)
    texture_mode = config.source == "texture"
    if texture_mode and textures is None:
        raise ConfigError("--texture-dir: texture mode (--source texture) needs a texture folder")
    if not texture_mode and textures is not None:
        raise ConfigError("--texture-dir: textures are only used with --source texture")

    sources = src if isinstance(src, SourceList) else find_sources(src)
    if not sources.files:
        raise ImageError(f"--src: no image files found in {sources.description or sources.root}")
    pools: dict[str, SourceList] = {st.NORMALS: sources}
    if texture_mode:
        tex = textures if isinstance(textures, SourceList) else find_sources(textures)
        if not tex.files:
            raise ImageError(f"--texture-dir: no image files found in {tex.root}")
        pools[st.TEXTURES] = tex

    loc = st.location(out, storage_options)
    notes: list[str] = []
    n_workers = resolve_workers(workers)
    if scheduler is not None:
        from anomalygen.cluster import check_scheduler

        scheduler = check_scheduler(scheduler)
        if loc.in_memory:
            raise ConfigError(
                "--scheduler: a memory:// store lives in this process, where no Dask worker "
                "can write; give a path or an object-store URL"
            )
        if loc.local_path is not None:  # workers may start in another folder
            loc = st.StoreLocation(str(loc.local_path.resolve()), storage_options)
        if scheduler != "local" and workers not in (None, "auto"):
            notes.append("--workers applies to --scheduler local only; the cluster has its own")
    elif loc.in_memory and n_workers > 1:
        notes.append("memory:// stores live in this process: rendering in-process with 1 worker")
        n_workers = 1

    from anomalygen import __version__

    params: dict[str, Any] = {
        "n": int(n),
        "size": int(size),
        "seed": int(seed),
        "shard_size": int(shard_size),
        "pool_shard_size": st.POOL_SHARD_SIZE,
        "codec": codec,
        "clahe": bool(clahe),
        "generator": to_dict(config),
        "sources": _listing(sources),
        "textures": _listing(pools[st.TEXTURES]) if texture_mode else None,
    }
    attrs = {
        "format": st.FORMAT_NAME,
        "format_version": st.FORMAT_VERSION,
        "anomalygen_version": __version__,
        "created": _now(),
        # Tells this store apart from one started over in its place (--overwrite): a Dask task
        # of an abandoned render checks it before writing (anomalygen.cluster).
        "store_id": uuid.uuid4().hex,
        **params,
        "pools": {name: len(listing.files) for name, listing in pools.items()},
        "skipped": [],
    }

    lock = _lock_for(loc)
    with st.access_errors(loc, "reach the store"):
        lock.acquire()
    try:
        with st.access_errors(loc, "create the store"):
            store_id = _open_or_create(loc, attrs, params, overwrite=overwrite, pools=pools, n=n)
        job = _Job(loc, pools, params, n_workers, cache_mb, strict, progress, progress_stream)
        job.lock = lock
        job.scheduler = scheduler
        job.store_id = store_id
        try:
            job.run()
        finally:
            job.close()
        seconds = time.monotonic() - t_start
        return RenderResult(
            url=loc.url,
            n=int(n),
            n_shards=job.n_shards,
            shards_rendered=job.shards_rendered,
            shards_already_done=job.shards_already_done,
            samples_rendered=job.samples_rendered,
            seconds=seconds,
            bytes_on_disk=loc.bytes_on_disk(),
            sample_bytes=st.open_store(loc.url, loc.storage_options).sample_bytes(),
            normals=job.usable.get(st.NORMALS, 0),
            textures=job.usable.get(st.TEXTURES) if texture_mode else None,
            skipped=job.skipped,
            workers=job.workers_used,
            peak_rss_per_worker=job.peak_rss,
            render_seconds=job.render_seconds,
            render_cpu_seconds=job.render_cpu,
            notes=notes,
            cluster=job.cluster_address,
        )
    finally:
        lock.release()


def _check_options(
    *, n: int, size: int, seed: int, shard_size: int, codec: str, cache_mb: int
) -> None:
    def positive_int(name: str, value: Any, low: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ConfigError(f"--{name}: must be an integer >= {low}, got {value!r}")

    positive_int("n", n, 1)
    positive_int("size", size, MIN_SIZE)
    positive_int("seed", seed, 0)
    positive_int("shard-size", shard_size, 1)
    positive_int("cache-mb", cache_mb, 1)
    if codec not in st.CODECS:
        raise ConfigError(f"--codec: unknown codec {codec!r} (choose from {', '.join(st.CODECS)})")


def _listing(sources: SourceList) -> dict[str, Any]:
    return {
        "root": sources.root,
        "description": sources.description,
        "files": [[f.name, f.bytes, None] for f in sources.files],
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _open_or_create(
    loc: st.StoreLocation,
    attrs: dict[str, Any],
    params: dict[str, Any],
    *,
    overwrite: bool,
    pools: dict[str, SourceList],
    n: int,
) -> str | None:
    """Create the store, or check that the one there was started with the same parameters.
    Returns the store's ``store_id`` (None for a store written before it existed)."""
    existing = st.read_attrs(loc)
    if existing is not None and existing:
        if not overwrite:
            diffs = st.parameter_differences(existing, params)
            if diffs:
                shown = "; ".join(diffs[:4]) + (
                    f"; and {len(diffs) - 4} more" if len(diffs) > 4 else ""
                )
                raise StoreError(
                    f"{loc}: this store was rendered with different parameters ({shown}); "
                    "rerun with the same ones to resume, or add --overwrite to start over"
                )
            st.remove_partial_files(loc)  # left by a writer killed mid-write
            return existing.get("store_id")
    elif existing is None and not loc.is_empty():
        raise StoreError(
            f"{loc}: exists and is not an anomalygen store; choose another --out "
            "(nothing was changed there)"
        )
    # New store, an overwrite, or a creation that was interrupted before its attributes.
    st.clear_store(loc)
    try:
        st.create_store(
            loc,
            attrs,
            n=n,
            size=params["size"],
            shard_size=params["shard_size"],
            codec=params["codec"],
            pools={name: len(listing.files) for name, listing in pools.items()},
        )
    except OSError as err:
        raise StoreError(f"{loc}: cannot create the store ({one_line(err)})") from None
    return attrs["store_id"]


# ------------------------------------------------------------------------------------------
# The coordinator
# ------------------------------------------------------------------------------------------


class _Job:
    """Runs the two phases on a pool of workers (or in this process) and tracks progress."""

    def __init__(
        self,
        loc: st.StoreLocation,
        pools: dict[str, SourceList],
        params: dict[str, Any],
        workers: int,
        cache_mb: int,
        strict: bool,
        progress: bool,
        stream: Any,
    ) -> None:
        self.loc = loc
        self.pools = pools
        self.params = params
        self.n = params["n"]
        self.shard_size = params["shard_size"]
        self.n_shards = -(-self.n // self.shard_size)
        self.workers = workers
        self.cache_bytes = int(cache_mb) << 20
        self.strict = strict
        self.progress = progress
        self.stream = stream
        self.writer = st.StoreWriter(loc)
        self.lock: _LocalLock | _ObjectLock | None = None
        self.scheduler: str | None = None  # run the tasks on Dask (anomalygen.cluster)
        self.store_id: str | None = None  # the store's "store_id" attribute
        self.cluster_address: str | None = None
        self.runner: Any = None  # _Runner or cluster.DaskRunner
        self.workers_used = 1
        self.shards_rendered = 0
        self.shards_already_done = 0
        self.samples_rendered = 0
        self.render_seconds = 0.0
        self.render_cpu = 0.0
        self.peak_rss = 0
        self.usable: dict[str, int] = {}
        self.skipped: list[dict[str, str]] = []

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None

    def _check_lock(self) -> None:
        if self.lock is not None:
            self.lock.check()

    def _runner(self, tasks: int, probe_path: str | None = None) -> Any:
        """The task runner, made on first use: a local pool, or a Dask cluster's client."""
        if self.runner is None:
            if self.scheduler is not None:
                from anomalygen.cluster import DaskRunner

                self.runner = DaskRunner(
                    self.scheduler,
                    self.loc,
                    self.cache_bytes,
                    workers=self.workers,
                    probe_path=probe_path,
                    store_id=self.store_id,
                )
                self.workers_used = self.runner.workers
                self.cluster_address = self.runner.address
            else:
                self.workers_used = max(1, min(self.workers, tasks))
                self.runner = _Runner(self.loc, self.workers_used, self.cache_bytes)
        return self.runner

    def run(self) -> None:
        self._phase_prepare()
        self._collect_pools()
        self._phase_render()
        self.writer.update_attrs({"completed": _now()})

    # --- phase 1 --------------------------------------------------------------------------
    def _phase_prepare(self) -> None:
        tasks = []
        for pool, listing in self.pools.items():
            done = self.writer.array(f"{pool}_done")[:]
            for k in np.flatnonzero(done == 0):
                lo = int(k) * st.POOL_SHARD_SIZE
                items = [
                    (lo + j, os.path.abspath(f.path), f.name, f.bytes)
                    for j, f in enumerate(listing.files[lo : lo + st.POOL_SHARD_SIZE])
                ]
                tasks.append((pool, int(k), items))
        if not tasks:
            return
        total = sum(len(t[2]) for t in tasks)
        _pool, _shard, items = tasks[0]
        first_file = items[0][1]  # workers on a cluster must be able to read it
        runner = self._runner(max(len(tasks), self.n_shards), probe_path=first_file)
        with Progress(
            total,
            description="prepare",
            unit="images",
            enabled=self.progress,
            stream=self.stream,
        ) as bar:
            size, clahe = self.params["size"], self.params["clahe"]
            args = [(pool, k, items, size, clahe) for pool, k, items in tasks]
            try:
                for result in runner.run("prepare_pool_shard", args):
                    self._check_lock()
                    bar.advance(len(result["infos"]))
                    self._note_rss(result)
                    if self.strict:
                        for info in result["infos"]:
                            if not info["usable"]:
                                raise ImageError(
                                    f"{info['name']}: {info['reason']} "
                                    "(--strict makes bad source files fatal)"
                                )
            except KeyboardInterrupt:
                runner.abort()
                raise RenderInterrupted(
                    f"interrupted while preparing source images; {self.loc} keeps what is "
                    "done: run the same command again to resume"
                ) from None
            except _TaskFailed as err:
                runner.abort()
                raise StoreError(
                    f"{self.loc}: {err.what} failed ({err.reason}); what is complete is kept: "
                    "fix the cause and run the same command again to resume"
                ) from None
            except BaseException:
                runner.abort()
                raise

    def _collect_pools(self) -> None:
        """Read every pool record (this run's and earlier runs'), publish them in the attributes,
        and check that there is something to render from."""
        attrs_update: dict[str, Any] = {}
        self.skipped = []
        for pool, listing in self.pools.items():
            infos = [json.loads(str(t)) for t in self.writer.array(f"{pool}_info")[:]]
            key = "sources" if pool == st.NORMALS else "textures"
            files = self.params[key]["files"]
            for entry, info in zip(files, infos, strict=True):
                entry[2] = info.get("sha256")
            bad = [i for i in infos if not i.get("usable")]
            self.skipped.extend(
                {"pool": pool, "name": i["name"], "reason": i["reason"]} for i in bad
            )
            self.usable[pool] = len(infos) - len(bad)
            attrs_update[key] = self.params[key]
            attrs_update[f"{pool}_count"] = self.usable[pool]
            if self.usable[pool] == 0:
                what = "source image" if pool == st.NORMALS else "texture"
                first = f" (first: {bad[0]['name']}: {bad[0]['reason']})" if bad else ""
                raise ImageError(
                    f"no usable {what} in {listing.description or listing.root}: all "
                    f"{len(infos)} files were skipped{first}"
                )
        attrs_update["skipped"] = self.skipped
        self.writer.update_attrs(attrs_update)
        if self.strict and self.skipped:
            first = self.skipped[0]
            raise ImageError(
                f"{first['name']}: {first['reason']} (--strict makes bad source files fatal; "
                f"{len(self.skipped)} bad in all)"
            )

    # --- phase 2 --------------------------------------------------------------------------
    def _phase_render(self) -> None:
        done = self.writer.array(st.DONE)[:]
        todo = [int(s) for s in np.flatnonzero(done == 0)]
        self.shards_already_done = self.n_shards - len(todo)
        if not todo:
            return
        already = sum(self._shard_len(s) for s in range(self.n_shards) if done[s])
        runner = self._runner(len(todo))
        t0 = time.monotonic()
        with Progress(
            self.n,
            description="render",
            unit="samples",
            completed=already,
            enabled=self.progress,
            stream=self.stream,
        ) as bar:
            try:
                for result in runner.run("render_shard", [(s,) for s in todo]):
                    self._check_lock()
                    self.shards_rendered += 1
                    self.samples_rendered += result["samples"]
                    self.render_cpu += result["cpu"]
                    self._note_rss(result)
                    bar.advance(result["samples"])
            except KeyboardInterrupt:
                runner.abort()
                self.render_seconds = time.monotonic() - t0
                complete = int(np.count_nonzero(self.writer.array(st.DONE)[:]))
                raise RenderInterrupted(
                    f"interrupted: {complete} of {self.n_shards} shards of {self.loc} are "
                    "complete and kept; run the same command again to resume"
                ) from None
            except _TaskFailed as err:
                runner.abort()
                complete = int(np.count_nonzero(self.writer.array(st.DONE)[:]))
                raise StoreError(
                    f"{self.loc}: {err.what} failed ({err.reason}); {complete} of "
                    f"{self.n_shards} shards are complete and intact: fix the cause and run "
                    "the same command again to resume"
                ) from None
            except BaseException:
                runner.abort()
                raise
        self.render_seconds = time.monotonic() - t0

    def _shard_len(self, s: int) -> int:
        return min(self.shard_size, self.n - s * self.shard_size)

    def _note_rss(self, result: dict[str, Any]) -> None:
        self.peak_rss = max(self.peak_rss, int(result.get("maxrss", 0)))


class _TaskFailed(Exception):
    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


# ------------------------------------------------------------------------------------------
# Running tasks: a spawned process pool, or this process
# ------------------------------------------------------------------------------------------


class _Runner:
    """Runs ``_Worker`` methods on ``workers`` spawned processes, or here when ``workers == 1``."""

    def __init__(self, loc: st.StoreLocation, workers: int, cache_bytes: int) -> None:
        self.loc = loc
        self.workers = workers
        self._local: _Worker | None = None
        self._pool: ProcessPoolExecutor | None = None
        init = (loc.url, loc.storage_options, cache_bytes, os.getpid())
        if workers == 1:
            self._local = _Worker(*init, mode="inline")
        else:
            self._pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=init,
            )

    def run(self, method: str, tasks: Sequence[tuple]) -> Iterator[dict[str, Any]]:
        """Yield each task's result as it completes (in-process: in order)."""
        if self._local is not None:
            for args in tasks:
                try:
                    yield getattr(self._local, method)(*args)
                except (AnomalygenError, KeyboardInterrupt):
                    raise
                except Exception as err:
                    raise _TaskFailed(_task_name(method, args), one_line(err)) from err
            return
        assert self._pool is not None
        # Keep a bounded number of tasks queued: a Ctrl-C then waits for little work.
        pending = list(tasks)[::-1]
        running: dict[Future, tuple] = {}
        limit = 2 * self.workers
        while pending or running:
            while pending and len(running) < limit:
                args = pending.pop()
                running[self._pool.submit(_call_worker, method, args)] = args
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                args = running.pop(fut)
                try:
                    result = fut.result()
                except (AnomalygenError, KeyboardInterrupt):
                    raise
                except BrokenProcessPool:
                    raise _TaskFailed(
                        _task_name(method, args),
                        "a worker process died: out of memory, killed, or a script that "
                        "calls render() without an `if __name__ == '__main__':` guard",
                    ) from None
                except Exception as err:
                    raise _TaskFailed(_task_name(method, args), one_line(err)) from err
                yield result

    def abort(self) -> None:
        """Stop handing out tasks; tasks already running finish (they are whole shards)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._local is not None:
            self._local.close()
            self._local = None


def _task_name(method: str, args: tuple) -> str:
    if method == "render_shard":
        return f"rendering shard {args[0]}"
    return f"preparing {args[0]} shard {args[1]}"


_WORKER: _Worker | None = None


def _init_worker(url: str, storage_options: Any, cache_bytes: int, parent: int) -> None:
    global _WORKER
    # Ctrl-C goes to the whole process group; the coordinator alone decides what to do.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER = _Worker(url, storage_options, cache_bytes, parent, mode="child")
    import anomalygen.fundus
    import anomalygen.generator  # noqa: F401  (imported now, while phase 1 starts up)


def _call_worker(method: str, args: tuple) -> dict[str, Any]:
    assert _WORKER is not None, "worker not initialised"
    return getattr(_WORKER, method)(*args)


# ------------------------------------------------------------------------------------------
# The worker: prepares pool shards and renders sample shards
# ------------------------------------------------------------------------------------------


class _Worker:
    """State of one worker: the store opened for writing, the generator, the cache.

    ``mode``: ``"inline"`` (in the coordinator's process: its thread settings are restored on
    close), ``"child"`` (a spawned pool process, which exits if its coordinator dies) or
    ``"dask"`` (one per thread of a Dask worker; :mod:`anomalygen.cluster` sets the process up;
    ``store_id`` is the store attribute its render saw: it writes only while the store has it).
    """

    def __init__(
        self,
        url: str,
        storage_options: Any,
        cache_bytes: int,
        parent: int,
        *,
        mode: str,
        store_id: str | None = None,
    ) -> None:
        import cv2

        self._mode = mode
        self._parent = parent
        self._store_id = store_id
        # W workers use W cores: one OpenCV thread, one zarr codec thread (per task thread).
        self._cv2_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        # A Dask worker's threads share one zarr loop: anomalygen.cluster limits it once.
        self._restore_zarr = _limit_zarr_threads(1) if mode != "dask" else _nothing
        self.loc = st.StoreLocation(url, storage_options)
        self.writer = st.StoreWriter(self.loc)
        self._reader: st.SampleStore | None = None
        self._cache = st.PoolCache(cache_bytes)
        self._gen: Any = None
        self._buffers: tuple[np.ndarray, np.ndarray] | None = None

    def close(self) -> None:
        if self._mode == "inline":  # give this process its threads back
            import cv2

            cv2.setNumThreads(self._cv2_threads)
            self._restore_zarr()
        self._cache.clear()
        self._buffers = None

    def _check_owner(self) -> None:
        """Called before each write: write only for a render that still owns the store."""
        # A pool worker whose coordinator was killed (kill -9) must not write: the rerun that
        # resumes the render may be writing the same shard.
        if self._mode == "child" and os.getppid() != self._parent:
            os._exit(1)
        # A Dask task runs on even after its render was abandoned (Dask cannot stop a running
        # task); the same store may have been started over since with other parameters.
        if self._mode == "dask" and self._store_id is not None:
            found = (st.read_attrs(self.loc) or {}).get("store_id")
            if found != self._store_id:
                raise StoreError(
                    f"{self.loc}: the store was started over by another render since this "
                    "task was submitted; not writing"
                )

    # --- phase 1 --------------------------------------------------------------------------
    def prepare_pool_shard(
        self, pool: str, shard: int, items: list[tuple[int, str, str, int]], size: int, clahe: bool
    ) -> dict[str, Any]:
        count = len(items)
        images = np.zeros((count, size, size, 3), np.uint8)
        fovs = np.zeros((count, size, size), np.uint8) if pool == st.NORMALS else None
        infos = []
        for j, (_slot, path, name, nbytes) in enumerate(items):
            info: dict[str, Any] = {"name": name, "bytes": nbytes, "sha256": None}
            try:
                info["sha256"] = _sha256(path)
                if pool == st.NORMALS:
                    prepared = _prepare_normal(path, name, size, clahe)
                    images[j], fovs[j] = prepared.image, prepared.fov  # type: ignore[index]
                else:
                    images[j] = _prepare_texture(path, name, size)
                info.update(usable=True, reason=None)
            except Exception as err:  # any unusable file is reported, never fatal here
                info.update(usable=False, reason=_reason(err, path, name))
            infos.append(info)
        self._check_owner()
        self.writer.write_pool(pool, shard, items[0][0], images, fovs, infos)
        return {"infos": infos, "maxrss": _maxrss()}

    # --- phase 2 --------------------------------------------------------------------------
    def _setup_render(self) -> None:
        from anomalygen.generator import AnomalyGenerator

        self._reader = st.SampleStore(self.loc)
        attrs = self._reader.attrs
        self._seed = int(attrs["seed"])
        self._n = int(attrs["n"])
        self._shard_size = int(attrs["shard_size"])
        self._size = int(attrs["size"])
        self._gen = AnomalyGenerator(self._reader.config)
        self._texture = self._reader.source_pool == st.TEXTURES
        self._normals = self._reader.normals
        self._sources = self._reader.textures if self._texture else self._normals
        self._n_normals = len(self._normals)
        self._n_sources = len(self._sources)

    def render_shard(self, shard: int) -> dict[str, Any]:
        from anomalygen.generator import draw_pair, sample_rng

        cpu0 = time.process_time()
        if self._gen is None:
            self._setup_render()
        start = shard * self._shard_size
        stop = min(start + self._shard_size, self._n)
        count = stop - start
        if self._buffers is None:
            size = self._size
            self._buffers = (
                np.empty((self._shard_size, size, size, 3), np.uint8),
                np.empty((self._shard_size, size, size), np.uint8),
            )
        images, masks = self._buffers[0][:count], self._buffers[1][:count]
        targets, sources, metas = [], [], []
        for j, i in enumerate(range(start, stop)):
            rng = sample_rng(self._seed, i)
            n_textures = self._n_sources if self._texture else None
            t, s = draw_pair(self._seed, i, rng, self._n_normals, n_textures)
            target, fov = self._cache.get(self._normals, t)
            source, source_fov = self._cache.get(self._sources, s)
            sample = self._gen.generate(target, source, rng, fov=fov, source_fov=source_fov)
            images[j] = sample.image
            masks[j] = sample.mask
            targets.append(t)
            sources.append(s)
            metas.append(sample.meta)
        self._check_owner()
        self.writer.write_samples(shard, start, images, masks, targets, sources, metas)
        cpu = time.process_time() - cpu0
        return {"shard": shard, "samples": count, "maxrss": _maxrss(), "cpu": cpu}


def _nothing() -> None:
    pass


def _limit_zarr_threads(n: int) -> Callable[[], None]:
    """Run zarr's codecs (zstd, blosc, crc32c) on at most ``n`` threads in this process.

    zarr 3.1 encodes chunks with ``asyncio.to_thread`` on its event loop, whose default
    executor has min(32, CPUs + 4) threads, and ignores its ``threading.max_workers`` setting.
    zstd releases the GIL, so one worker would otherwise compress on several cores. Returns a
    function that gives the loop an executor of the default size back.
    """
    from concurrent.futures import ThreadPoolExecutor

    try:
        from zarr.core.sync import _get_loop
    except ImportError:  # a zarr whose internals moved: leave its threads alone
        return lambda: None
    loop = _get_loop()
    limited = ThreadPoolExecutor(max_workers=n, thread_name_prefix="anomalygen_zarr")
    loop.set_default_executor(limited)

    def restore() -> None:
        loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="zarr_pool"))
        limited.shutdown(wait=False)

    return restore


def _prepare_normal(path: str, name: str, size: int, clahe: bool) -> Any:
    from anomalygen.fundus import prepare_fundus, read_image

    return prepare_fundus(read_image(path), size, clahe, name=name)


def _prepare_texture(path: str, name: str, size: int) -> np.ndarray:
    """A texture (DRAEM: DTD images) read and resized to ``size x size``."""
    import cv2

    from anomalygen.fundus import read_image

    rgb = read_image(path)
    h, w = rgb.shape[:2]
    interp = cv2.INTER_AREA if h * w > size * size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _reason(err: BaseException, path: str, name: str) -> str:
    """The reason part of an error message (the file is named separately)."""
    text = " ".join(str(err).split()) or type(err).__name__
    for prefix in (f"{path}: ", f"{name}: "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    if not isinstance(err, AnomalygenError):
        return f"{type(err).__name__}: {text}"
    return text


def _maxrss() -> int:
    """Peak resident memory of this process, in bytes."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


# ------------------------------------------------------------------------------------------
# Locks: one render per store
# ------------------------------------------------------------------------------------------


def _lock_for(loc: st.StoreLocation) -> _LocalLock | _ObjectLock:
    path = loc.local_path
    return _LocalLock(loc, path) if path is not None else _ObjectLock(loc)


class _LocalLock:
    """An exclusive ``flock`` on the store's folder: the kernel releases it when the process
    exits for any reason (kill -9 included), so a crashed render never blocks its resume."""

    def __init__(self, loc: st.StoreLocation, path: Path) -> None:
        self.loc = loc
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        try:
            if self.path.exists() and not self.path.is_dir():
                raise StoreError(f"{self.loc}: exists and is not a folder; choose another --out")
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as err:
            raise StoreError(f"{self.loc}: cannot create the store ({one_line(err)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"{self.loc}: another render is writing this store; wait for it to finish "
                "(or stop it) and run again"
            ) from None
        self._fd = fd

    def check(self) -> None:
        """The kernel holds a flock until release: it cannot be lost."""

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class _ObjectLock:
    """For stores behind fsspec URLs: a lock object ``<url>.lock`` naming its owner, refreshed
    by a heartbeat; one whose heartbeat is older than ``LOCK_STALE_AFTER`` is taken over."""

    def __init__(self, loc: st.StoreLocation) -> None:
        self.loc = loc
        self.url = loc.url.rstrip("/") + ".lock"
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost_to: str | None = None  # set by the heartbeat when another render took over
        self._fs, self._path = st.StoreLocation(self.url, loc.storage_options).fs()

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self._fs.cat_file(self._path))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {"owner": "unknown", "heartbeat": 0.0}

    def _write(self) -> None:
        body = {"owner": self.owner, "heartbeat": time.time()}
        self._fs.pipe_file(self._path, json.dumps(body).encode())

    def acquire(self) -> None:
        held = self._read()
        if held is not None and held.get("owner") != self.owner:
            age = time.time() - float(held.get("heartbeat", 0.0))
            if age < LOCK_STALE_AFTER:
                raise StoreError(
                    f"{self.loc}: another render ({held.get('owner')}) is writing this store "
                    f"(lock {self.url}, heartbeat {age:.0f}s ago); wait for it to finish"
                )
        try:
            self._write()
        except OSError as err:
            raise StoreError(
                f"{self.loc}: cannot write the lock {self.url} ({one_line(err)})"
            ) from None
        time.sleep(0.05)  # two renders starting together: the last writer wins, the other sees it
        held = self._read()
        if held is None or held.get("owner") != self.owner:
            raise StoreError(
                f"{self.loc}: another render took the lock {self.url} at the same time"
            )
        self._thread = threading.Thread(target=self._beat, name="anomalygen-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(LOCK_HEARTBEAT):
            with contextlib.suppress(Exception):
                held = self._read()
                if held is not None and held.get("owner") != self.owner:
                    # This render stalled past LOCK_STALE_AFTER and another took over: writing
                    # the heartbeat now would hand the store to two writers.
                    self._lost_to = str(held.get("owner"))
                    return
                self._write()

    def check(self) -> None:
        """Raise StoreError if another render has taken the lock over."""
        if self._lost_to is not None:
            raise StoreError(
                f"{self.loc}: another render ({self._lost_to}) took over the lock {self.url} "
                f"after this one stalled for over {LOCK_STALE_AFTER:.0f} s; stopping here "
                "(completed shards are kept)"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with contextlib.suppress(Exception):
            held = self._read()
            if held is not None and held.get("owner") == self.owner:
                self._fs.rm_file(self._path)
