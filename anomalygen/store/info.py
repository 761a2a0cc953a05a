"""What ``anomalygen info`` prints: a JSON-compatible summary of a store."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from anomalygen.store.format import AREA, SAMPLE_ARRAYS
from anomalygen.store.reader import open_store

__all__ = ["store_info"]


def store_info(url: str | os.PathLike, storage_options: dict | None = None) -> dict[str, Any]:
    """A JSON-compatible summary of the store at ``url`` (what ``anomalygen info`` prints):
    counts, shapes, codec, size on disk and per sample, completion, config, sources."""
    store = open_store(url, storage_options)
    attrs = store.attrs
    complete = store.complete_shards()
    samples_done = sum(len(store.shard_range(s)) for s in complete)
    sizes = store.loc.sizes()
    checked = store.checked()
    area = checked.whole(AREA)
    done_mask = np.zeros(len(store), bool)
    for s in complete:
        r = store.shard_range(s)
        checked.check(AREA, r, area[r.start : r.stop])  # a lost object is an error, not zeros
        done_mask[r.start : r.stop] = True
    anomalous = int(np.count_nonzero(area[done_mask] > 0))
    pools = {}
    for pool, slots in attrs.get("pools", {}).items():
        pools[pool] = {"slots": int(slots), "usable": attrs.get(f"{pool}_count")}
    size = store.size
    sample_bytes = sum(sizes.get(name, 0) for name in SAMPLE_ARRAYS)
    return {
        "url": store.url,
        "format_version": attrs.get("format_version"),
        "anomalygen_version": attrs.get("anomalygen_version"),
        "created": attrs.get("created"),
        "completed": attrs.get("completed"),
        "n": len(store),
        "samples_complete": samples_done,
        "shards": store.n_shards,
        "shards_complete": len(complete),
        "shard_size": store.shard_size,
        "layout": store.layout,
        "image_shape": [len(store), size, size, 3],
        "mask_shape": [len(store), size, size],
        "size": store.size,
        "seed": store.seed,
        "codec": attrs.get("codec"),
        "clahe": attrs.get("clahe"),
        "bytes_on_disk": sum(sizes.values()),
        "bytes_per_sample": sample_bytes / samples_done if samples_done else None,
        "anomalous_fraction": anomalous / samples_done if samples_done else None,
        "mean_lesion_area_px": float(area[done_mask & (area > 0)].mean()) if anomalous else None,
        "pools": pools,
        "skipped": attrs.get("skipped", []),
        "sources": {
            k: v for k, v in (attrs.get("sources") or {}).items() if k in ("root", "description")
        },
        "generator": attrs.get("generator"),
    }
