"""The render's coordinator: ``anomalygen render`` as a library call, :func:`render`.

:func:`render` checks its arguments and makes a :class:`Plan`; :func:`run_plan` takes the
store's lock, creates or resumes the store, runs phase 1 (prepare the pools) and phase 2
(render the shards) on a runner, and reports a :class:`RenderResult`. Completion flags are
written after each shard's data; a rerun skips flagged shards and redoes the rest. Workers read
normals from the store on demand through a bounded cache, so their memory depends on neither N
nor the number of source images; blocks of 64 consecutive samples share 16 photographs
(``draw_pair``), so that cache hits even with thousands of sources.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anomalygen.errors import ConfigError, ImageError, StoreError
from anomalygen.progress import Progress, format_bytes, format_duration
from anomalygen.render.lock import Lock, lock_for
from anomalygen.render.runners import InlineRunner, ProcessPoolRunner, Runner, TaskFailed
from anomalygen.render.tasks import (
    PoolFile,
    PreparePoolShard,
    RenderShard,
    SampleSpec,
    Task,
    TaskReport,
    check_memory,
    physical_memory,
)
from anomalygen.sources import SourceList, find_sources
from anomalygen.store.access import access_errors
from anomalygen.store.format import (
    CODECS,
    DEFAULT_CODEC,
    DEFAULT_LAYOUT,
    DEFAULT_SHARD_SIZE,
    DONE,
    LAYOUTS,
    MAX_N,
    MAX_SEED,
    MAX_SHARD_SIZE,
    MAX_SIZE,
    MIN_SIZE,
    NORMALS,
    POOL_SHARD_SIZE,
    SAMPLE_ARRAYS,
    TEXTURES,
    Listing,
    RenderSpec,
)
from anomalygen.store.location import StoreLocation, location
from anomalygen.store.text import decode_texts
from anomalygen.store.writer import StoreWriter, initial_attrs, now, open_or_create

__all__ = [
    "DEFAULT_CACHE_MB",
    "Plan",
    "RenderInterrupted",
    "RenderResult",
    "render",
    "resolve_workers",
    "run_plan",
]

#: Default memory for a worker's cache of decoded pool images (normals, textures). At 768 px a
#: normal with its FOV takes 2.4 MB, so 256 MB hold about 100: all of a small source set, and a
#: bounded share of a large one, where most reads miss (each miss costs about 5 ms at 768 px:
#: rendering runs at about half the speed it reaches with a small source set).
DEFAULT_CACHE_MB = 256


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
# The public entry point: arguments -> a plan
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A checked render: where, what, from which files, on what."""

    loc: StoreLocation
    spec: RenderSpec
    files: dict[str, SourceList]  # per pool: the files behind spec.sources / spec.textures
    workers: int  # local processes (or the LocalCluster's)
    scheduler: str | None = None  # "local" or a Dask address
    cache_bytes: int = DEFAULT_CACHE_MB << 20
    strict: bool = False
    overwrite: bool = False
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Display:
    """Progress bars on (a rich bar on a terminal, plain lines otherwise) or off."""

    enabled: bool = True
    stream: Any = None

    def bar(self, total: int, description: str, unit: str, completed: int = 0) -> Progress:
        return Progress(
            total,
            description=description,
            unit=unit,
            completed=completed,
            enabled=self.enabled,
            stream=self.stream,
        )


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
    shard_size: int = DEFAULT_SHARD_SIZE,
    codec: str = DEFAULT_CODEC,
    clahe: bool = True,
    strict: bool = False,
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
    progress_stream: Any = None,
    cache_mb: int = DEFAULT_CACHE_MB,
    scheduler: str | None = None,
    layout: str = DEFAULT_LAYOUT,
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
    filesystem). The result is byte-identical to a local render (:mod:`anomalygen.render.dask`).

    ``layout="compact"`` (the default) stores per sample only its boxes and the pixels inside
    them, composed with its target photograph on read (docs/store-format.md); ``"full"`` every
    image and mask, for tools that read the ``image`` arrays themselves.
    """
    started = time.monotonic()
    config = _generator_config(config)
    _check_options(n=n, size=size, seed=seed, shard_size=shard_size, codec=codec, cache_mb=cache_mb)
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout: unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    files = _find_files(src, textures, config)
    where = location(out, storage_options)
    loc, n_workers, scheduler, notes = _placement(where, workers, scheduler)
    if scheduler is None:  # a cluster's workers are other machines, with their own memory
        check_memory(int(size), int(shard_size), n_workers, physical_memory())
    spec = RenderSpec(
        n=int(n), size=int(size), seed=int(seed), shard_size=int(shard_size), codec=codec,
        clahe=bool(clahe), generator=config, sources=_listing(files[NORMALS]),
        textures=_listing(files[TEXTURES]) if TEXTURES in files else None, layout=layout,
    )  # fmt: skip
    plan = Plan(
        loc=loc, spec=spec, files=files, workers=n_workers, scheduler=scheduler,
        cache_bytes=int(cache_mb) << 20, strict=strict, overwrite=overwrite, notes=tuple(notes),
    )  # fmt: skip
    return run_plan(plan, Display(progress, progress_stream), started=started)


def _generator_config(config: Any) -> Any:
    from anomalygen.generator import GeneratorConfig

    config = GeneratorConfig() if config is None else config
    if not isinstance(config, GeneratorConfig):
        raise ConfigError(f"config: expected a GeneratorConfig, got {type(config).__name__}")
    return config


def _check_options(
    *, n: int, size: int, seed: int, shard_size: int, codec: str, cache_mb: int
) -> None:
    def bounded_int(name: str, value: Any, low: int, high: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ConfigError(f"--{name}: must be an integer >= {low}, got {value!r}")
        if value > high:
            raise ConfigError(f"--{name}: must be at most {high:,}, got {value:,}")

    bounded_int("n", n, 1, MAX_N)
    bounded_int("size", size, MIN_SIZE, MAX_SIZE)
    bounded_int("seed", seed, 0, MAX_SEED)
    bounded_int("shard-size", shard_size, 1, MAX_SHARD_SIZE)
    bounded_int("cache-mb", cache_mb, 1, 1 << 30)
    if codec not in CODECS:
        raise ConfigError(f"--codec: unknown codec {codec!r} (choose from {', '.join(CODECS)})")


def _find_files(src: Any, textures: Any, config: Any) -> dict[str, SourceList]:
    """The files of each pool: ``{"normals": ...}``, and ``"textures"`` in texture mode."""
    texture_mode = config.source == "texture"
    if texture_mode and textures is None:
        raise ConfigError("--texture-dir: texture mode (--source texture) needs a texture folder")
    if not texture_mode and textures is not None:
        raise ConfigError("--texture-dir: textures are only used with --source texture")
    sources = src if isinstance(src, SourceList) else find_sources(src)
    if not sources.files:
        raise ImageError(f"--src: no image files found in {sources.description or sources.root}")
    files = {NORMALS: sources}
    if texture_mode:
        tex = textures if isinstance(textures, SourceList) else find_sources(textures)
        if not tex.files:
            raise ImageError(f"--texture-dir: no image files found in {tex.root}")
        files[TEXTURES] = tex
    return files


def _placement(
    loc: StoreLocation, workers: int | str | None, scheduler: str | None
) -> tuple[StoreLocation, int, str | None, list[str]]:
    """Where the tasks run: ``(loc, workers, scheduler, notes)``, checked."""
    notes: list[str] = []
    n_workers = resolve_workers(workers)
    if scheduler is not None:
        from anomalygen.render.dask import check_scheduler

        scheduler = check_scheduler(scheduler)
        if loc.in_memory:
            raise ConfigError(
                "--scheduler: a memory:// store lives in this process, where no Dask worker "
                "can write; give a path or an object-store URL"
            )
        loc = loc.resolved()  # workers may start in another folder
        if scheduler != "local" and workers not in (None, "auto"):
            notes.append("--workers applies to --scheduler local only; the cluster has its own")
    elif loc.in_memory and n_workers > 1:
        notes.append("memory:// stores live in this process: rendering in-process with 1 worker")
        n_workers = 1
    return loc, n_workers, scheduler, notes


def _listing(files: SourceList) -> Listing:
    return Listing(files.root, files.description, tuple((f.name, f.bytes) for f in files.files))


# ------------------------------------------------------------------------------------------
# Running a plan
# ------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What this run has done so far (the coordinator's counters)."""

    shards_already_done: int = 0
    shards_rendered: int = 0
    samples_rendered: int = 0
    render_seconds: float = 0.0
    render_cpu: float = 0.0
    peak_rss: int = 0
    usable: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def note(self, report: TaskReport) -> None:
        self.peak_rss = max(self.peak_rss, report.maxrss)


def run_plan(plan: Plan, display: Display, *, started: float) -> RenderResult:
    """Lock the store, create or resume it, run both phases, and report."""
    lock = lock_for(plan.loc)
    with access_errors(plan.loc, "reach the store"):
        lock.acquire()
    try:
        with access_errors(plan.loc, "create the store"):
            attrs = initial_attrs(plan.spec)
            store_id = open_or_create(plan.loc, plan.spec, attrs, overwrite=plan.overwrite)
        writer = StoreWriter(plan.loc)
        tally = Tally()
        runner = _run_phases(plan, writer, lock, display, tally, store_id)
        writer.update_attrs({"completed": now()})
        return _result(plan, tally, runner, started)
    finally:
        lock.release()


def _run_phases(
    plan: Plan,
    writer: StoreWriter,
    lock: Lock,
    display: Display,
    tally: Tally,
    store_id: str | None,
) -> Runner | None:
    """Phase 1, the pools' records, phase 2; returns the runner used (None: nothing to do)."""
    prepare = _prepare_tasks(plan, writer)
    done = writer.array(DONE)[:]
    todo = [RenderShard(int(s), SampleSpec.of(plan.spec)) for s in np.flatnonzero(done == 0)]
    tally.shards_already_done = plan.spec.n_shards - len(todo)
    runner: Runner | None = None
    try:
        if prepare:
            probe = prepare[0].files[0].path  # workers on a cluster must be able to read it
            runner = _make_runner(plan, max(len(prepare), plan.spec.n_shards), probe, store_id)
            _phase_prepare(plan, runner, prepare, lock, display, tally)
        _collect_pools(plan, writer, tally)
        if todo:
            runner = runner or _make_runner(plan, len(todo), None, store_id)
            _phase_render(plan, runner, todo, lock, display, tally, writer)
    finally:
        if runner is not None:
            runner.close()
    return runner


def _make_runner(plan: Plan, tasks: int, probe: str | None, store_id: str | None) -> Runner:
    """A Dask runner with ``plan.scheduler``, else this process or a local process pool."""
    if plan.scheduler is not None:
        from anomalygen.render.dask import DaskRunner

        return DaskRunner(
            plan.scheduler, plan.loc, plan.cache_bytes, workers=plan.workers, probe_path=probe,
            store_id=store_id,
        )  # fmt: skip
    workers = max(1, min(plan.workers, tasks))
    if workers == 1:
        return InlineRunner(plan.loc, plan.cache_bytes)
    return ProcessPoolRunner(plan.loc, workers, plan.cache_bytes)


def _drive(
    runner: Runner,
    tasks: Sequence[Task],
    lock: Lock,
    on_report: Callable[[TaskReport], None],
    interrupted: Callable[[], str],
    failed: Callable[[TaskFailed], str],
) -> None:
    """Run ``tasks``, handing each report to ``on_report``. Ctrl-C raises
    :class:`RenderInterrupted` and a failed task :class:`StoreError`, with the messages that
    ``interrupted`` and ``failed`` give once the running tasks have finished."""
    try:
        for report in runner.run(tasks):
            lock.check()
            on_report(report)
    except KeyboardInterrupt:
        runner.abort()
        raise RenderInterrupted(interrupted()) from None
    except TaskFailed as err:
        runner.abort()
        raise StoreError(failed(err)) from None
    except BaseException:
        runner.abort()
        raise


# ------------------------------------------------------------------------------------------
# Phase 1: prepare the pools
# ------------------------------------------------------------------------------------------


def _prepare_tasks(plan: Plan, writer: StoreWriter) -> list[PreparePoolShard]:
    """A task for each pool shard not prepared yet."""
    tasks = []
    for pool, listing in plan.files.items():
        done = writer.array(f"{pool}_done")[:]
        for k in np.flatnonzero(done == 0):
            lo = int(k) * POOL_SHARD_SIZE
            files = tuple(
                PoolFile(lo + j, os.path.abspath(f.path), f.name, f.bytes)
                for j, f in enumerate(listing.files[lo : lo + POOL_SHARD_SIZE])
            )
            tasks.append(PreparePoolShard(pool, int(k), files, plan.spec.size, plan.spec.clahe))
    return tasks


def _phase_prepare(
    plan: Plan,
    runner: Runner,
    tasks: list[PreparePoolShard],
    lock: Lock,
    display: Display,
    tally: Tally,
) -> None:
    total = sum(len(t.files) for t in tasks)
    with display.bar(total, "prepare", "images") as bar:

        def on_report(report: TaskReport) -> None:
            bar.advance(len(report.infos))
            tally.note(report)
            bad = [info for info in report.infos if not info["usable"]]
            if plan.strict and bad:
                raise ImageError(
                    f"{bad[0]['name']}: {bad[0]['reason']} (--strict makes bad source files fatal)"
                )

        _drive(
            runner,
            tasks,
            lock,
            on_report,
            interrupted=lambda: (
                f"interrupted while preparing source images; {plan.loc} keeps what is done: "
                "run the same command again to resume"
            ),
            failed=lambda err: (
                f"{plan.loc}: {err.what} failed ({err.reason}); what is complete is kept: fix "
                "the cause and run the same command again to resume"
            ),
        )


def _collect_pools(plan: Plan, writer: StoreWriter, tally: Tally) -> None:
    """Read every pool record (this run's and earlier runs'), publish them in the attributes,
    and check that there is something to render from."""
    import json

    update: dict[str, Any] = {}
    for pool, listing in plan.spec.pools.items():
        records = writer.array(f"{pool}_info")
        texts = []  # a pool shard at a time: format-3 records take 64 KB a row
        for lo in range(0, records.shape[0], POOL_SHARD_SIZE):
            texts.extend(decode_texts(records[lo : lo + POOL_SHARD_SIZE]))
        infos = [json.loads(t) for t in texts]
        key = "sources" if pool == NORMALS else "textures"
        bad = [i for i in infos if not i.get("usable")]
        tally.skipped.extend({"pool": pool, "name": i["name"], "reason": i["reason"]} for i in bad)
        tally.usable[pool] = len(infos) - len(bad)
        update[key] = listing.to_attrs([info.get("sha256") for info in infos])
        update[f"{pool}_count"] = tally.usable[pool]
        if tally.usable[pool] == 0:
            what = "source image" if pool == NORMALS else "texture"
            first = f" (first: {bad[0]['name']}: {bad[0]['reason']})" if bad else ""
            files = plan.files[pool]
            raise ImageError(
                f"no usable {what} in {files.description or files.root}: all "
                f"{len(infos)} files were skipped{first}"
            )
    update["skipped"] = tally.skipped
    writer.update_attrs(update)
    if plan.strict and tally.skipped:
        first = tally.skipped[0]
        raise ImageError(
            f"{first['name']}: {first['reason']} (--strict makes bad source files fatal; "
            f"{len(tally.skipped)} bad in all)"
        )


# ------------------------------------------------------------------------------------------
# Phase 2: render the shards
# ------------------------------------------------------------------------------------------


def _phase_render(
    plan: Plan,
    runner: Runner,
    todo: list[RenderShard],
    lock: Lock,
    display: Display,
    tally: Tally,
    writer: StoreWriter,
) -> None:
    spec = plan.spec
    todo_shards = {task.shard for task in todo}
    already = sum(len(spec.shard_range(s)) for s in range(spec.n_shards) if s not in todo_shards)

    def complete() -> str:
        done = int(np.count_nonzero(writer.array(DONE)[:]))
        return f"{done} of {spec.n_shards} shards"

    t0 = time.monotonic()
    with display.bar(spec.n, "render", "samples", completed=already) as bar:

        def on_report(report: TaskReport) -> None:
            tally.shards_rendered += 1
            tally.samples_rendered += report.samples
            tally.render_cpu += report.cpu_seconds
            tally.note(report)
            bar.advance(report.samples)

        _drive(
            runner,
            todo,
            lock,
            on_report,
            interrupted=lambda: (
                f"interrupted: {complete()} of {plan.loc} are complete and kept; run the same "
                "command again to resume"
            ),
            failed=lambda err: (
                f"{plan.loc}: {err.what} failed ({err.reason}); {complete()} are complete and "
                "intact: fix the cause and run the same command again to resume"
            ),
        )
    tally.render_seconds = time.monotonic() - t0


def _result(plan: Plan, tally: Tally, runner: Runner | None, started: float) -> RenderResult:
    sizes = plan.loc.sizes()  # one listing of the store's objects
    return RenderResult(
        url=plan.loc.url,
        n=plan.spec.n,
        n_shards=plan.spec.n_shards,
        shards_rendered=tally.shards_rendered,
        shards_already_done=tally.shards_already_done,
        samples_rendered=tally.samples_rendered,
        seconds=time.monotonic() - started,
        bytes_on_disk=sum(sizes.values()),
        sample_bytes=sum(sizes.get(name, 0) for name in SAMPLE_ARRAYS),
        normals=tally.usable.get(NORMALS, 0),
        textures=tally.usable.get(TEXTURES) if plan.spec.textures is not None else None,
        skipped=tally.skipped,
        workers=runner.workers if runner is not None else 1,
        peak_rss_per_worker=tally.peak_rss,
        render_seconds=tally.render_seconds,
        render_cpu_seconds=tally.render_cpu,
        notes=list(plan.notes),
        cluster=runner.cluster if runner is not None else None,
    )
