"""Checking a store's integrity and contracts: ``anomalygen verify STORE [--full]``.

What is checked (each failure is one line in :attr:`VerifyReport.problems`):

- layout: every array the format names is there with the right shape, dtype, chunks and shards;
- completion: every shard's and every pool shard's flag is set, and every complete shard has
  its objects (a missing shard object would silently read as zeros);
- readability: every shard's index and at least one of its chunks decode (CRC32C-checked), so
  a truncated or corrupted shard file is caught; ``full`` decodes every chunk of every shard;
- contracts, on every sample read: the mask is binary and inside the target's FOV, the image
  equals its target normal wherever the mask is 0, a "normal" sample has an empty mask;
- metadata, for all samples: indices in range, JSON parses, lesion counts and areas agree.

Without ``full``, one random sample per shard plus ``samples`` more are read; with ``full``, all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anomalygen.errors import StoreError, one_line
from anomalygen.progress import Progress
from anomalygen.render.cache import PoolCache
from anomalygen.store import format as fmt
from anomalygen.store.reader import NormalsView, SampleStore, open_store

__all__ = ["VerifyReport", "verify_store"]

#: Problems of one kind listed before the rest are summarised (ours: a screenful).
MAX_LISTED = 20
#: Memory for the normals that samples are compared with (ours: about 80 normals at 768 px,
#: plenty when verify walks the samples shard by shard).
VERIFY_CACHE_BYTES = 200 << 20


@dataclass
class VerifyReport:
    url: str
    full: bool
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    samples_checked: int = 0
    shards_checked: int = 0
    _counts: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, kind: str, message: str) -> None:
        """Record a problem; after ``MAX_LISTED`` of one kind, only count them."""
        count = self._counts.get(kind, 0) + 1
        self._counts[kind] = count
        if count <= MAX_LISTED:
            self.problems.append(message)

    def finish(self) -> None:
        for kind, count in self._counts.items():
            if count > MAX_LISTED:
                self.problems.append(f"... and {count - MAX_LISTED} more problems of kind {kind!r}")

    def summary(self) -> str:
        mode = "full check" if self.full else "spot check"
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        return (
            f"{self.url}: {verdict} ({mode}: {self.shards_checked} shards, "
            f"{self.samples_checked} samples read)"
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
) -> VerifyReport:
    """Check the store at ``url``; see the module docstring. Raises :class:`StoreError` only if
    the store cannot be opened at all (missing, not an anomalygen store, unknown version)."""
    store = open_store(url, storage_options)
    report = VerifyReport(url=store.url, full=full)
    arrays = store.arrays()
    shard_size = store.shard_size

    _check_layout(store, arrays, report)
    if not report.ok:  # reading mis-shaped arrays would only add noise
        report.finish()
        return report

    complete = set(_check_flags(store, arrays, report))
    _check_objects(store, report, complete)
    _check_partial_files(store, report)
    pools_ok = _check_pools(store, arrays, report)
    if pools_ok:
        pools_ok = _check_pool_data(store, arrays, report, full, seed)
    meta = _check_meta(store, arrays, report, pools_ok)

    rng = np.random.default_rng(seed)
    normals = _Targets(store.normals, PoolCache(VERIFY_CACHE_BYTES)) if pools_ok else None
    shards = sorted(complete)
    extra: dict[int, list[int]] = {}
    if not full and shards and samples > 0:
        pool = np.concatenate([np.asarray(store.shard_range(s)) for s in shards])
        for i in rng.choice(pool, size=min(samples, len(pool)), replace=False):
            extra.setdefault(int(i) // shard_size, []).append(int(i))
    with Progress(
        len(shards),
        description="verify",
        unit="shards",
        enabled=progress,
        stream=progress_stream,
    ) as bar:
        for s in shards:
            r = store.shard_range(s)
            if full:
                indices = list(r)
            else:
                indices = sorted({int(rng.integers(r.start, r.stop)), *extra.get(s, [])})
            _check_shard(store, arrays, report, s, indices, full, meta, normals)
            report.shards_checked += 1
            bar.advance()
    report.finish()
    return report


# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Targets:
    """The normals that samples are checked against, read through a small cache."""

    view: NormalsView
    cache: PoolCache


def _check_layout(store: SampleStore, arrays: Any, report: VerifyReport) -> None:
    n, size = len(store), store.size
    k = min(store.shard_size, max(n, 1))  # create_store clips shards to a short array
    pools = store.attrs.get("pools", {})
    expected: dict[str, tuple[tuple, str, tuple, tuple | None]] = {
        fmt.IMAGE: ((n, size, size, 3), "uint8", (1, size, size, 3), (k, size, size, 3)),
        fmt.MASK: ((n, size, size), "uint8", (1, size, size), (k, size, size)),
        fmt.TARGET: ((n,), "int32", (k,), None),
        fmt.SOURCE: ((n,), "int32", (k,), None),
        fmt.AREA: ((n,), "int32", (k,), None),
        fmt.LESIONS: ((n,), "uint16", (k,), None),
        fmt.META: ((n,), None, (k,), None),
        fmt.DONE: ((store.n_shards,), "uint8", (1,), None),
    }
    ps = int(store.attrs.get("pool_shard_size", fmt.POOL_SHARD_SIZE))
    for pool, count in pools.items():
        c = min(ps, max(count, 1))
        expected[pool] = ((count, size, size, 3), "uint8", (1, size, size, 3), (c, size, size, 3))
        if pool == fmt.NORMALS:
            expected[f"{pool}_fov"] = (
                (count, size, size),
                "uint8",
                (1, size, size),
                (c, size, size),
            )
        expected[f"{pool}_info"] = ((count,), None, (c,), None)
        expected[f"{pool}_done"] = ((-(-count // ps),), "uint8", (1,), None)
    if fmt.NORMALS not in pools:
        report.problem("layout", "attributes: no 'normals' pool listed")
    for name, (shape, dtype, chunks, shards) in expected.items():
        try:
            arr = arrays[name]
        except StoreError:
            report.problem("layout", f"array {name!r} is missing")
            continue
        if tuple(arr.shape) != shape:
            report.problem("layout", f"array {name!r}: shape {arr.shape}, expected {shape}")
        if dtype is not None and str(arr.dtype) != dtype:
            report.problem("layout", f"array {name!r}: dtype {arr.dtype}, expected {dtype}")
        if tuple(arr.chunks) != chunks:
            report.problem("layout", f"array {name!r}: chunks {arr.chunks}, expected {chunks}")
        if shards is not None and tuple(arr.shards or ()) != shards:
            report.problem("layout", f"array {name!r}: shards {arr.shards}, expected {shards}")


def _check_flags(store: SampleStore, arrays: Any, report: VerifyReport) -> list[int]:
    done = arrays[fmt.DONE][:]
    complete = [int(s) for s in np.flatnonzero(done == 1)]
    odd = np.flatnonzero((done != 0) & (done != 1))
    if len(odd):
        report.problem("flags", f"completion flags with values other than 0/1 at shards {odd[:5]}")
    missing = [s for s in range(store.n_shards) if done[s] != 1]
    if missing:
        report.problem(
            "flags",
            f"{len(missing)} of {store.n_shards} shards are not complete (first: shard "
            f"{missing[0]}, samples {store.shard_range(missing[0]).start}-"
            f"{store.shard_range(missing[0]).stop - 1}); resume the render",
        )
    for pool, count in store.attrs.get("pools", {}).items():
        flags = arrays[f"{pool}_done"][:]
        if count and not flags.all():
            report.problem(
                "flags",
                f"{pool}: {int((flags == 0).sum())} of {len(flags)} pool shards are not prepared",
            )
    return complete


def _check_objects(store: SampleStore, report: VerifyReport, complete: set[int]) -> None:
    """Every complete shard must have its objects: zarr reads a missing one as zeros."""
    for name in (fmt.IMAGE, fmt.MASK):
        present = store.loc.list_keys(f"{name}/c/")
        for s in sorted(complete):
            key = fmt.shard_key(name, s, ndim=4 if name == fmt.IMAGE else 3)
            if key not in present:
                report.problem("objects", f"shard {s}: object {key} is missing")
    for name in (fmt.TARGET, fmt.SOURCE, fmt.AREA, fmt.LESIONS, fmt.META):
        present = store.loc.list_keys(f"{name}/c/")
        for s in sorted(complete):
            key = fmt.shard_key(name, s, ndim=1)
            if key not in present:
                report.problem("objects", f"shard {s}: object {key} is missing")


def _check_partial_files(store: SampleStore, report: VerifyReport) -> None:
    leftovers = [k for k in store.loc.list_keys("") if k.endswith(".partial")]
    if leftovers:
        report.warnings.append(
            f"{len(leftovers)} leftover temporary file(s) from an interrupted write "
            f"(e.g. {leftovers[0]}); harmless, removed by the next render of this store"
        )


def _check_pools(store: SampleStore, arrays: Any, report: VerifyReport) -> bool:
    ok = True
    for pool, count in store.attrs.get("pools", {}).items():
        try:
            infos = store.pool_info(pool)
        except Exception as err:
            report.problem("pools", f"{pool}_info: unreadable ({one_line(err)})")
            ok = False
            continue
        if not arrays[f"{pool}_done"][:].all():
            ok = False  # reported with the flags; its images cannot be checked yet
            continue
        usable = sum(1 for i in infos if i.get("usable"))
        if len(infos) != count:
            report.problem("pools", f"{pool}: {len(infos)} records for {count} slots")
        expected = store.attrs.get(f"{pool}_count")
        if expected is not None and usable != expected:
            report.problem("pools", f"{pool}: {usable} usable records, attributes say {expected}")
        if usable == 0:
            report.problem("pools", f"{pool}: no usable image")
            ok = False
    return ok


def _check_pool_data(
    store: SampleStore, arrays: Any, report: VerifyReport, full: bool, seed: int
) -> bool:
    """Read pool shards (one slot each, or all with ``full``): readable, FOV binary, image
    black outside the FOV."""
    rng = np.random.default_rng(seed + 1)
    ps = int(store.attrs.get("pool_shard_size", fmt.POOL_SHARD_SIZE))
    ok = True
    for pool, count in store.attrs.get("pools", {}).items():
        usable = set(store.pool_slots(pool).tolist())
        present = store.loc.list_keys(f"{pool}/c/")
        for k in range(-(-count // ps)):
            lo, hi = k * ps, min((k + 1) * ps, count)
            slots = [j for j in range(lo, hi) if j in usable]
            if not slots:
                continue
            key = fmt.shard_key(pool, k, ndim=4)
            if key not in present:
                report.problem("objects", f"{pool} shard {k}: object {key} is missing")
                ok = False
                continue
            if not full:
                slots = [slots[int(rng.integers(len(slots)))]]
            for j in slots:
                try:
                    image = arrays[pool][j]
                    fov = arrays[f"{pool}_fov"][j] if pool == fmt.NORMALS else None
                except Exception as err:
                    report.problem("unreadable", f"{pool} slot {j}: unreadable ({one_line(err)})")
                    ok = False
                    continue
                if fov is None:
                    continue
                if not np.isin(fov, (0, 1)).all():
                    report.problem("contract", f"{pool} slot {j}: FOV mask is not binary")
                elif np.any(image[fov == 0]):
                    report.problem("contract", f"{pool} slot {j}: image not black outside its FOV")
    return ok


def _check_meta(
    store: SampleStore, arrays: Any, report: VerifyReport, pools_ok: bool
) -> dict[str, Any]:
    """Read the per-sample metadata of all samples and check it is consistent."""
    out: dict[str, Any] = {}
    try:
        for name in (fmt.TARGET, fmt.SOURCE, fmt.AREA, fmt.LESIONS):
            out[name] = arrays[name][:]
        metas = arrays[fmt.META][:]
    except Exception as err:
        report.problem("meta", f"per-sample metadata unreadable ({one_line(err)})")
        return {}
    done = arrays[fmt.DONE][:]
    n_normals = len(store.normals) if pools_ok else None
    n_sources = None
    if pools_ok:
        n_sources = len(store.textures) if store.source_pool == fmt.TEXTURES else n_normals
    size = store.size
    # Only the "normal" flag is needed later; keeping every parsed dict would cost ~1 GB at
    # 200,000 samples.
    normal = np.zeros(len(store), dtype=bool)
    for s in np.flatnonzero(done == 1):
        for i in store.shard_range(int(s)):
            where = f"sample {i} (shard {s})"
            try:
                meta = json.loads(str(metas[i]))
            except ValueError:
                report.problem("meta", f"{where}: meta is not valid JSON")
                continue
            normal[i] = bool(meta.get("normal"))
            t, src = int(out[fmt.TARGET][i]), int(out[fmt.SOURCE][i])
            if n_normals is not None and not 0 <= t < n_normals:
                report.problem("meta", f"{where}: target {t} out of range (0..{n_normals - 1})")
            if n_sources is not None and not 0 <= src < n_sources:
                report.problem("meta", f"{where}: source {src} out of range (0..{n_sources - 1})")
            lesions = meta.get("lesions")
            if not isinstance(lesions, list):
                report.problem("meta", f"{where}: meta has no lesion list")
                continue
            if int(out[fmt.LESIONS][i]) != len(lesions):
                report.problem(
                    "meta",
                    f"{where}: lesions array says {int(out[fmt.LESIONS][i])}, meta lists "
                    f"{len(lesions)}",
                )
            if int(out[fmt.AREA][i]) != meta.get("area"):
                area = int(out[fmt.AREA][i])
                report.problem("meta", f"{where}: area array {area} != meta {meta.get('area')}")
            if bool(meta.get("normal")) != (len(lesions) == 0):
                report.problem("meta", f"{where}: 'normal' disagrees with the lesion list")
            for lesion in lesions:
                for key in ("target_box", "source_box"):
                    box = lesion.get(key)
                    if not (isinstance(box, list) and len(box) == 4):
                        report.problem("meta", f"{where}: lesion {key} missing or malformed")
                        continue
                    y0, x0, y1, x1 = box
                    in_target = key == "target_box" or store.source_pool == fmt.NORMALS
                    limit = size if in_target else None
                    if not (0 <= y0 < y1 and 0 <= x0 < x1) or (
                        limit is not None and (y1 > limit or x1 > limit)
                    ):
                        report.problem("meta", f"{where}: lesion {key} {box} outside the image")
    out["normal"] = normal
    return out


def _check_shard(
    store: SampleStore,
    arrays: Any,
    report: VerifyReport,
    s: int,
    indices: list[int],
    full: bool,
    meta: dict[str, Any],
    normals: _Targets | None,
) -> None:
    r = store.shard_range(s)
    try:
        if full:
            images = arrays[fmt.IMAGE][r.start : r.stop]
            masks = arrays[fmt.MASK][r.start : r.stop]
            pairs = [(i, images[i - r.start], masks[i - r.start]) for i in indices]
        else:
            pairs = [(i, arrays[fmt.IMAGE][i], arrays[fmt.MASK][i]) for i in indices]
    except Exception as err:
        report.problem("unreadable", f"shard {s}: unreadable ({one_line(err)})")
        return
    for i, image, mask in pairs:
        report.samples_checked += 1
        where = f"sample {i} (shard {s})"
        if not np.isin(mask, (0, 1)).all():
            report.problem("contract", f"{where}: mask has values other than 0 and 1")
            continue
        area = int(np.count_nonzero(mask))
        if meta and int(meta[fmt.AREA][i]) != area:
            report.problem(
                "contract", f"{where}: mask has {area} pixels, metadata says {meta[fmt.AREA][i]}"
            )
        if meta and meta["normal"][i] and area:
            report.problem("contract", f"{where}: a normal sample with a non-empty mask")
        if normals is None or not meta:
            continue
        t = int(meta[fmt.TARGET][i])
        if not 0 <= t < len(normals.view):
            continue  # reported with the metadata
        try:
            target, fov = normals.cache.get(normals.view, t)
        except Exception as err:
            report.problem("unreadable", f"normal {t}: unreadable ({one_line(err)})")
            continue
        if np.any(mask & (fov == 0)):
            report.problem("contract", f"{where}: mask reaches outside the target's FOV")
        outside = mask == 0
        if not np.array_equal(image[outside], target[outside]):
            report.problem(
                "contract", f"{where}: image differs from its target normal {t} outside the mask"
            )
