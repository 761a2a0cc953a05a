"""The render's units of work, and the state a worker keeps between them.

A task is a small frozen object that says what it is (:meth:`describe`, a :attr:`key` unique
within a render) and does its work on a worker's :class:`WorkerState`:

- :class:`PreparePoolShard` (phase 1) reads and prepares the files of one pool shard
  (``prepare_fundus``, paper 4.1; textures are resized), then writes the shard once;
- :class:`RenderShard` (phase 2) makes every sample of one shard and writes the shard once.
  Sample ``i`` uses ``sample_rng(seed, i)`` alone: it draws the target and source indices
  (``draw_pair``), then the generator draws the lesions. So a shard is byte-identical whoever
  renders it, however often.

Every runner calls :func:`run_task`, which returns a :class:`TaskReport`. Before it writes, a
task calls the state's ``guard``, with which a runner stops a task whose render has let the store
go (the coordinator died; the store was started over).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from anomalygen.errors import AnomalygenError, ConfigError, StoreError
from anomalygen.files import sha256_file
from anomalygen.progress import format_bytes
from anomalygen.render.cache import PoolCache
from anomalygen.store.digests import MISSING, SAMPLE_COLUMNS, item_digests, pool_columns
from anomalygen.store.format import COMPACT, NORMALS, TEXTURES, RenderSpec
from anomalygen.store.location import StoreLocation
from anomalygen.store.reader import SampleStore
from anomalygen.store.writer import StoreWriter, pool_items, sample_items

if TYPE_CHECKING:  # pragma: no cover
    from anomalygen.generator import GeneratorConfig

__all__ = [
    "Expected",
    "PoolFile",
    "PreparePoolShard",
    "RenderShard",
    "SampleSpec",
    "Task",
    "TaskReport",
    "WorkerState",
    "check_expected",
    "check_memory",
    "physical_memory",
    "run_task",
    "worker_bytes",
]


@dataclass(frozen=True)
class TaskReport:
    """What a task did: samples written (phase 2), the pool records written (phase 1: one
    ``{"name", "bytes", "sha256", "usable", "reason"}`` per file), its CPU time and the peak
    memory of the process that ran it (bytes)."""

    samples: int = 0
    infos: tuple[dict[str, Any], ...] = ()
    cpu_seconds: float = 0.0
    maxrss: int = 0


class Task(Protocol):
    """One unit of work: runs on a worker, writes one shard of the store once."""

    @property
    def key(self) -> str:
        """Unique among a render's tasks (Dask's task keys are made of it)."""
        ...

    def describe(self) -> str:
        """What the task does, for error messages: ``"rendering shard 3"``."""
        ...

    def run(self, state: WorkerState) -> TaskReport: ...


def no_guard() -> None:
    """The guard of a worker whose render cannot be abandoned under it (in the same process)."""


class WorkerState:
    """One worker's state for one render: the store opened for writing, the cache of pool
    images, and (made by the first :class:`RenderShard`) the generator with its buffers.

    ``guard`` is called before every write; it raises (or ends the process) when the render
    this worker serves no longer owns the store.
    """

    def __init__(
        self, loc: StoreLocation, cache_bytes: int, guard: Callable[[], None] = no_guard
    ) -> None:
        self.loc = loc
        self.writer = StoreWriter(loc)
        self.cache = PoolCache(cache_bytes)
        self.guard = guard
        self._renderer: ShardRenderer | None = None

    def renderer(self, spec: SampleSpec) -> ShardRenderer:
        """The shard renderer for ``spec``, made on first use (the pools are complete then)."""
        if self._renderer is None or self._renderer.spec != spec:
            self._renderer = ShardRenderer(self.loc, spec)
        return self._renderer

    def close(self) -> None:
        self.cache.clear()
        self._renderer = None


def run_task(task: Task, state: WorkerState) -> TaskReport:
    """Run ``task`` on ``state``: the one entry point of every runner."""
    cpu0 = time.process_time()
    report = task.run(state)
    return replace(report, cpu_seconds=time.process_time() - cpu0, maxrss=maxrss())


def maxrss() -> int:
    """Peak resident memory of this process, in bytes."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


# ------------------------------------------------------------------------------------------
# Phase 1: prepare a pool shard
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolFile:
    """A source file and the pool slot it goes to."""

    slot: int
    path: str  # absolute: a worker may run in another folder
    name: str  # relative to the listing's root, as the store records it
    bytes: int


#: Digests a task must reproduce before it writes (a repair): one row per item of the shard,
#: one digest per column (``anomalygen.store.digests``), MISSING where none is known.
Expected = tuple[tuple[int, ...], ...]


def check_expected(loc: StoreLocation, what: str, expect: Expected, got: np.ndarray) -> None:
    """Raise :class:`StoreError` unless every known digest of ``expect`` equals ``got``'s:
    the shard made again is not the one the store recorded (another anomalygen version,
    generator or source file), and must not be written in its place."""
    recorded = np.asarray(expect, dtype=np.uint32).reshape(got.shape)
    differs = (recorded != MISSING) & (recorded != got)
    if differs.any():
        k, column = (int(x) for x in np.argwhere(differs)[0])
        raise StoreError(
            f"{loc}: {what} made again differs from what the store recorded (item {k}, "
            f"column {column}): this anomalygen does not reproduce the store (another version, "
            "generator or source file?); nothing was written"
        )


@dataclass(frozen=True)
class PreparePoolShard:
    """Prepare the files of pool shard ``shard`` of ``pool`` at ``size`` px and write them;
    with ``expect`` (a repair), only if they match those digests."""

    pool: str
    shard: int
    files: tuple[PoolFile, ...]
    size: int
    clahe: bool
    expect: Expected | None = None

    @property
    def key(self) -> str:
        return f"prepare-{self.pool}-{self.shard}"

    def describe(self) -> str:
        return f"preparing {self.pool} shard {self.shard}"

    def run(self, state: WorkerState) -> TaskReport:
        size, count = self.size, len(self.files)
        images = np.zeros((count, size, size, 3), np.uint8)
        fovs = np.zeros((count, size, size), np.uint8) if self.pool == NORMALS else None
        infos = []
        for j, file in enumerate(self.files):
            info: dict[str, Any] = {"name": file.name, "bytes": file.bytes, "sha256": None}
            try:
                info["sha256"] = sha256_file(file.path)  # regular files only
                if fovs is not None:
                    prepared = _prepare_normal(file, size, self.clahe)
                    images[j], fovs[j] = prepared.image, prepared.fov
                else:
                    images[j] = _prepare_texture(file, size)
                info.update(usable=True, reason=None)
            except Exception as err:  # any unusable file is reported, never fatal here
                info.update(usable=False, reason=_reason(err, file))
            infos.append(info)
        if self.expect is not None:
            items = pool_items(self.pool, images, fovs, infos)
            got = item_digests(pool_columns(self.pool), items)
            check_expected(state.loc, f"{self.pool} shard {self.shard}", self.expect, got)
        state.guard()
        state.writer.write_pool(self.pool, self.shard, self.files[0].slot, images, fovs, infos)
        return TaskReport(infos=tuple(infos))


def _prepare_normal(file: PoolFile, size: int, clahe: bool) -> Any:
    from anomalygen.fundus import prepare_fundus, read_image

    return prepare_fundus(read_image(file.path), size, clahe, name=file.name)


def _prepare_texture(file: PoolFile, size: int) -> np.ndarray:
    """A texture (DRAEM: DTD images) read and resized to ``size x size``."""
    import cv2

    from anomalygen.fundus import read_image

    rgb = read_image(file.path)
    h, w = rgb.shape[:2]
    interp = cv2.INTER_AREA if h * w > size * size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def _reason(err: BaseException, file: PoolFile) -> str:
    """The reason part of an error message (the file is named separately)."""
    text = " ".join(str(err).split()) or type(err).__name__
    for prefix in (f"{file.path}: ", f"{file.name}: "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    if not isinstance(err, AnomalygenError):
        return f"{type(err).__name__}: {text}"
    return text


# ------------------------------------------------------------------------------------------
# Phase 2: render a shard of samples
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleSpec:
    """What rendering a shard needs of the render's parameters (not the source lists)."""

    seed: int
    n: int
    shard_size: int
    size: int
    generator: GeneratorConfig
    source_pool: str  # "normals", or "textures" in texture mode

    @classmethod
    def of(cls, spec: RenderSpec) -> SampleSpec:
        return cls(spec.seed, spec.n, spec.shard_size, spec.size, spec.generator, spec.source_pool)


@dataclass(frozen=True)
class RenderShard:
    """Make the samples of shard ``shard`` and write them; with ``expect`` (a repair), only if
    they match those digests."""

    shard: int
    spec: SampleSpec
    expect: Expected | None = None

    @property
    def key(self) -> str:
        return f"render-{self.shard}"

    def describe(self) -> str:
        return f"rendering shard {self.shard}"

    def run(self, state: WorkerState) -> TaskReport:
        renderer = state.renderer(self.spec)
        start = self.shard * self.spec.shard_size
        samples = range(start, min(start + self.spec.shard_size, self.spec.n))
        images, masks, targets, sources, metas = renderer.render(samples, state.cache)
        if self.expect is not None:
            items = sample_items(images, masks, targets, sources, metas)
            got = item_digests(SAMPLE_COLUMNS, items)
            check_expected(state.loc, f"shard {self.shard}", self.expect, got)
        # A compact store keeps what a sample adds to its target photograph.
        normals = renderer.targets(targets, state.cache) if state.writer.layout == COMPACT else None
        state.guard()
        write = state.writer.write_samples
        write(self.shard, start, images, masks, targets, sources, metas, normals)
        return TaskReport(samples=len(samples))


#: Memory a render worker needs per pixel of one image side squared, besides its cache: the
#: shard's image and mask buffers (4 bytes a pixel per sample), held twice while zarr encodes
#: them, and the generator's per-sample float copies (ours: at most ~40 bytes a pixel).
SHARD_BYTES_PER_PIXEL = 2 * 4
GENERATOR_BYTES_PER_PIXEL = 40


def worker_bytes(size: int, shard_size: int) -> int:
    """Bytes one render worker needs for one shard of ``shard_size`` images of ``size`` px."""
    pixels = size * size
    return shard_size * pixels * SHARD_BYTES_PER_PIXEL + pixels * GENERATOR_BYTES_PER_PIXEL


def check_memory(size: int, shard_size: int, workers: int, physical: int | None) -> None:
    """Refuse, before anything is created, a render whose workers would need more memory for
    their shard buffers than this machine has (``physical`` bytes; None: unknown, no check)."""
    if physical is None:
        return
    per_worker = worker_bytes(size, shard_size)
    if per_worker > physical:
        raise ConfigError(
            f"--size {size} with --shard-size {shard_size}: a worker needs about "
            f"{format_bytes(per_worker)} to hold one shard, and this machine has "
            f"{format_bytes(physical)} of memory; lower --size or --shard-size"
        )
    if per_worker * workers > physical:
        fits = max(1, physical // per_worker)
        total = format_bytes(per_worker * workers)
        raise ConfigError(
            f"--workers {workers}: at --size {size} with --shard-size {shard_size} each worker "
            f"needs about {format_bytes(per_worker)} for one shard, {total} in all, and this "
            f"machine has {format_bytes(physical)}; use --workers {fits} or a smaller --shard-size"
        )


def physical_memory() -> int | None:
    """This machine's memory in bytes (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


class ShardRenderer:
    """The generator, the pools it draws from and a shard's buffers, for one render."""

    def __init__(self, loc: StoreLocation, spec: SampleSpec) -> None:
        from anomalygen.generator import AnomalyGenerator

        reader = SampleStore(loc)
        self.spec = spec
        self.normals = reader.normals
        self.sources = reader.textures if spec.source_pool == TEXTURES else self.normals
        self.generator = AnomalyGenerator(spec.generator)
        size = spec.size
        self._images = np.empty((spec.shard_size, size, size, 3), np.uint8)
        self._masks = np.empty((spec.shard_size, size, size), np.uint8)

    def targets(self, targets: list[int], cache: PoolCache) -> list[np.ndarray]:
        """The target photographs of a shard's samples (read for its render: in the cache)."""
        return [cache.get(self.normals, t)[0] for t in targets]

    def render(self, samples: range, cache: PoolCache) -> tuple[Any, ...]:
        """``(images, masks, targets, sources, metas)`` of ``samples`` (one shard)."""
        from anomalygen.generator import draw_pair, sample_rng

        seed = self.spec.seed
        n_normals = len(self.normals)
        n_textures = len(self.sources) if self.spec.source_pool == TEXTURES else None
        images, masks = self._images[: len(samples)], self._masks[: len(samples)]
        targets, sources, metas = [], [], []
        for j, i in enumerate(samples):
            rng = sample_rng(seed, i)
            t, s = draw_pair(seed, i, rng, n_normals, n_textures)
            target, fov = cache.get(self.normals, t)
            source, source_fov = cache.get(self.sources, s)
            out = (images[j], masks[j])  # made in place: no copy of the sample
            sample = self.generator.generate(target, source, rng, fov, source_fov, out)
            targets.append(t)
            sources.append(s)
            metas.append(sample.meta)
        return images, masks, targets, sources, metas
