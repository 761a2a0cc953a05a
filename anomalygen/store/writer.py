"""Writing a store: creating it (or checking that a resumed render matches it), and writing
whole shards.

Every array is sharded with one sample per inner chunk and one writer per shard: a writer
buffers a whole shard and writes it with one assignment per array (zarr rewrites a whole shard
on every partial write, so two writers of one shard would lose data). Each shard's completion
flag is its own object, written after the shard's data. Only the coordinating process creates
the store and writes the group attributes.
"""

from __future__ import annotations

import json
import time
import uuid
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from anomalygen.errors import StoreError, one_line
from anomalygen.store.digests import (
    ALGORITHM,
    MISSING,
    SAMPLE_COLUMNS,
    item_digests,
    pool_columns,
    pool_digests_name,
)
from anomalygen.store.format import (
    AREA,
    BOXES,
    COMPACT,
    DIGESTS,
    DIGESTS_SINCE,
    DONE,
    FORMAT_NAME,
    FORMAT_VERSION,
    FULL,
    IMAGE,
    LESIONS,
    MASK,
    META,
    NORMALS,
    PATCH_BYTES,
    PATCHES,
    POOL_CODEC,
    POOL_SHARD_SIZE,
    SOURCE,
    TARGET,
    TEXT_ROWS_SINCE,
    RenderSpec,
    compressors,
    layout_of,
    parameter_differences,
    shard_key,
)
from anomalygen.store.location import StoreLocation
from anomalygen.store.patches import box_rows, chunk_bytes, encode, row_bytes, shard_row
from anomalygen.store.reader import read_attrs
from anomalygen.store.text import INFO_BYTES, encode_texts, meta_bytes

__all__ = [
    "StoreWriter",
    "create_store",
    "initial_attrs",
    "now",
    "open_or_create",
    "pool_items",
    "refuse_escaping_links",
    "remove_partial_files",
    "sample_items",
]


def now() -> str:
    """A UTC timestamp as the ``created`` and ``completed`` attributes hold it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def initial_attrs(spec: RenderSpec) -> dict[str, Any]:
    """The group attributes of a new store for ``spec`` (phase 1 fills in the rest)."""
    from anomalygen import __version__

    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "anomalygen_version": __version__,
        "created": now(),
        # Tells this store apart from one started over in its place (--overwrite): a Dask task
        # of an abandoned render checks it before writing (anomalygen.render.dask).
        "store_id": uuid.uuid4().hex,
        **spec.to_attrs(),
        "pools": {name: len(listing.files) for name, listing in spec.pools.items()},
        "skipped": [],
    }


def open_or_create(
    loc: StoreLocation, spec: RenderSpec, attrs: dict[str, Any], *, overwrite: bool
) -> str | None:
    """Create the store with ``attrs``, or check that the one there was started with the same
    parameters (then resume it). Returns the store's ``store_id`` (None for a store written
    before it existed). The caller holds the render lock."""
    refuse_escaping_links(loc)
    existing = read_attrs(loc)
    if existing and not overwrite:
        diffs = parameter_differences(existing, spec.to_attrs())
        if diffs:
            more = f"; and {len(diffs) - 4} more" if len(diffs) > 4 else ""
            shown = "; ".join(diffs[:4]) + more
            # Stores from before compact became the default are full: say the one flag to add.
            was_full = layout_of(existing) == FULL != layout_of(spec.to_attrs())
            hint = " (for this store: --layout full; compact is the default)" if was_full else ""
            raise StoreError(
                f"{loc}: this store was rendered with different parameters ({shown}); "
                f"rerun with the same ones to resume{hint}, or add --overwrite to start over"
            )
        remove_partial_files(loc)  # left by a writer killed mid-write
        return existing.get("store_id")
    if existing is None and not loc.is_empty():
        raise StoreError(
            f"{loc}: exists and is not an anomalygen store; choose another --out "
            "(nothing was changed there)"
        )
    # New store, an overwrite, or a creation that was interrupted before its attributes.
    loc.clear()
    pools = {name: len(listing.files) for name, listing in spec.pools.items()}
    try:
        create_store(
            loc, attrs, n=spec.n, size=spec.size, shard_size=spec.shard_size, codec=spec.codec,
            pools=pools,
        )  # fmt: skip
    except OSError as err:
        raise StoreError(f"{loc}: cannot create the store ({one_line(err)})") from None
    return attrs["store_id"]


def refuse_escaping_links(loc: StoreLocation) -> None:
    """Refuse a local store with a link inside that leads out of its folder (``image/c`` linked
    elsewhere): resuming would write shards there, and clearing it (``--overwrite``) would
    follow it."""
    link = loc.escaping_link()
    if link is not None:
        key, target = link
        raise StoreError(
            f"{loc}: {key} is a link to {target}, outside the store; a render never writes "
            "through such a link: remove it (or copy the store without links) and run again"
        )


def remove_partial_files(loc: StoreLocation) -> int:
    """Delete the temporary ``*.partial`` files that zarr's local store leaves behind when a
    writer is killed mid-write (it writes to a temporary name, then renames; object stores
    write whole objects and leave none). Call with the render lock held. Returns how many."""
    if loc.local_path is None:
        return 0
    partial = [key for key in loc.list_keys() if key.endswith(".partial")]
    for key in partial:
        loc.delete(key)
    return len(partial)


# ------------------------------------------------------------------------------------------
# Creating the arrays
# ------------------------------------------------------------------------------------------


def create_store(
    loc: StoreLocation,
    attrs: dict[str, Any],
    *,
    n: int,
    size: int,
    shard_size: int,
    codec: str,
    pools: dict[str, int],
) -> None:
    """Create the group, its arrays (empty) and attributes ``attrs`` at ``loc``.

    ``pools`` maps a pool name (``normals``, ``textures``) to its number of slots. The layout
    and the generator's most lesions (the width of the ``meta`` rows, the rows of ``boxes``)
    are read from ``attrs``. The caller holds the render lock and has emptied ``loc``.
    """
    import zarr

    # Not mode "w": zarr would delete and recreate the folder, and with it the render's lock
    # (held on the folder itself).
    group = zarr.open_group(store=loc.zarr_store(read_only=False), mode="w-")
    comp = compressors(codec)
    max_lesions = int(attrs["generator"]["lesions"][1])
    if layout_of(attrs) == COMPACT:
        _compact(group, n, size, shard_size, comp, box_rows(max_lesions))
    else:
        _images(group, IMAGE, (n, size, size, 3), shard_size, comp, ("sample", "y", "x", "rgb"))
        _images(group, MASK, (n, size, size), shard_size, comp, ("sample", "y", "x"))
    meta_width = meta_bytes(max_lesions)
    for name, dtype in ((TARGET, "int32"), (SOURCE, "int32"), (AREA, "int32"), (LESIONS, "uint16")):
        _per_item(group, name, n, shard_size, dtype, comp, "sample")
    _records(group, META, (n, meta_width), shard_size, "sample")
    _digests(group, DIGESTS, n, shard_size, SAMPLE_COLUMNS, "sample")
    _flags(group, DONE, -(-n // shard_size), "shard")
    raw = compressors(POOL_CODEC)
    for pool, count in pools.items():
        dim = pool[:-1]  # "normal", "texture"
        _images(group, pool, (count, size, size, 3), POOL_SHARD_SIZE, raw, (dim, "y", "x", "rgb"))
        if pool == NORMALS:
            fov = (count, size, size)
            _images(group, f"{pool}_fov", fov, POOL_SHARD_SIZE, raw, (dim, "y", "x"))
        _records(group, f"{pool}_info", (count, INFO_BYTES), POOL_SHARD_SIZE, dim)
        columns = pool_columns(pool)
        _digests(group, pool_digests_name(pool), count, POOL_SHARD_SIZE, columns, dim)
        _flags(group, f"{pool}_done", -(-count // POOL_SHARD_SIZE), f"{dim}_shard")
    group.update_attributes(attrs)  # one write (attrs.update writes once per key)
    consolidate(loc)


def consolidate(loc: StoreLocation) -> None:
    """Write the arrays' metadata into the group's ``zarr.json`` (consolidated metadata), so
    that xarray and zarr open the store in one read. The arrays' metadata never change after
    creation, and attribute updates keep it."""
    import zarr

    with warnings.catch_warnings():  # "not part of the Zarr format 3 specification" (yet)
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(loc.zarr_store(read_only=False))


def _compact(group: Any, n: int, size: int, shard_size: int, codecs: list, rows: int) -> None:
    """The compact layout's ``boxes`` and ``patch_bytes`` (a chunk per shard) and ``patches``
    (a row per shard of samples, in inner chunks; ``anomalygen.store.patches``)."""
    k = min(shard_size, max(n, 1))
    group.create_array(
        BOXES,
        shape=(n, rows, 4),
        dtype="int32",
        chunks=(k, rows, 4),
        compressors=codecs,
        fill_value=0,
        dimension_names=("sample", "box", "box_corner"),
    )
    _per_item(group, PATCH_BYTES, n, shard_size, "int32", codecs, "sample")
    width, chunk = row_bytes(k, size), chunk_bytes(k, size)
    group.create_array(
        PATCHES,
        shape=(-(-n // shard_size), width),
        dtype="uint8",
        chunks=(1, chunk),
        shards=(1, width),
        compressors=codecs,
        fill_value=0,
        dimension_names=("shard", "patch_byte"),
    )


def _images(
    group: Any, name: str, shape: tuple[int, ...], shard: int, codecs: list, dims: tuple[str, ...]
) -> None:
    """An image array: one image per inner chunk, ``shard`` images per shard object."""
    count = shape[0]
    group.create_array(
        name,
        shape=shape,
        dtype="uint8",
        chunks=(1, *shape[1:]),
        shards=(min(shard, max(count, 1)), *shape[1:]),
        compressors=codecs,
        fill_value=0,
        dimension_names=dims,
    )


def _per_item(
    group: Any, name: str, count: int, chunk: int, dtype: Any, codecs: list, dim: str
) -> None:
    """A per-item array: one chunk per shard."""
    group.create_array(
        name,
        shape=(count,),
        dtype=dtype,
        chunks=(min(chunk, max(count, 1)),),
        compressors=codecs,
        fill_value=0,
        dimension_names=(dim,),
    )


def _records(group: Any, name: str, shape: tuple[int, int], shard: int, dim: str) -> None:
    """A record array (``anomalygen.store.text``): one NUL-padded row of UTF-8 JSON per item,
    one chunk per shard of items, always zstd (the padding is most of it)."""
    group.create_array(
        name,
        shape=shape,
        dtype="uint8",
        chunks=(min(shard, max(shape[0], 1)), shape[1]),
        compressors=compressors("zstd"),
        fill_value=0,
        dimension_names=(dim, f"{name}_byte"),
    )


def _digests(
    group: Any, name: str, count: int, chunk: int, columns: dict[str, str], dim: str
) -> None:
    """A digests array: one row per item, one uint32 column per array, one chunk per shard;
    stored raw (digests do not compress) with a checksum, fill value MISSING."""
    group.create_array(
        name,
        shape=(count, len(columns)),
        dtype="uint32",
        chunks=(min(chunk, max(count, 1)), len(columns)),
        compressors=compressors(POOL_CODEC),
        fill_value=MISSING,
        dimension_names=(dim, f"{name}_column"),  # its own: xarray wants one length a name
        attributes={"columns": list(columns), "algorithm": ALGORITHM},
    )


def _flags(group: Any, name: str, count: int, dim: str) -> None:
    """Completion flags, one object each: different writers never touch the same object."""
    group.create_array(
        name,
        shape=(count,),
        dtype="uint8",
        chunks=(1,),
        compressors=None,
        fill_value=0,
        dimension_names=(dim,),
    )


# ------------------------------------------------------------------------------------------
# Writing one shard (a worker, once per shard)
# ------------------------------------------------------------------------------------------


def sample_items(
    images: np.ndarray,
    masks: np.ndarray,
    targets: Sequence[int],
    sources: Sequence[int],
    metas: Sequence[dict],
) -> dict[str, Any]:
    """A shard of samples as the per-sample arrays hold them (``SAMPLE_COLUMNS``): what is
    written, and what the digests are of (meta as JSON text)."""
    return {
        IMAGE: images,
        MASK: masks,
        TARGET: np.asarray(targets, dtype=np.int32),
        SOURCE: np.asarray(sources, dtype=np.int32),
        AREA: np.asarray([m["area"] for m in metas], dtype=np.int32),
        LESIONS: np.asarray([len(m["lesions"]) for m in metas], dtype=np.uint16),
        META: [_dumps(m) for m in metas],
    }


def pool_items(
    pool: str, images: np.ndarray, fovs: np.ndarray | None, infos: Sequence[dict]
) -> dict[str, Any]:
    """A pool shard as its arrays hold it (``pool_columns(pool)``; records as JSON text)."""
    items: dict[str, Any] = {pool: images}
    if fovs is not None:
        items[f"{pool}_fov"] = fovs
    items[f"{pool}_info"] = [_dumps(i) for i in infos]
    return items


class StoreWriter:
    """Open arrays of a store for writing whole shards. One per worker process."""

    def __init__(self, loc: StoreLocation) -> None:
        import zarr

        self.loc = loc
        store = loc.zarr_store(read_only=False)
        # The arrays' own metadata (as readers use it); update_attrs consolidates again.
        self._group = zarr.open_group(store=store, mode="r+", use_consolidated=False)
        self._arrays: dict[str, Any] = {}
        # Version 1 stores (resumed by this code) have no digests arrays and get none;
        # versions 1 and 2 hold their records as zarr-python strings and keep doing so.
        version = self._group.attrs.get("format_version", 1)
        version = version if isinstance(version, int) else 1
        self.digests = version >= DIGESTS_SINCE
        self.text_rows = version >= TEXT_ROWS_SINCE
        self.layout = layout_of(self._group.attrs)

    def array(self, name: str) -> Any:
        arr = self._arrays.get(name)
        if arr is None:
            self.loc.check_writable_key(f"{name}/zarr.json")
            # Writers send whole chunks; the empty-chunk test would cost a full compare each.
            arr = self._group[name].with_config({"write_empty_chunks": True})
            self._arrays[name] = arr
        return arr

    def write_samples(
        self,
        shard: int,
        start: int,
        images: np.ndarray,
        masks: np.ndarray,
        targets: Sequence[int],
        sources: Sequence[int],
        metas: Sequence[dict],
        normals: Sequence[np.ndarray] | None = None,
    ) -> None:
        """Write samples ``start .. start + len(images)`` (shard ``shard``), then its flag.

        A compact store needs ``normals``, each sample's target photograph (the pixels its
        patches are composed with); it stores the boxes and patches instead of the images."""
        sel = slice(start, start + len(images))
        items = sample_items(images, masks, targets, sources, metas)
        written = items
        if self.layout == COMPACT:
            if normals is None:
                raise ValueError("a compact store's samples are written with their normals")
            rows = self.array(BOXES).shape[1]
            coded = [
                encode(image, mask, normal, meta, rows)
                for image, mask, normal, meta in zip(images, masks, normals, metas, strict=True)
            ]
            self._write_patches(shard, shard_row([c[1] for c in coded], self._patch_chunk()))
            written = {k: v for k, v in items.items() if k not in (IMAGE, MASK)}
            written[BOXES] = np.stack([c[0] for c in coded])
            written[PATCH_BYTES] = np.asarray([len(c[1]) for c in coded], np.int32)
        self._write_shard(shard, sel, items, written, DIGESTS, SAMPLE_COLUMNS, DONE)

    def _patch_chunk(self) -> int:
        return int(self.array(PATCHES).chunks[1])

    def _write_patches(self, shard: int, row: np.ndarray) -> None:
        """Row ``shard`` of ``patches``: as far as its patches reach, in whole inner chunks.
        The shard object is deleted first, so that a shard written again (a retry, a repair)
        keeps no chunk of the one it replaces beyond its own."""
        key = shard_key(PATCHES, shard, ndim=2)
        self.loc.check_writable_key(key)
        self.loc.delete(key)
        self.array(PATCHES)[shard : shard + 1, : row.shape[1]] = row

    def write_pool(
        self,
        pool: str,
        shard: int,
        start: int,
        images: np.ndarray,
        fovs: np.ndarray | None,
        infos: Sequence[dict],
    ) -> None:
        """Write slots ``start .. start + len(infos)`` (pool shard ``shard``), then its flag."""
        sel = slice(start, start + len(infos))
        items = pool_items(pool, images, fovs, infos)
        digests = pool_digests_name(pool)
        self._write_shard(shard, sel, items, items, digests, pool_columns(pool), f"{pool}_done")

    def _write_shard(
        self,
        shard: int,
        sel: slice,
        items: dict[str, Any],
        written: dict[str, Any],
        digests: str,
        columns: dict[str, str],
        flag: str,
    ) -> None:
        """Write one shard of every array in ``written`` (lists are JSON text); in a version-2
        store the digests of ``items`` (the samples as a reader sees them); then, last, the
        shard's flag ``flag`` (a shard without its flag is written again)."""
        names = (*written, digests) if self.digests else tuple(written)
        self._check_links(shard, (*names, flag))
        for name, values in written.items():
            if isinstance(values, list):  # JSON records
                values = self._record_values(name, sel, values)
            self._assign(name, shard, sel, values)
        if self.digests:
            self._assign(digests, shard, sel, item_digests(columns, items))
        self._assign(flag, shard, shard, 1)

    def _record_values(self, name: str, sel: slice, texts: list[str]) -> Any:
        """Records as the store's version holds them: uint8 rows, or strings (versions 1-2)."""
        if not self.text_rows:
            return np.asarray(texts, dtype=object)
        width = self.array(name).shape[1]
        try:
            return encode_texts(texts, width, what=f"{name} of item")
        except ValueError as err:
            raise StoreError(f"{self.loc}: cannot write {name} {sel.start}+: {err}") from None

    def _assign(self, name: str, shard: int, sel: Any, values: Any) -> None:
        """``array(name)[sel] = values``, the whole of shard ``shard``. zarr reads a shard
        object before it replaces it (to merge partial writes): a damaged one (a truncated
        index, a failing CRC32C) cannot be read, so it is deleted and the shard written anew.
        Storage errors (OSError: a full disk) are raised as they are."""
        arr = self.array(name)
        try:
            arr[sel] = values
        except OSError:
            raise
        except Exception:
            self.loc.delete(shard_key(name, shard, ndim=len(arr.shape)))
            arr[sel] = values

    def _check_links(self, shard: int, names: Sequence[str]) -> None:
        """Before writing shard ``shard`` of arrays ``names``: no object may go through a link
        out of a local store (one may have been planted since the render started)."""
        if self.loc.local_path is None:
            return
        for name in names:
            ndim = len(self.array(name).shape)
            self.loc.check_writable_key(shard_key(name, shard, ndim=ndim))

    def update_attrs(self, attrs: dict[str, Any]) -> None:
        """Only the coordinator calls this (one writer of the group's ``zarr.json``).

        The attributes are written, then the consolidated metadata again (a group opened
        without it writes ``zarr.json`` without it); a store of versions 1 and 2 had none and
        gets none."""
        self._group = self._group.update_attributes(attrs)  # one write, not one per key
        if self.text_rows:
            consolidate(self.loc)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)
