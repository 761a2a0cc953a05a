"""Converting a store to another layout: ``anomalygen convert STORE OUT --layout full``.

A compact store (docs/store-format.md) keeps per sample only the pixels inside its lesion boxes;
tools that read ``image`` arrays directly need a full one. :func:`convert_store` writes a new
store with the source's parameters and ``layout``, pool shard by pool shard and shard by shard
through the same writer as a render, from samples read (and checked against their digests) from
the source. Its arrays are therefore byte-identical to a render of the same command with that
layout (only ``created``, ``completed`` and ``store_id`` differ). Any readable store converts,
versions 1 and 2 included: the new store is of the current format version.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from anomalygen.errors import ConfigError, StoreError
from anomalygen.progress import Progress
from anomalygen.render.lock import lock_for
from anomalygen.store import format as fmt
from anomalygen.store.access import access_errors
from anomalygen.store.location import location
from anomalygen.store.reader import SampleStore, open_store
from anomalygen.store.writer import StoreWriter, initial_attrs, now, open_or_create

__all__ = ["ConvertResult", "convert_store"]

#: Attributes that phase 1 of the source's render filled in, copied as they are.
PHASE_1_ATTRS = ("sources", "textures", "normals_count", "textures_count", "skipped")


@dataclass(frozen=True)
class ConvertResult:
    url: str
    layout: str
    n: int
    sample_bytes: int  # the new store's samples on disk (pools excluded)
    source_bytes: int  # the source store's
    seconds: float

    def summary(self) -> str:
        per, before = self.sample_bytes / self.n, self.source_bytes / self.n
        return (
            f"converted {self.n} samples to a {self.layout} store at {self.url} in "
            f"{self.seconds:.1f} s ({per / 1024:.1f} KB/sample, from {before / 1024:.1f})"
        )


def convert_store(
    url: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layout: str = fmt.FULL,
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> ConvertResult:
    """Write the complete store at ``url`` as a new store at ``out`` in ``layout``.

    Raises :class:`StoreError` for a store that is not complete or is damaged (nothing of a
    damaged sample is written: its read fails first), or an ``out`` that exists (unless
    ``overwrite``); :class:`ConfigError` for an unknown layout."""
    if layout not in fmt.LAYOUTS:
        known = ", ".join(fmt.LAYOUTS)
        raise ConfigError(f"--layout: unknown layout {layout!r} (choose from {known})")
    started = time.perf_counter()
    source = open_store(url, storage_options)
    if len(source.complete_shards()) != source.n_shards:
        raise StoreError(f"{source.loc}: not completely rendered; resume its render first")
    spec = dataclasses.replace(source.spec, layout=layout)
    loc = location(out, storage_options)
    if loc.url == source.loc.url:
        raise ConfigError(f"{loc}: converting a store needs another OUT than the store itself")
    if not loc.is_empty() and not overwrite:
        raise StoreError(f"{loc}: exists; choose another OUT, or --overwrite to replace it")
    lock = lock_for(loc)
    with access_errors(loc, "reach the store"):
        lock.acquire()
    try:
        with access_errors(loc, "create the store"):
            open_or_create(loc, spec, initial_attrs(spec), overwrite=True)
        writer = StoreWriter(loc)
        _copy_pools(source, writer)
        _copy_samples(source, writer, progress)
        attrs = {key: source.attrs[key] for key in PHASE_1_ATTRS if key in source.attrs}
        writer.update_attrs({**attrs, "completed": now()})
    finally:
        lock.release()
    written = open_store(loc)
    return ConvertResult(
        loc.url, layout, len(source), written.sample_bytes(), source.sample_bytes(),
        time.perf_counter() - started,
    )  # fmt: skip


def _copy_pools(source: SampleStore, writer: StoreWriter) -> None:
    """Every pool shard, as the source holds it (its records checked, its usable images too)."""
    checked, ps = source.checked(), fmt.POOL_SHARD_SIZE
    for pool, count in source.attrs["pools"].items():
        usable = set(source.pool_slots(pool).tolist())
        for lo in range(0, count, ps):
            r = range(lo, min(lo + ps, count))
            images = source.arrays()[pool][r.start : r.stop]
            fovs = source.arrays()[f"{pool}_fov"][r.start : r.stop] if pool == fmt.NORMALS else None
            for slot in usable & set(r):  # a lost or damaged image fails here
                checked.item(pool, slot, pool=pool)
                if fovs is not None:
                    checked.item(f"{pool}_fov", slot, pool=pool)
            infos = [json.loads(t) for t in checked.items(f"{pool}_info", r, pool)]
            writer.write_pool(pool, lo // ps, lo, images, fovs, infos)


def _copy_samples(source: SampleStore, writer: StoreWriter, progress: bool) -> None:
    checked = source.checked()
    with Progress(len(source), description="convert", unit="samples", enabled=progress) as bar:
        for s in range(source.n_shards):
            r = source.shard_range(s)
            images, masks = source.read_shard(s)
            targets = np.asarray(checked.items(fmt.TARGET, r))
            sources = np.asarray(checked.items(fmt.SOURCE, r))
            metas = [json.loads(t) for t in checked.items(fmt.META, r)]
            normals = None
            if writer.layout == fmt.COMPACT:  # 64 consecutive samples share 16 photographs
                read = {int(t): source.normals[int(t)][0] for t in set(targets.tolist())}
                normals = [read[int(t)] for t in targets]
            writer.write_samples(s, r.start, images, masks, targets, sources, metas, normals)
            bar.advance(len(r))
