"""anomalygen: fundus-consistent synthetic lesions for unsupervised anomaly detection.

Implements the consistent anomaly generator of ReSynthDetect (Niu et al., paper section 3.3) and
pre-renders its samples into sharded Zarr stores. No torch needed.

Public names are imported lazily so that ``import anomalygen`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from anomalygen.errors import AnomalygenError, ConfigError, ImageError, StoreError

__version__ = "0.1.0"

_LAZY = {
    "read_image": "anomalygen.fundus",
    "find_fov": "anomalygen.fundus",
    "prepare_fundus": "anomalygen.fundus",
    "load_fundus": "anomalygen.fundus",
    "PreparedFundus": "anomalygen.fundus",
    "AnomalyGenerator": "anomalygen.generator",
    "GeneratorConfig": "anomalygen.generator",
    "SyntheticSample": "anomalygen.generator",
    "sample_rng": "anomalygen.generator",
    "replay": "anomalygen.rebuild",
    "replay_sample": "anomalygen.rebuild",
    "LesionSynthesizer": "anomalygen.synthesizer",
    "find_sources": "anomalygen.sources",
    "SourceList": "anomalygen.sources",
    "demo_folder": "anomalygen.demo",
    "open_store": "anomalygen.store",
    "SampleStore": "anomalygen.store",
    "export_store": "anomalygen.export",
}

__all__ = [
    "AnomalyGenerator",
    "AnomalygenError",
    "ConfigError",
    "GeneratorConfig",
    "ImageError",
    "LesionSynthesizer",
    "PreparedFundus",
    "SampleStore",
    "SourceList",
    "StoreError",
    "SyntheticSample",
    "__version__",
    "demo_folder",
    "export_store",
    "find_fov",
    "find_sources",
    "load_fundus",
    "open_store",
    "prepare_fundus",
    "read_image",
    "replay",
    "replay_sample",
    "sample_rng",
]

if TYPE_CHECKING:  # pragma: no cover
    from anomalygen.demo import demo_folder
    from anomalygen.export import export_store
    from anomalygen.fundus import (
        PreparedFundus,
        find_fov,
        load_fundus,
        prepare_fundus,
        read_image,
    )
    from anomalygen.generator import AnomalyGenerator, GeneratorConfig, SyntheticSample, sample_rng
    from anomalygen.rebuild import replay, replay_sample
    from anomalygen.sources import SourceList, find_sources
    from anomalygen.store import SampleStore, open_store
    from anomalygen.synthesizer import LesionSynthesizer


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'anomalygen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
