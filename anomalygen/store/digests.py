"""Content digests: what a store records of every item it writes, so that a lost or replaced
object is an error on every read instead of zeros. No I/O.

zarr reads a missing chunk as its fill value: a store whose ``image`` shard object was deleted
read back as black images, silently. From format version 2 every shard of samples is written
with a ``digests`` array, one row per sample and one column per per-sample array (CRC32C of the
item's decoded bytes), and every pool shard with a ``<pool>_digests`` array. A reader recomputes
the digest of what it read and compares: a lost object reads as zeros and does not match, a lost
digests object reads as :data:`MISSING`, which no digest ever is.

Digests are of the *decoded* items (pixels in C order, numbers little-endian, text as UTF-8),
not of stored bytes, so they do not depend on the codec or on how a layout stores an item: a
layout that composes images from patches (issue 13) checks the composed image against the same
column, and a change of how ``meta`` strings are stored (issue 12) keeps their digests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from anomalygen.store.format import (
    AREA,
    DIGESTS,
    IMAGE,
    LESIONS,
    MASK,
    META,
    NORMALS,
    SOURCE,
    TARGET,
)

__all__ = [
    "ALGORITHM",
    "DIGESTS",
    "MISSING",
    "SAMPLE_COLUMNS",
    "digest",
    "item_digests",
    "pool_columns",
    "pool_digests_name",
]

#: The digest: CRC32C (hardware-accelerated in google-crc32c, zarr's own checksum library:
#: about 5 GB/s here, 0.35 ms for a 768 px image against ~25 ms to read and decode it).
ALGORITHM = "crc32c"
#: A digest that was never written (the fill value): no item's digest is ever this.
MISSING = 0
#: Stored instead of a CRC that happens to be MISSING (one value in 2**32).
_ZERO_CRC = 1

#: Columns of the digests array, and how each item is turned into bytes: a dtype (the item's
#: values in C order, in that byte order) or "text" (UTF-8).
SAMPLE_COLUMNS: dict[str, str] = {
    IMAGE: "|u1",
    MASK: "|u1",
    TARGET: "<i4",
    SOURCE: "<i4",
    AREA: "<i4",
    LESIONS: "<u2",
    META: "text",
}


def pool_digests_name(pool: str) -> str:
    """``normals_digests``: the digests array of a pool, (slots, len(pool_columns(pool)))."""
    return f"{pool}_digests"


def pool_columns(pool: str) -> dict[str, str]:
    """The columns of a pool's digests: its images, their FOV (normals only), its records."""
    columns = {pool: "|u1"}
    if pool == NORMALS:
        columns[f"{pool}_fov"] = "|u1"
    columns[f"{pool}_info"] = "text"
    return columns


def digest(value: Any, kind: str) -> int:
    """The digest of one item: CRC32C of its bytes as ``kind`` says, never :data:`MISSING`."""
    import google_crc32c

    if kind == "text":
        data: Any = str(value).encode("utf-8")
    else:
        data = np.ascontiguousarray(value, dtype=kind).view()
        data.flags.writeable = False  # google-crc32c takes read-only buffers only
    crc = int(google_crc32c.value(data))
    return crc if crc != MISSING else _ZERO_CRC


def item_digests(columns: dict[str, str], items: dict[str, Sequence[Any]]) -> np.ndarray:
    """Digests (len, len(columns)) uint32 of ``items[column][k]`` for every column, in order."""
    count = len(next(iter(items.values())))
    out = np.empty((count, len(columns)), np.uint32)
    for c, (name, kind) in enumerate(columns.items()):
        values = items[name]
        for k in range(count):
            out[k, c] = digest(values[k], kind)
    return out
