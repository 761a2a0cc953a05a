"""Repairing a damaged store: ``anomalygen verify STORE --repair``.

Sample ``i`` is a function of ``(seed, i)`` and the pools alone, and a pool slot a function of
its source file, so a damaged shard can be made again exactly. :func:`repair_store`:

1. takes the store's render lock (no render may write meanwhile) and removes the temporary
   files an interrupted write left;
2. runs a full verify and collects the damaged shards, of samples and of the pools (a problem
   outside any shard, such as a wrong layout or attributes, cannot be repaired: refused);
3. refuses, before writing anything, a store rendered by another anomalygen version, and pool
   shards whose source files are missing or changed (sizes and sha256 against the store's
   ``sources`` / ``textures`` record; ``src`` / ``textures`` say where the files are now);
4. prepares the damaged pool shards again, then renders the damaged sample shards again, with
   the store's own parameters. Each task compares what it made with the digests the store
   recorded for that shard (where they survive) and writes nothing if they differ;
5. verifies the store again (full check).

The shards written are the bytes an undamaged store holds: the repaired store is byte-identical
to it (``tests/test_repair.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anomalygen.errors import StoreError
from anomalygen.files import regular_file_problem, sha256_file
from anomalygen.render.lock import lock_for
from anomalygen.render.runners import InlineRunner, ProcessPoolRunner, Runner, TaskFailed
from anomalygen.render.tasks import Expected, PoolFile, PreparePoolShard, RenderShard, SampleSpec
from anomalygen.store import digests as dg
from anomalygen.store import format as fmt
from anomalygen.store.access import access_errors
from anomalygen.store.reader import SampleStore, open_store
from anomalygen.store.writer import (
    StoreWriter,
    now,
    refuse_escaping_links,
    remove_partial_files,
)
from anomalygen.verify import SAMPLES, VerifyReport, verify_store

__all__ = ["RepairResult", "repair_store"]

#: Memory for a repair worker's cache of pool images (as a render's default, in bytes).
REPAIR_CACHE_BYTES = 256 << 20


@dataclass
class RepairResult:
    """What a repair found and did. ``summary()`` is the line the CLI prints."""

    url: str
    found: VerifyReport  # the verify before the repair
    repaired: dict[str, list[int]] = field(default_factory=dict)  # unit -> shards written
    after: VerifyReport | None = None  # the verify after it (None: nothing was written)

    @property
    def ok(self) -> bool:
        return (self.after or self.found).ok

    def summary(self) -> str:
        if not self.repaired:
            return f"{self.url}: nothing to repair ({self.found.summary().split(': ', 1)[1]})"
        parts = [
            f"{len(shards)} {'sample' if unit == SAMPLES else unit} shard"
            f"{'s' if len(shards) != 1 else ''} ({_shown(shards)})"
            for unit, shards in self.repaired.items()
        ]
        verdict = "the store is OK" if self.ok else f"{len(self.after.problems)} problem(s) remain"
        return f"{self.url}: repaired {' and '.join(parts)}; {verdict}"


def _shown(shards: list[int]) -> str:
    text = ", ".join(map(str, shards[:8]))
    return text + (f" and {len(shards) - 8} more" if len(shards) > 8 else "")


def repair_store(
    url: str,
    *,
    src: str | os.PathLike | None = None,
    textures: str | os.PathLike | None = None,
    workers: int = 1,
    storage_options: dict | None = None,
    progress: bool = False,
) -> RepairResult:
    """Render the damaged shards of the store at ``url`` again (see the module docstring).

    ``src`` / ``textures``: where the source photographs / textures are now, if not at the
    root the store records. Raises :class:`StoreError` (one line) for a store that cannot be
    repaired, or a source that changed; nothing is written then.
    """
    store = open_store(url, storage_options)
    lock = lock_for(store.loc)
    with access_errors(store.loc, "reach the store"):
        lock.acquire()
    try:
        refuse_escaping_links(store.loc)
        remove_partial_files(store.loc)
        found = verify_store(url, full=True, storage_options=storage_options, lock_held=True,
                             progress=progress)  # fmt: skip
        result = RepairResult(store.url, found)
        if found.ok:
            return result
        _check_repairable(store, found)
        plan = _Plan(store, found, {fmt.NORMALS: src, fmt.TEXTURES: textures})
        result.repaired = plan.run(workers)
        _mark_complete(store)
        result.after = verify_store(url, full=True, storage_options=storage_options,
                                    lock_held=True, progress=progress)  # fmt: skip
        return result
    finally:
        lock.release()


def _check_repairable(store: SampleStore, found: VerifyReport) -> None:
    from anomalygen import __version__

    if found.unrepairable:
        raise StoreError(
            f"{store.loc}: cannot be repaired: {found.unrepairable} problem(s) lie outside any "
            f"shard (first: {found.problems[0]}); render the store again"
        )
    made_by = store.attrs.get("anomalygen_version")
    if made_by != __version__:
        raise StoreError(
            f"{store.loc}: rendered by anomalygen {made_by}, this is {__version__}: samples "
            f"differ between versions; repair it with anomalygen {made_by}"
        )


class _Plan:
    """The tasks of one repair: the damaged pool shards, then the damaged sample shards."""

    def __init__(self, store: SampleStore, found: VerifyReport, roots: dict[str, Any]) -> None:
        self.store = store
        self.spec = store.spec
        self.damaged = {unit: sorted(shards) for unit, shards in found.damaged.items()}
        self.roots = roots
        self.has_digests = store.attrs["format_version"] >= fmt.DIGESTS_SINCE

    def run(self, workers: int) -> dict[str, list[int]]:
        pool_tasks = [
            self._prepare_task(pool, k)
            for pool in (fmt.NORMALS, fmt.TEXTURES)
            for k in self.damaged.get(pool, [])
        ]
        sample_tasks = [self._render_task(s) for s in self.damaged.get(SAMPLES, [])]
        for tasks in (pool_tasks, sample_tasks):  # the samples are made from the pools
            if tasks:
                _run(self.store, tasks, workers)
        return {unit: shards for unit, shards in self.damaged.items() if shards}

    def _expected(self, name: str, r: range) -> Expected | None:
        """The digests recorded for items ``r`` of digests array ``name`` (MISSING where lost
        or unreadable); None for a version-1 store, which has none."""
        if not self.has_digests:
            return None
        arr = self.store.arrays()[name]
        try:
            rows = np.asarray(arr[r.start : r.stop], dtype=np.uint32)
        except Exception:  # its object is corrupted too: nothing is known
            rows = np.full((len(r), arr.shape[1]), dg.MISSING, np.uint32)
        return tuple(tuple(int(v) for v in row) for row in rows)

    def _render_task(self, shard: int) -> RenderShard:
        r = self.store.shard_range(shard)
        return RenderShard(shard, SampleSpec.of(self.spec), self._expected(fmt.DIGESTS, r))

    def _prepare_task(self, pool: str, k: int) -> PreparePoolShard:
        listing = self.spec.pools[pool]
        attrs = self.store.attrs["sources" if pool == fmt.NORMALS else "textures"]
        root = Path(self.roots[pool] or listing.root).expanduser()
        ps = self.spec.pool_shard_size
        r = range(k * ps, min((k + 1) * ps, len(listing.files)))
        files = []
        for slot in r:
            name, size = listing.files[slot]
            recorded = attrs["files"][slot][2]
            path = root / name
            _check_source(self.store, pool, path, size, recorded)
            files.append(PoolFile(slot, os.path.abspath(path), name, size))
        expect = self._expected(dg.pool_digests_name(pool), r)
        return PreparePoolShard(pool, k, tuple(files), self.spec.size, self.spec.clahe, expect)


def _check_source(store: SampleStore, pool: str, path: Path, size: int, sha256: str | None) -> None:
    """The file a slot was prepared from must be the same file: its size, and its sha256 where
    the store recorded one (a file that could not be read has none, and must still be unusable
    the same way: the digests tell)."""
    what = "source photograph" if pool == fmt.NORMALS else "texture"
    option = "--src" if pool == fmt.NORMALS else "--texture-dir"
    if sha256 is None:
        return
    problem = regular_file_problem(path)
    if problem is not None:
        raise StoreError(
            f"{path}: the {what} to prepare again {problem}; repair needs the files the store "
            f"was rendered from ({option} DIR says where they are now); nothing was written"
        )
    found_size = path.stat().st_size
    if found_size != size:
        change = f"{found_size:,} bytes, {size:,} when it was rendered"
    elif sha256_file(path) != sha256:
        change = f"its sha256 is not the {sha256[:12]}... recorded"
    else:
        return
    raise StoreError(
        f"{path}: the {what} changed since {store.loc} was rendered ({change}); repair needs "
        "the same file; nothing was written"
    )


def _run(store: SampleStore, tasks: list[Any], workers: int) -> None:
    """Run ``tasks`` on this process or a local pool; a failure is one StoreError line."""
    runner: Runner
    if workers <= 1 or len(tasks) == 1 or store.loc.in_memory:
        runner = InlineRunner(store.loc, REPAIR_CACHE_BYTES)
    else:
        runner = ProcessPoolRunner(store.loc, min(workers, len(tasks)), REPAIR_CACHE_BYTES)
    try:
        for _ in runner.run(tasks):
            pass
    except TaskFailed as err:
        runner.abort()
        raise StoreError(
            f"{store.loc}: {err.what} failed ({err.reason}); run the repair again"
        ) from None
    finally:
        runner.close()


def _mark_complete(store: SampleStore) -> None:
    """A store whose every flag is now set, and that had not been marked complete (its render
    was interrupted), is marked as a completed render marks it."""
    if store.attrs.get("completed"):
        return
    writer = StoreWriter(store.loc)
    if np.all(writer.array(fmt.DONE)[:] == 1):
        writer.update_attrs({"completed": now()})
