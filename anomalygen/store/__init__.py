"""The anomalygen store (``docs/store-format.md``).

One Zarr v3 group holds the *pools* the renderer draws from (prepared once in phase 1), the
synthetic samples ``image`` / ``mask`` (I_G, M_G) with their metadata, and one completion flag
per shard. The modules, each importing only those above it:

- :mod:`~anomalygen.store.format`: names, layout constants, the render's parameters
  (:class:`RenderSpec`) and the diff a refused resume reports; no I/O;
- :mod:`~anomalygen.store.location`: a path or URL as a zarr Store, and listing, reading,
  deleting and sizes of its objects through zarr's Store API;
- :mod:`~anomalygen.store.access`: one-line errors for a store that cannot be reached;
- :mod:`~anomalygen.store.options`: ``--storage-option KEY=VALUE`` parsing;
- :mod:`~anomalygen.store.text`: JSON records as NUL-padded UTF-8 rows (format 3); no I/O;
- :mod:`~anomalygen.store.reader`: :func:`open_store` and :class:`SampleStore`;
- :mod:`~anomalygen.store.writer`: creating or resuming a store, writing whole shards;
- :mod:`~anomalygen.store.info`: what ``anomalygen info`` prints.
"""

from __future__ import annotations

from anomalygen.store.format import (
    CODECS,
    DEFAULT_CODEC,
    DEFAULT_SHARD_SIZE,
    FORMAT_NAME,
    FORMAT_VERSION,
    POOL_SHARD_SIZE,
    Listing,
    RenderSpec,
    check_format,
    parameter_differences,
    shard_key,
)
from anomalygen.store.info import store_info
from anomalygen.store.location import StoreLocation, location
from anomalygen.store.options import parse_storage_options
from anomalygen.store.reader import NormalsView, SampleStore, open_store, read_attrs
from anomalygen.store.writer import StoreWriter, create_store

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "DEFAULT_SHARD_SIZE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "POOL_SHARD_SIZE",
    "Listing",
    "NormalsView",
    "RenderSpec",
    "SampleStore",
    "StoreLocation",
    "StoreWriter",
    "check_format",
    "create_store",
    "location",
    "open_store",
    "parameter_differences",
    "parse_storage_options",
    "read_attrs",
    "shard_key",
    "store_info",
]
