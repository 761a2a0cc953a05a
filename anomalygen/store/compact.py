"""Reading a compact store's samples: each one composed from its patches and its target normal.

A sample of a compact store is read as its shard's ``boxes``, ``patch_bytes`` and ``target``
(read once per shard and kept, for the last :data:`SHARDS_KEPT` shards a process read), the
byte range of its patches in its shard's ``patches`` row (a read of the chunks it spans, 128 KiB
each, and the row's shard index; a read that follows the previous sample reads on to the end
of the shard's patches, up to :data:`READ_AHEAD_BYTES`), and its target photograph, from a
cache bounded in bytes:
consecutive samples share few photographs (``draw_pair`` draws 64 consecutive samples' targets
from 16), so sequential reads mostly hit it. :mod:`anomalygen.store.patches` composes them.
The callers (``SampleStore``, verify) check the composed image and mask against the digests
written with the sample.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from anomalygen.errors import StoreError
from anomalygen.store.checked import CheckedArrays, read_error
from anomalygen.store.format import BOXES, PATCH_BYTES, PATCHES, TARGET
from anomalygen.store.patches import compose, offsets, used_boxes

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "READ_AHEAD_BYTES",
    "SHARDS_KEPT",
    "CompactSamples",
    "NormalCache",
]

#: Memory for a reader's target photographs: about 70 at 768 px (1.8 MB each), four blocks of
#: ``draw_pair``'s 16, per process (each DataLoader worker has its own).
DEFAULT_CACHE_BYTES = 128 << 20
#: Shards whose boxes, targets and offsets a reader keeps: about 13 KB each (64 samples, 12
#: boxes), so a reader's memory stays flat in N (65,536 samples' worth at 64 a shard).
SHARDS_KEPT = 1024
#: Most bytes of patches a sequential read reads ahead (a shard's are about 1.8 MB at 768 px,
#: 14 inner chunks: one zarr read instead of 14, each about 2 ms on the development machine
#: whatever its size). Random reads read only the chunks of the sample asked for.
READ_AHEAD_BYTES = 4 << 20


class NormalCache:
    """Target photographs by index, kept while they fit in ``max_bytes`` (least recently used
    go first; the last one read is always kept); ``read(j)`` reads one (checked)."""

    def __init__(self, read: Callable[[int], np.ndarray], max_bytes: int) -> None:
        self._read = read
        self.max_bytes = max_bytes
        self._items: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0

    def __call__(self, j: int) -> np.ndarray:
        image = self._items.get(j)
        if image is not None:
            self._items.move_to_end(j)
            return image
        image = self._read(j)
        self._items[j] = image
        self._bytes += image.nbytes
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes
        return image


class CompactSamples:
    """The samples of one compact store, composed on read (unchecked: see the module doc)."""

    def __init__(self, checked: CheckedArrays, shard_size: int, normal: NormalCache) -> None:
        self.checked = checked
        self.arrays = checked.arrays
        self.shard_size = shard_size
        self.normal = normal
        self._shards: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._block: tuple[int, int, int, np.ndarray] | None = None  # (shard, start, stop, bytes)
        self._last = -2  # the sample read last: reading the next one reads ahead

    def _shard(self, s: int, r: range) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(targets, boxes, offsets)`` of shard ``s`` (samples ``r``), read once and kept."""
        kept = self._shards.get(s)
        if kept is not None:
            self._shards.move_to_end(s)
            return kept
        targets = np.asarray(self.checked.items(TARGET, r))
        boxes = self._read(BOXES, r.start, slice(r.start, r.stop))
        lengths = self._read(PATCH_BYTES, r.start, slice(r.start, r.stop))
        kept = (targets, np.asarray(boxes), offsets(lengths))
        self._shards[s] = kept
        while len(self._shards) > SHARDS_KEPT:
            self._shards.popitem(last=False)
        return kept

    def _read(self, name: str, i: int, sel: Any) -> Any:
        try:
            return self.arrays[name][sel]
        except StoreError:
            raise
        except Exception as err:  # a CRC32C that fails, a truncated shard index, ...
            raise self.checked.damaged(name, i, f"cannot be read ({read_error(err)})") from None

    def _compose(self, i: int, j: int, kept: Any, row: np.ndarray) -> tuple[np.ndarray, ...]:
        targets, boxes, _ = kept
        try:
            return compose(self.normal(int(targets[j])), used_boxes(boxes[j]), row)
        except ValueError as err:  # boxes that do not fit the patches read
            state = self.checked.object_state(PATCHES, i // self.shard_size)
            detail = f"does not hold the patches its boxes say ({err}; {state})"
            raise self.checked.damaged(PATCHES, i, detail) from None

    def _patches(self, i: int, s: int, lo: int, hi: int, end: int) -> np.ndarray:
        """Bytes ``lo:hi`` of shard ``s``'s patches (sample ``i``'s; the shard's end at
        ``end``), read as the whole inner chunks they lie in, which reading ``lo:hi`` decodes
        anyway. The last chunks read are kept, and a read of the sample after the last one read
        reads on towards ``end``: sequential reads take a few zarr reads per shard."""
        kept = self._block
        if kept is not None and kept[0] == s and kept[1] <= lo and hi <= kept[2]:
            return kept[3][lo - kept[1] : hi - kept[1]]
        chunk = int(self.arrays[PATCHES].chunks[1])
        upto = max(hi, min(end, lo + READ_AHEAD_BYTES)) if i == self._last + 1 else hi
        start, stop = lo // chunk * chunk, -(-upto // chunk) * chunk  # within the written row
        data = np.asarray(self._read(PATCHES, i, (s, slice(start, stop))))
        self._block = (s, start, stop, data)
        return data[lo - start : hi - start]

    def sample(self, i: int, r: range) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i`` of the shard of samples ``r``: ``(image, mask)``."""
        s, j = i // self.shard_size, i - r.start
        kept = self._shard(s, r)
        lo, hi = int(kept[2][j]), int(kept[2][j + 1])
        row = self._patches(i, s, lo, hi, int(kept[2][-1])) if hi > lo else np.zeros(0, np.uint8)
        self._last = i
        return self._compose(i, j, kept, row)

    def shard(self, r: range) -> tuple[np.ndarray, np.ndarray]:
        """All samples of the shard of samples ``r``, stacked (one read of its patches)."""
        s = r.start // self.shard_size
        kept = self._shard(s, r)
        ends = kept[2]
        data = self._read(PATCHES, r.start, (s, slice(0, int(ends[-1])))) if ends[-1] else None
        pairs = []
        for j, i in enumerate(r):
            part = data[ends[j] : ends[j + 1]] if data is not None else np.zeros(0, np.uint8)
            pairs.append(self._compose(i, j, kept, part))
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
