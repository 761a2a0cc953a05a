"""Reading items from a store's arrays and checking them on every read.

zarr reads a lost object as zeros. :class:`CheckedArrays` reads items through zarr and checks
each one: in a version-2 store against the digest written with it (``anomalygen.store.digests``;
the digests of a shard are read once per process and kept, 28 bytes a sample), in a version-1
store, which has no digests, by checking once per process that the shard's objects exist. A
damaged item raises one :class:`StoreError` line naming the store, the array, the item and its
shard, and how to repair it; so does an object that cannot be decoded (its CRC32C fails).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from anomalygen.errors import StoreError, one_line
from anomalygen.store.access import access_error
from anomalygen.store.digests import (
    DIGESTS,
    MISSING,
    SAMPLE_COLUMNS,
    digest,
    pool_columns,
    pool_digests_name,
)
from anomalygen.store.format import DIGESTS_SINCE, IMAGE, MASK, PATCHES, shard_key
from anomalygen.store.location import StoreLocation
from anomalygen.store.text import decode_texts

__all__ = ["TEXT_SHARDS_KEPT", "CheckedArrays", "StoreArrays", "read_error", "repair_hint"]

#: Shards of decoded records (``meta``, ``<pool>_info``) a reader keeps: 64 KB each at 64
#: samples a shard of ours.
TEXT_SHARDS_KEPT = 8


def read_error(err: BaseException) -> str:
    """Why zarr could not read an object, in one line (zarr's CRC32C message shows raw bytes)."""
    reason = one_line(err)
    if "checksum do not match" in reason:
        return "a chunk's CRC32C checksum fails: its bytes are corrupted"
    return reason


def repair_hint(loc: StoreLocation) -> str:
    """What a damaged-store message ends with."""
    return f"`anomalygen verify {loc} --repair` renders the damaged shards again"


class StoreArrays:
    """The zarr group and arrays, opened in one process."""

    def __init__(self, loc: StoreLocation) -> None:
        import zarr

        try:
            # Not the consolidated metadata (for other readers: xarray): each array's own
            # zarr.json, so that a lost array is missing here, not read as fill values.
            store = loc.zarr_store(read_only=True)
            self.group = zarr.open_group(store=store, mode="r", use_consolidated=False)
        except Exception as err:
            if isinstance(err, StoreError):
                raise
            if isinstance(err, FileNotFoundError) or type(err).__name__ in (
                "GroupNotFoundError",
                "NodeNotFoundError",
            ):
                raise StoreError(f"{loc}: no store there") from None
            raise access_error(loc, err, "open the store") from None
        self._cache: dict[str, Any] = {}
        self.loc = loc

    def __getitem__(self, name: str) -> Any:
        arr = self._cache.get(name)
        if arr is None:
            try:
                arr = self.group[name]
            except KeyError:
                raise StoreError(f"{self.loc}: array {name!r} is missing") from None
            self._cache[name] = arr
        return arr


class _Unit:
    """Where items live: the samples (``digests``, shards of ``shard_size``) or a pool."""

    def __init__(self, digests: str, columns: dict[str, str], shard_size: int, what: str):
        self.digests = digests
        self.columns = columns
        self.shard_size = shard_size
        self.what = what  # "sample" or "normals slot"

    def where(self, i: int) -> str:
        shard = "shard" if self.what == "sample" else "pool shard"
        return f"{self.what} {i} ({shard} {i // self.shard_size})"


class CheckedArrays:
    """Items of one store, read in this process and checked (see the module docstring).

    ``version`` is the store's format version; ``shard_size`` and ``pool_shard_size`` its
    attributes of those names.
    """

    def __init__(
        self,
        arrays: StoreArrays,
        *,
        version: int,
        shard_size: int,
        pool_shard_size: int,
        compact: bool = False,
    ) -> None:
        self.arrays = arrays
        self.loc = arrays.loc
        self.has_digests = version >= DIGESTS_SINCE
        #: A compact store: images and masks are composed from ``patches`` (and checked here).
        self.compact = compact
        self._units = {"samples": _Unit(DIGESTS, SAMPLE_COLUMNS, shard_size, "sample")}
        self._pool_shard_size = pool_shard_size
        self._digests: dict[tuple[str, int], np.ndarray] = {}  # (digests array, shard) -> rows
        self._present: set[str] = set()  # version 1: objects seen to exist
        self._texts: OrderedDict[tuple[str, int], list[str]] = OrderedDict()

    def unit(self, pool: str | None) -> _Unit:
        key = pool or "samples"
        if key not in self._units:
            self._units[key] = _Unit(
                pool_digests_name(key), pool_columns(key), self._pool_shard_size, f"{key} slot"
            )
        return self._units[key]

    # --- reading --------------------------------------------------------------------------
    def item(self, name: str, i: int, pool: str | None = None) -> Any:
        """Item ``i`` of array ``name`` (a sample's, or a slot's of ``pool``), checked."""
        unit = self.unit(pool)
        if unit.columns.get(name) == "text":
            value = self._text_items(unit, name, range(i, i + 1))[0]
        else:
            value = self._read(unit, name, i, slice(i, i + 1))[0]
        self._check(unit, name, range(i, i + 1), [value])
        return value

    def items(self, name: str, r: range, pool: str | None = None) -> Any:
        """Items ``r`` of array ``name``, read at once and checked."""
        unit = self.unit(pool)
        if unit.columns.get(name) == "text":
            values: Any = self._text_items(unit, name, r)
        else:
            values = self._read(unit, name, r.start, slice(r.start, r.stop))
        self._check(unit, name, r, values)
        return values

    def _text_items(self, unit: _Unit, name: str, r: range) -> list[str]:
        """Records ``r``, decoded a shard at a time (a record row is one chunk per shard)."""
        out: list[str] = []
        i, size = r.start, unit.shard_size
        while i < r.stop:
            shard = i // size
            stop = min((shard + 1) * size, r.stop)
            out.extend(self._shard_texts(unit, name, shard)[i - shard * size : stop - shard * size])
            i = stop
        return out

    def _shard_texts(self, unit: _Unit, name: str, shard: int) -> list[str]:
        """The records of one shard, decoded; the last TEXT_SHARDS_KEPT are kept (``meta(i)``
        of consecutive samples would decode the same chunk of mostly padding each time)."""
        key = (name, shard)
        texts = self._texts.get(key)
        if texts is not None:
            self._texts.move_to_end(key)
            return texts
        start = shard * unit.shard_size
        stop = min(start + unit.shard_size, self.arrays[name].shape[0])
        texts = list(self._read(unit, name, start, slice(start, stop)))
        self._texts[key] = texts
        while len(self._texts) > TEXT_SHARDS_KEPT:
            self._texts.popitem(last=False)
        return texts

    def picked(self, name: str, indices: np.ndarray, pool: str | None = None) -> Any:
        """Items ``indices`` (any order) of array ``name``, read at once and each checked."""
        unit = self.unit(pool)
        first = int(indices[0]) if len(indices) else 0
        try:
            values = self.arrays[name].oindex[indices]
        except StoreError:
            raise
        except Exception as err:
            raise self._damaged(unit, name, first, f"cannot be read ({read_error(err)})") from None
        values = self._decoded(unit, name, values)
        for i, value in zip(indices, values, strict=True):
            self._check(unit, name, range(int(i), int(i) + 1), [value])
        return values

    def whole(self, name: str) -> Any:
        """All of array ``name`` in one read (to be checked shard by shard with
        :meth:`check`); a read error is one StoreError line."""
        return self._read(self.unit(None), name, 0, slice(None))

    def check(self, name: str, r: range, values: Any, pool: str | None = None) -> None:
        """Check items ``r`` of array ``name``, read elsewhere, against their digests."""
        self._check(self.unit(pool), name, r, values)

    def _read(self, unit: _Unit, name: str, i: int, sel: slice) -> Any:
        try:
            values = self.arrays[name][sel]
        except StoreError:
            raise
        except Exception as err:  # a CRC32C that fails, a truncated shard index, ...
            raise self._damaged(unit, name, i, f"cannot be read ({read_error(err)})") from None
        return self._decoded(unit, name, values)

    @staticmethod
    def _decoded(unit: _Unit, name: str, values: Any) -> Any:
        """JSON records as texts (``anomalygen.store.text``: rows or strings), else as read."""
        return decode_texts(values) if unit.columns.get(name) == "text" else values

    # --- checking -------------------------------------------------------------------------
    def _check(self, unit: _Unit, name: str, r: range, values: Sequence[Any]) -> None:
        if not self.has_digests:
            self._check_present(unit, name, r)
            return
        column = list(unit.columns).index(name)
        kind = unit.columns[name]
        for i, value in zip(r, values, strict=True):
            recorded = int(self._digest_rows(unit, i)[i % unit.shard_size, column])
            if recorded == MISSING:
                key = self._key(unit.digests, i // unit.shard_size)
                raise self._damaged(unit, name, i, f"has no digest (object {key} is lost)")
            if digest(value, kind) != recorded:
                composed = self.compact and name in (IMAGE, MASK)
                state = self.object_state(PATCHES if composed else name, i // unit.shard_size)
                how = " composed from its patches and target normal" if composed else ""
                detail = f"{how} does not match the digest written with it ({state})"
                raise self._damaged(unit, name, i, detail.lstrip())

    def _digest_rows(self, unit: _Unit, i: int) -> np.ndarray:
        shard = i // unit.shard_size
        rows = self._digests.get((unit.digests, shard))
        if rows is None:
            start = shard * unit.shard_size
            arr = self.arrays[unit.digests]
            sel = slice(start, min(start + unit.shard_size, arr.shape[0]))
            rows = np.asarray(self._read(unit, unit.digests, i, sel))
            self._digests[(unit.digests, shard)] = rows
        return rows

    def _check_present(self, unit: _Unit, name: str, r: range) -> None:
        """Version 1: the shard objects of ``name`` holding items ``r`` must exist."""
        for i in range(r.start, r.stop, unit.shard_size):
            key = self._key(name, i // unit.shard_size)
            if key in self._present:
                continue
            if not self._exists(key):
                detail = f"is missing its object {key} (it would read as zeros)"
                raise self._damaged(unit, name, i, detail)
            self._present.add(key)

    def _key(self, name: str, shard: int) -> str:
        return shard_key(name, shard, ndim=len(self.arrays[name].shape))

    def _exists(self, key: str) -> bool:
        try:
            return self.loc.exists(key)
        except Exception as err:
            raise access_error(self.loc, err, f"read {key}") from None

    def object_state(self, name: str, shard: int) -> str:
        """``"object K is missing"`` or ``"object K holds other data"``: the shard object of
        array ``name`` that an item failed to match."""
        key = self._key(name, shard)
        return f"object {key} {'is missing' if not self._exists(key) else 'holds other data'}"

    def damaged(self, name: str, i: int, detail: str) -> StoreError:
        """The error for sample ``i``, damaged in array ``name`` as ``detail`` says."""
        return self._damaged(self.unit(None), name, i, detail)

    def _damaged(self, unit: _Unit, name: str, i: int, detail: str) -> StoreError:
        return StoreError(
            f"{self.loc}: {unit.where(i)} is damaged: array {name!r} {detail}; "
            f"{repair_hint(self.loc)}"
        )
