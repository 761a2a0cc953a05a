"""The renderer: ``anomalygen render`` as a library call, :func:`render`.

Two phases, both made of shard tasks (one task writes one shard, once): phase 1 prepares every
source photograph once into the store's pools, phase 2 renders the samples. The modules, each
importing only those above it:

- :mod:`~anomalygen.render.cache`: a worker's bounded cache of pool images;
- :mod:`~anomalygen.render.threads`: OpenCV and zarr thread limits in a worker;
- :mod:`~anomalygen.render.tasks`: the two kinds of task, a worker's state, ``run_task``;
- :mod:`~anomalygen.render.runners`: the ``Runner`` contract; in this process, or a pool;
- :mod:`~anomalygen.render.dask`: the Dask runner (``--scheduler``);
- :mod:`~anomalygen.render.lock`: the ``Lock`` contract; file and object locks;
- :mod:`~anomalygen.render.coordinator`: :func:`render` (plan, lock, open, phases, result).

The names below are imported lazily (the coordinator is loaded on first use), so that a worker
importing its tasks does not load the coordinator.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["DEFAULT_CACHE_MB", "RenderInterrupted", "RenderResult", "render", "resolve_workers"]

if TYPE_CHECKING:  # pragma: no cover
    from anomalygen.render.coordinator import (
        DEFAULT_CACHE_MB,
        RenderInterrupted,
        RenderResult,
        render,
        resolve_workers,
    )


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'anomalygen.render' has no attribute {name!r}")
    value = getattr(importlib.import_module("anomalygen.render.coordinator"), name)
    globals()[name] = value
    return value
