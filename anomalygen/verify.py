"""Checking a store's integrity and contracts: ``anomalygen verify STORE [--full]``.

What is checked (each failure is one line in :attr:`VerifyReport.problems`):

- layout: every array the format names is there with the right shape, dtype, chunks and shards;
- completion: every shard's and every pool shard's flag is set, and every complete shard has
  its objects (a missing shard object would silently read as zeros);
- readability: every shard's index and at least one of its chunks decode (CRC32C-checked), so
  a truncated or corrupted shard file is caught; ``full`` decodes every chunk of every shard;
- digests (format version 2): every item read matches the digest written with it;
- contracts, on every sample read: the mask is binary and inside the target's FOV, the image
  equals its target normal wherever the mask is 0, a "normal" sample has an empty mask;
- metadata, for all samples: indices in range, JSON parses, lesion counts and areas agree.

Without ``full``, one random sample per shard plus ``samples`` more are read; with ``full``, all.

The completion flags are read first, and only shards flagged then are checked: a render writes
a shard's data before its flag, so a store that a render is writing is checked as far as it is
written, and the report says that a render holds the lock. Every problem that lies in one shard
(of samples, or of a pool) is recorded in :attr:`VerifyReport.damaged`, which is what
``anomalygen verify --repair`` (:mod:`anomalygen.repair`) renders again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anomalygen.errors import StoreError
from anomalygen.progress import Progress
from anomalygen.render.cache import PoolCache
from anomalygen.render.lock import lock_holder
from anomalygen.store import digests as dg
from anomalygen.store import format as fmt
from anomalygen.store.checked import read_error
from anomalygen.store.patches import box_rows, chunk_bytes, row_bytes
from anomalygen.store.reader import NormalsView, SampleStore, open_store
from anomalygen.store.text import INFO_BYTES, decode_texts, meta_bytes

__all__ = ["SAMPLES", "VerifyReport", "verify_store"]

#: Problems of one kind listed before the rest are summarised (ours: a screenful).
MAX_LISTED = 20
#: Memory for the normals that samples are compared with (ours: about 80 normals at 768 px,
#: plenty when verify walks the samples shard by shard).
VERIFY_CACHE_BYTES = 200 << 20
#: The key of :attr:`VerifyReport.damaged` for shards of samples (pools use their name).
SAMPLES = "samples"


@dataclass
class VerifyReport:
    url: str
    full: bool
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    samples_checked: int = 0
    shards_checked: int = 0
    #: Shards with a problem: ``{"samples": {3, 7}, "normals": {0}}`` (pool shards by pool).
    damaged: dict[str, set[int]] = field(default_factory=dict)
    #: Who holds the render lock (a render is writing the store), or None.
    render_in_progress: str | None = None
    #: Problems that lie in no shard (layout, attributes): a repair cannot fix those.
    unrepairable: int = 0
    _counts: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(
        self, kind: str, message: str, *, unit: str | None = None, shard: int | Iterable[int] = ()
    ) -> None:
        """Record a problem, in shard(s) ``shard`` of ``unit`` ("samples" or a pool) or in none
        (unrepairable); after ``MAX_LISTED`` of one kind, only count them."""
        count = self._counts.get(kind, 0) + 1
        self._counts[kind] = count
        if count <= MAX_LISTED:
            self.problems.append(message)
        shards = [shard] if isinstance(shard, int | np.integer) else list(shard)
        if unit is not None and shards:
            self.damaged.setdefault(unit, set()).update(int(s) for s in shards)
        else:
            self.unrepairable += 1

    def finish(self) -> None:
        for kind, count in self._counts.items():
            if count > MAX_LISTED:
                self.problems.append(f"... and {count - MAX_LISTED} more problems of kind {kind!r}")

    def summary(self) -> str:
        mode = "full check" if self.full else "spot check"
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        busy = "; a render is writing it" if self.render_in_progress else ""
        return (
            f"{self.url}: {verdict} ({mode}: {self.shards_checked} shards, "
            f"{self.samples_checked} samples read{busy})"
        )


def verify_store(
    url: str,
    *,
    full: bool = False,
    samples: int = 32,
    seed: int = 0,
    storage_options: dict | None = None,
    progress: bool = False,
    progress_stream: Any = None,
    lock_held: bool = False,
) -> VerifyReport:
    """Check the store at ``url``; see the module docstring. Raises :class:`StoreError` only if
    the store cannot be opened at all (missing, not an anomalygen store, unknown version).
    ``lock_held``: the caller holds the store's render lock (a repair), so no render writes."""
    store = open_store(url, storage_options)
    holder = None if lock_held else lock_holder(store.loc)
    report = VerifyReport(url=store.url, full=full, render_in_progress=holder)
    checker = _Checker(store, report, full, seed)
    checker.check_layout()
    if not report.ok:  # reading mis-shaped arrays would only add noise
        report.finish()
        return report
    flags = checker.read_flags()  # first: a shard flagged now is completely written
    complete = checker.check_flags(flags)
    checker.check_objects(complete)
    checker.check_partial_files()
    pools_ok = checker.check_pools(flags) and checker.check_pool_data()
    meta = checker.check_meta(complete, pools_ok)
    shards = sorted(complete)
    picks = _spot_picks(store, shards, full, samples, seed)
    normals = _Targets(store.normals, PoolCache(VERIFY_CACHE_BYTES)) if pools_ok else None
    bar = Progress(
        len(shards), description="verify", unit="shards", enabled=progress, stream=progress_stream
    )
    with bar:
        for s in shards:
            checker.check_shard(s, picks[s], meta, normals)
            report.shards_checked += 1
            bar.advance()
    report.finish()
    return report


def _spot_picks(
    store: SampleStore, shards: list[int], full: bool, samples: int, seed: int
) -> dict[int, list[int]]:
    """The samples to read in each shard: all with ``full``; else one random sample per shard
    and ``samples`` more drawn from all complete shards."""
    if full:
        return {s: list(store.shard_range(s)) for s in shards}
    rng = np.random.default_rng(seed)
    extra: dict[int, list[int]] = {}
    if shards and samples > 0:
        pool = np.concatenate([np.asarray(store.shard_range(s)) for s in shards])
        for i in rng.choice(pool, size=min(samples, len(pool)), replace=False):
            extra.setdefault(int(i) // store.shard_size, []).append(int(i))
    out = {}
    for s in shards:
        r = store.shard_range(s)
        out[s] = sorted({int(rng.integers(r.start, r.stop)), *extra.get(s, [])})
    return out


# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Targets:
    """The normals that samples are checked against, read through a small cache."""

    view: NormalsView
    cache: PoolCache


@dataclass(frozen=True)
class _Flags:
    """The completion flags, read before anything else."""

    done: np.ndarray
    pools: dict[str, np.ndarray]


class _Checker:
    """The checks of one verify run over one store, recording into one report."""

    def __init__(self, store: SampleStore, report: VerifyReport, full: bool, seed: int) -> None:
        self.store = store
        self.arrays = store.arrays()
        self.report = report
        self.full = full
        self.seed = seed
        self.has_digests = store.attrs["format_version"] >= fmt.DIGESTS_SINCE
        self.text_rows = store.attrs["format_version"] >= fmt.TEXT_ROWS_SINCE
        self.records = set(fmt.record_arrays())
        self.pools: dict[str, int] = dict(store.attrs["pools"])
        self.pool_shard = int(store.attrs.get("pool_shard_size", fmt.POOL_SHARD_SIZE))
        self.digest_rows: dict[str, np.ndarray] = {}
        self.listed: dict[str, set[str]] = {}  # array -> keys of its objects
        self.reported: set[tuple[str, int, str]] = set()  # digest problems: (unit, shard, array)
        self.expected: dict[str, Any] = {}

    # --- layout and flags -----------------------------------------------------------------
    def expected_layout(self) -> dict[str, tuple[tuple, str | None, tuple, tuple | None]]:
        store = self.store
        n, size = len(store), store.size
        k = min(store.shard_size, max(n, 1))  # create_store clips shards to a short array
        expected: dict[str, tuple[tuple, str | None, tuple, tuple | None]] = {
            fmt.IMAGE: ((n, size, size, 3), "uint8", (1, size, size, 3), (k, size, size, 3)),
            fmt.MASK: ((n, size, size), "uint8", (1, size, size), (k, size, size)),
            fmt.TARGET: ((n,), "int32", (k,), None),
            fmt.SOURCE: ((n,), "int32", (k,), None),
            fmt.AREA: ((n,), "int32", (k,), None),
            fmt.LESIONS: ((n,), "uint16", (k,), None),
            fmt.META: self._record_layout(n, k, self._meta_width()),
            fmt.DONE: ((store.n_shards,), "uint8", (1,), None),
        }
        if self.has_digests:
            cols = len(dg.SAMPLE_COLUMNS)
            expected[fmt.DIGESTS] = ((n, cols), "uint32", (k, cols), None)
        if store.layout == fmt.COMPACT:
            del expected[fmt.IMAGE], expected[fmt.MASK]
            rows = box_rows(store.config.lesions[1])
            expected[fmt.BOXES] = ((n, rows, 4), "int32", (k, rows, 4), None)
            expected[fmt.PATCH_BYTES] = ((n,), "int32", (k,), None)
            width, chunk = row_bytes(k, size), chunk_bytes(k, size)
            expected[fmt.PATCHES] = ((store.n_shards, width), "uint8", (1, chunk), (1, width))
        ps = self.pool_shard
        for pool, count in self.pools.items():
            c = min(ps, max(count, 1))
            image = ((count, size, size, 3), "uint8", (1, size, size, 3), (c, size, size, 3))
            expected[pool] = image
            if pool == fmt.NORMALS:
                fov = ((count, size, size), "uint8", (1, size, size), (c, size, size))
                expected[f"{pool}_fov"] = fov
            expected[f"{pool}_info"] = self._record_layout(count, c, INFO_BYTES)
            if self.has_digests:
                cols = len(dg.pool_columns(pool))
                expected[dg.pool_digests_name(pool)] = ((count, cols), "uint32", (c, cols), None)
            expected[f"{pool}_done"] = ((-(-count // ps),), "uint8", (1,), None)
        return expected

    def _meta_width(self) -> int:
        return meta_bytes(self.store.config.lesions[1])

    def _record_layout(
        self, count: int, shard: int, width: int
    ) -> tuple[tuple, str | None, tuple, Any]:
        """A record array's (shape, dtype, chunks, shards): rows of ``width`` uint8 from
        version 3, a chunk per shard; zarr-python strings (dtype not checked) before."""
        if not self.text_rows:
            return ((count,), None, (shard,), None)
        return ((count, width), "uint8", (shard, width), ())

    def check_layout(self) -> None:
        self.expected = self.expected_layout()
        for name, (shape, dtype, chunks, shards) in self.expected.items():
            try:
                arr = self.arrays[name]
            except StoreError:
                self.report.problem("layout", f"array {name!r} is missing")
                continue
            found = {
                "shape": (tuple(arr.shape), shape),
                "dtype": (str(arr.dtype), dtype),
                "chunks": (tuple(arr.chunks), chunks),
                "shards": (tuple(arr.shards or ()), shards),
            }
            for what, (got, want) in found.items():
                if want is not None and got != want:
                    self.report.problem("layout", f"array {name!r}: {what} {got}, expected {want}")

    def read_flags(self) -> _Flags:
        pools = {pool: self._read_whole(f"{pool}_done") for pool in self.pools}
        return _Flags(self._read_whole(fmt.DONE), pools)

    def _read_whole(self, name: str) -> np.ndarray:
        """A flags array; an unreadable flag object reads as 'not complete' (reported)."""
        arr = self.arrays[name]
        try:
            return np.asarray(arr[:])
        except Exception:
            out = np.zeros(arr.shape, np.uint8)
            for k in range(arr.shape[0]):
                try:
                    out[k] = arr[k]
                except Exception as err:
                    unit = SAMPLES if name == fmt.DONE else name[: -len("_done")]
                    self.report.problem(
                        "flags",
                        f"{name} flag {k}: unreadable ({read_error(err)})",
                        unit=unit,
                        shard=k,
                    )
            return out

    def check_flags(self, flags: _Flags) -> set[int]:
        store, report, done = self.store, self.report, flags.done
        complete = {int(s) for s in np.flatnonzero(done == 1)}
        for s in np.flatnonzero((done != 0) & (done != 1))[:MAX_LISTED]:
            report.problem(
                "flags", f"shard {s}: flag {done[s]} is neither 0 nor 1", unit=SAMPLES, shard=s
            )
        missing = [s for s in range(store.n_shards) if done[s] != 1]
        if missing and report.render_in_progress:
            report.warnings.append(
                f"{report.render_in_progress} holds the lock on this store: {len(missing)} of "
                f"{store.n_shards} shards are still being written (checked: the {len(complete)} "
                "complete ones)"
            )
        elif missing:
            first = store.shard_range(missing[0])
            report.problem(
                "flags",
                f"{len(missing)} of {store.n_shards} shards are not complete (first: shard "
                f"{missing[0]}, samples {first.start}-{first.stop - 1}); resume the render",
                unit=SAMPLES,
                shard=missing,
            )
        for pool, pool_flags in flags.pools.items():
            todo = np.flatnonzero(pool_flags != 1)
            if not (self.pools[pool] and len(todo)):
                continue
            if report.render_in_progress:
                report.warnings.append(f"{pool}: {len(todo)} pool shards are still being prepared")
                continue
            report.problem(
                "flags",
                f"{pool}: {len(todo)} of {len(pool_flags)} pool shards are not prepared",
                unit=pool,
                shard=todo,
            )
        return complete

    # --- objects --------------------------------------------------------------------------
    def check_objects(self, complete: set[int]) -> None:
        """Every complete shard must have its objects: zarr reads a missing one as zeros."""
        names = [n for n in fmt.SAMPLE_ARRAYS if n in self.expected]
        for name in names:
            present = self.store.loc.list_keys(f"{name}/c/")
            ndim = len(self.arrays[name].shape)
            for s in sorted(complete):
                key = fmt.shard_key(name, s, ndim=ndim)
                if key not in present:
                    self.report.problem(
                        "objects", f"shard {s}: object {key} is missing", unit=SAMPLES, shard=s
                    )

    def check_partial_files(self) -> None:
        leftovers = [k for k in self.store.loc.list_keys("") if k.endswith(".partial")]
        if leftovers:
            self.report.warnings.append(
                f"{len(leftovers)} leftover temporary file(s) from an interrupted write "
                f"(e.g. {leftovers[0]}); harmless, removed by the next render of this store"
            )

    # --- pools ----------------------------------------------------------------------------
    def check_pools(self, flags: _Flags) -> bool:
        """The pool records (one per slot) and their digests; True if the pools can be used."""
        ok = True
        for pool, count in self.pools.items():
            if not flags.pools[pool].all():
                ok = False  # reported with the flags; its images cannot be checked yet
                continue
            infos = self._pool_infos(pool, count)
            if infos is None:
                ok = False
                continue
            usable = sum(1 for i in infos if i.get("usable"))
            expected = self.store.attrs.get(f"{pool}_count")
            if expected is not None and usable != expected:
                self.report.problem(
                    "pools", f"{pool}: {usable} usable records, attributes say {expected}"
                )
            if usable == 0:
                self.report.problem("pools", f"{pool}: no usable image")
                ok = False
        return ok

    def _pool_infos(self, pool: str, count: int) -> list[dict] | None:
        """The records of ``pool``, each checked (readable, its digest, JSON); None if any
        is bad (reported, with its pool shard)."""
        name, ps = f"{pool}_info", self.pool_shard
        texts = self._read_items(name, range(count), pool, ps)
        out: list[dict] = []
        bad = False
        for slot, text in enumerate(texts):
            where = f"{pool} slot {slot} (pool shard {slot // ps})"
            if text is None or not self._digest_ok(pool, name, slot, text, where):
                bad = True
                continue
            try:
                record = json.loads(str(text))
            except ValueError:
                record = None
            if not isinstance(record, dict):
                self.report.problem(
                    "pools", f"{where}: its record is not JSON", unit=pool, shard=slot // ps
                )
                bad = True
                continue
            out.append(record)
        return None if bad else out

    def _read_items(self, name: str, r: range, unit: str, shard_size: int) -> list[Any]:
        """Items ``r`` of a per-item array, shard by shard where a bulk read fails; None for
        items of a shard that cannot be read (reported)."""
        arr = self.arrays[name]
        read = decode_texts if name in self.records else list
        if not (self.text_rows and name in self.records):  # rows take 64 KB: shard by shard
            try:
                return read(arr[r.start : r.stop])
            except Exception:
                pass
        out: list[Any] = []
        for start in range(r.start, r.stop, shard_size):
            stop = min(start + shard_size, r.stop)
            try:
                out.extend(read(arr[start:stop]))
            except Exception as err:
                shard = start // shard_size
                self.report.problem(
                    "unreadable",
                    f"{name} shard {shard}: unreadable ({read_error(err)})",
                    unit=unit,
                    shard=shard,
                )
                out.extend([None] * (stop - start))
        return out

    def _digest_rows(self, unit: str) -> np.ndarray | None:
        """The digests of ``unit`` (samples or a pool), read once; None for version 1."""
        if not self.has_digests:
            return None
        rows = self.digest_rows.get(unit)
        if rows is None:
            name = fmt.DIGESTS if unit == SAMPLES else dg.pool_digests_name(unit)
            count = self.arrays[name].shape[0]
            shard_size = self.store.shard_size if unit == SAMPLES else self.pool_shard
            cols = self.arrays[name].shape[1]
            rows = np.zeros((count, cols), np.uint32)  # MISSING where a shard is unreadable
            for k, row in enumerate(self._read_items(name, range(count), unit, shard_size)):
                if row is not None:
                    rows[k] = row
            self.digest_rows[unit] = rows
        return rows

    def _digest_ok(self, unit: str, name: str, i: int, value: Any, where: str) -> bool:
        """Whether item ``i`` of array ``name`` matches its digest (version 1: always)."""
        rows = self._digest_rows(unit)
        if rows is None:
            return True
        columns = dg.SAMPLE_COLUMNS if unit == SAMPLES else dg.pool_columns(unit)
        recorded = int(rows[i, list(columns).index(name)])
        shard_size = self.store.shard_size if unit == SAMPLES else self.pool_shard
        shard = i // shard_size
        if recorded == dg.MISSING:
            message = f"{where}: no digest recorded (its digests object is lost)"
            self._digest_problem((unit, shard, ""), message)
            return False
        if dg.digest(value, columns[name]) != recorded:
            message = f"{where}: {name} does not match the digest written with it"
            self._digest_problem((unit, shard, name), message)
            return False
        return True

    def _digest_problem(self, once: tuple[str, int, str], message: str) -> None:
        """One digest problem per shard and array (per shard for lost digests) is enough."""
        if once not in self.reported:
            self.reported.add(once)
            self.report.problem("digests", message, unit=once[0], shard=once[1])

    def check_pool_data(self) -> bool:
        """Read pool shards (one slot each, or all with ``full``): present, readable, matching
        their digests, FOV binary, image black outside the FOV."""
        rng = np.random.default_rng(self.seed + 1)
        ok = True
        for pool, count in self.pools.items():
            usable = set(self.store.pool_slots(pool).tolist())
            ps = self.pool_shard
            for k in range(-(-count // ps)):
                slots = [j for j in range(k * ps, min((k + 1) * ps, count)) if j in usable]
                if not slots or not self._pool_objects_present(pool, k):
                    ok = ok and not slots
                    continue
                if not self.full:
                    slots = [slots[int(rng.integers(len(slots)))]]
                ok = all([self._check_slot(pool, j) for j in slots]) and ok
        return ok

    def _pool_objects_present(self, pool: str, k: int) -> bool:
        """Pool shard ``k`` has its objects (images, FOV, records, digests; flag aside)."""
        ok = True
        for name in (f"{pool}{suffix}" for suffix in fmt.POOL_SUFFIXES):
            if name not in self.expected or name == f"{pool}_done":
                continue
            if name not in self.listed:
                self.listed[name] = self.store.loc.list_keys(f"{name}/c/")
            key = fmt.shard_key(name, k, ndim=len(self.arrays[name].shape))
            if key not in self.listed[name]:
                self.report.problem(
                    "objects", f"{pool} shard {k}: object {key} is missing", unit=pool, shard=k
                )
                ok = False
        return ok

    def _check_slot(self, pool: str, j: int) -> bool:
        where, k = f"{pool} slot {j} (pool shard {j // self.pool_shard})", j // self.pool_shard
        try:
            image = self.arrays[pool][j]
            fov = self.arrays[f"{pool}_fov"][j] if pool == fmt.NORMALS else None
        except Exception as err:
            self.report.problem(
                "unreadable", f"{where}: unreadable ({read_error(err)})", unit=pool, shard=k
            )
            return False
        ok = self._digest_ok(pool, pool, j, image, where)
        if fov is not None:
            ok = self._digest_ok(pool, f"{pool}_fov", j, fov, where) and ok
            if not np.isin(fov, (0, 1)).all():
                self.report.problem(
                    "contract", f"{where}: FOV mask is not binary", unit=pool, shard=k
                )
            elif np.any(image[fov == 0]):
                self.report.problem(
                    "contract", f"{where}: image not black outside its FOV", unit=pool, shard=k
                )
        return ok

    # --- per-sample metadata --------------------------------------------------------------
    def check_meta(self, complete: set[int], pools_ok: bool) -> dict[str, Any]:
        """Read the per-sample metadata of the complete shards and check it: readable,
        matching its digests, consistent. Returns the arrays the sample checks need."""
        store = self.store
        n = len(store)
        out: dict[str, Any] = {}
        whole = range(n)
        for name in (fmt.TARGET, fmt.SOURCE, fmt.AREA, fmt.LESIONS, fmt.META):
            out[name] = self._read_items(name, whole, SAMPLES, store.shard_size)
        limits = self._index_limits(pools_ok)
        normal = np.zeros(n, dtype=bool)  # only the "normal" flag is kept (~1 GB otherwise)
        for s in sorted(complete):
            for i in store.shard_range(s):
                meta = self._sample_meta(out, i, s, limits)
                normal[i] = bool(meta and meta.get("normal"))
        out["normal"] = normal
        return out

    def _index_limits(self, pools_ok: bool) -> tuple[int | None, int | None]:
        if not pools_ok:
            return None, None
        n_normals = len(self.store.normals)
        if self.store.source_pool == fmt.TEXTURES:
            return n_normals, len(self.store.textures)
        return n_normals, n_normals

    def _sample_meta(
        self, out: dict[str, Any], i: int, s: int, limits: tuple[int | None, int | None]
    ) -> dict | None:
        """Check sample ``i``'s metadata (in shard ``s``); its parsed meta, or None."""
        where = f"sample {i} (shard {s})"
        problem = _in_shard(self.report, s)
        values = {
            name: out[name][i] for name in (fmt.TARGET, fmt.SOURCE, fmt.AREA, fmt.LESIONS, fmt.META)
        }
        if any(v is None for v in values.values()):
            return None  # its shard is unreadable: reported
        if not all(self._digest_ok(SAMPLES, name, i, v, where) for name, v in values.items()):
            return None
        try:
            meta = json.loads(str(values[fmt.META]))
        except ValueError:
            problem("meta", f"{where}: meta is not valid JSON")
            return None
        if not isinstance(meta, dict) or not isinstance(meta.get("lesions"), list):
            problem("meta", f"{where}: meta has no lesion list")
            return None
        _check_meta_values(self.store, meta, values, limits, where, problem)
        return meta

    # --- samples --------------------------------------------------------------------------
    def check_shard(
        self, s: int, indices: list[int], meta: dict[str, Any], normals: _Targets | None
    ) -> None:
        arrays, report = self.arrays, self.report
        problem = _in_shard(report, s)
        r = self.store.shard_range(s)
        try:
            if self.store.layout == fmt.COMPACT:  # composed from patches and normals
                pairs = [(i, *self.store.composed(i)) for i in indices]
            elif self.full:
                images = arrays[fmt.IMAGE][r.start : r.stop]
                masks = arrays[fmt.MASK][r.start : r.stop]
                pairs = [(i, images[i - r.start], masks[i - r.start]) for i in indices]
            else:
                pairs = [(i, arrays[fmt.IMAGE][i], arrays[fmt.MASK][i]) for i in indices]
        except Exception as err:
            problem("unreadable", f"shard {s}: unreadable ({read_error(err)})")
            return
        for i, image, mask in pairs:
            report.samples_checked += 1
            where = f"sample {i} (shard {s})"
            digests_ok = self._digest_ok(SAMPLES, fmt.IMAGE, i, image, where)
            digests_ok = self._digest_ok(SAMPLES, fmt.MASK, i, mask, where) and digests_ok
            if digests_ok:
                target = self._target(meta, normals, i)
                _check_sample(meta, target, i, image, mask, where, problem)

    def _target(self, meta: dict[str, Any], normals: _Targets | None, i: int) -> Any:
        """``(t, image, fov)`` of sample ``i``'s target normal, or None where it cannot be
        compared (a damaged normal is reported with its pool shard)."""
        t = meta.get(fmt.TARGET, [None] * (i + 1))[i] if meta else None
        if normals is None or t is None or not 0 <= int(t) < len(normals.view):
            return None  # an index out of range is reported with the metadata
        try:
            return (int(t), *normals.cache.get(normals.view, int(t)))
        except StoreError as err:
            k = int(normals.view.slots[int(t)]) // self.pool_shard
            self.report.problem("unreadable", str(err), unit=fmt.NORMALS, shard=k)
            return None


def _in_shard(report: VerifyReport, s: int) -> Callable[[str, str], None]:
    """``problem(kind, message)`` for problems of sample shard ``s``."""

    def problem(kind: str, message: str) -> None:
        report.problem(kind, message, unit=SAMPLES, shard=s)

    return problem


def _check_meta_values(
    store: SampleStore,
    meta: dict[str, Any],
    values: dict[str, Any],
    limits: tuple[int | None, int | None],
    where: str,
    problem: Callable[[str, str], None],
) -> None:
    """The per-sample arrays and the meta JSON agree, indices in range, boxes in the image."""
    n_normals, n_sources = limits
    t, src = int(values[fmt.TARGET]), int(values[fmt.SOURCE])
    if n_normals is not None and not 0 <= t < n_normals:
        problem("meta", f"{where}: target {t} out of range (0..{n_normals - 1})")
    if n_sources is not None and not 0 <= src < n_sources:
        problem("meta", f"{where}: source {src} out of range (0..{n_sources - 1})")
    lesions = meta["lesions"]
    if int(values[fmt.LESIONS]) != len(lesions):
        problem(
            "meta",
            f"{where}: lesions array says {int(values[fmt.LESIONS])}, meta lists {len(lesions)}",
        )
    if int(values[fmt.AREA]) != meta.get("area"):
        problem("meta", f"{where}: area array {int(values[fmt.AREA])} != meta {meta.get('area')}")
    if bool(meta.get("normal")) != (len(lesions) == 0):
        problem("meta", f"{where}: 'normal' disagrees with the lesion list")
    for lesion in lesions:
        for key in ("target_box", "source_box"):
            box = lesion.get(key) if isinstance(lesion, dict) else None
            if not (isinstance(box, list) and len(box) == 4):
                problem("meta", f"{where}: lesion {key} missing or malformed")
                continue
            y0, x0, y1, x1 = box
            in_target = key == "target_box" or store.source_pool == fmt.NORMALS
            limit = store.size if in_target else None
            if not (0 <= y0 < y1 and 0 <= x0 < x1) or (
                limit is not None and (y1 > limit or x1 > limit)
            ):
                problem("meta", f"{where}: lesion {key} {box} outside the image")


def _check_sample(
    meta: dict[str, Any],
    target: tuple[int, np.ndarray, np.ndarray] | None,
    i: int,
    image: np.ndarray,
    mask: np.ndarray,
    where: str,
    problem: Callable[[str, str], None],
) -> None:
    """The sample contract: binary mask inside the target's FOV, image equal to the target
    outside the mask, an empty mask for a normal sample, the area as recorded."""
    if not np.isin(mask, (0, 1)).all():
        problem("contract", f"{where}: mask has values other than 0 and 1")
        return
    area = int(np.count_nonzero(mask))
    recorded = meta.get(fmt.AREA, [None] * (i + 1))[i] if meta else None
    if recorded is not None and int(recorded) != area:
        problem("contract", f"{where}: mask has {area} pixels, metadata says {recorded}")
    if meta and meta["normal"][i] and area:
        problem("contract", f"{where}: a normal sample with a non-empty mask")
    if target is None:
        return
    t, normal, fov = target
    if np.any(mask & (fov == 0)):
        problem("contract", f"{where}: mask reaches outside the target's FOV")
    outside = mask == 0
    if not np.array_equal(image[outside], normal[outside]):
        problem("contract", f"{where}: image differs from its target normal {t} outside the mask")
