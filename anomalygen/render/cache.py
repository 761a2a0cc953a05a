"""A render worker's cache of decoded pool images (normals, textures)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from anomalygen.store.reader import NormalsView

__all__ = ["PoolCache"]


class PoolCache:
    """Pool images (image, fov) read through :class:`NormalsView`, kept while they fit in
    ``max_bytes`` (the least recently used go first; the last one read is always kept).

    Render workers and ``verify`` read the same few normals many times: a normal at 768 px is
    2.4 MB, and a read costs about 5 ms.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int], tuple[Any, int]] = OrderedDict()
        self._bytes = 0

    def get(self, view: NormalsView, j: int) -> tuple[np.ndarray, np.ndarray | None]:
        key = (view.pool, j)
        entry = self._items.get(key)
        if entry is not None:
            self._items.move_to_end(key)
            return entry[0]
        item = view[j]
        nbytes = sum(a.nbytes for a in item if a is not None)
        self._items[key] = (item, nbytes)
        self._bytes += nbytes
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, (_, size) = self._items.popitem(last=False)
            self._bytes -= size
        return item

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0
