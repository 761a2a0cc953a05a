"""Rebuilding a sample from its recorded metadata: :func:`replay`, :func:`replay_sample`.

A sample's ``meta`` records every value drawn for its lesions (boxes C_t and C_s, the ops with
their values, tone, alpha, soft-edge width) except one: the lesion mask P, whose Perlin gradients
are thousands of random numbers per lesion. Rather than store them (which would change the bytes
of every store's ``meta`` array), replay draws P again from the sample's random stream:
:func:`~anomalygen.generator.draw_lesions` needs only the image shapes and FOVs, never a pixel,
so the stream in the state the generator got it gives the same P bit for bit.

Everything else comes from ``meta``: replay paints each lesion with
:func:`~anomalygen.generator.paint_lesion` from the recorded values, through the pure ops of
:mod:`anomalygen.augment`. So a replay equals the rendered sample byte for byte
(tests/test_replay.py checks every op, every ablation and a rendered store), and an edited
``meta`` (an op removed, a tone changed) shows what that value does to the lesion.

Stores: :func:`replay_sample` (``store.meta(i)``, the store's seed, config and pools).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anomalygen.generator import (
    GeneratorConfig,
    Lesion,
    SyntheticSample,
    check_inputs,
    draw_lesions,
    draw_pair,
    paint_lesions,
    sample_rng,
)

__all__ = ["replay", "replay_sample"]


def replay(
    meta: dict,
    target: np.ndarray,
    source: np.ndarray,
    rng: np.random.Generator,
    *,
    config: GeneratorConfig | None = None,
    fov: np.ndarray | None = None,
    source_fov: np.ndarray | None = None,
) -> SyntheticSample:
    """The sample ``meta`` describes, rebuilt on ``target`` from ``source``.

    ``meta`` is a sample's metadata (``SyntheticSample.meta``, or a store's ``meta(i)``: keys
    other than ``normal`` and ``lesions`` are ignored). ``target``, ``source``, ``fov``,
    ``source_fov`` and ``config`` (None: the default) are what ``AnomalyGenerator(config)
    .generate`` got, and
    ``rng`` a generator in the state ``generate`` got it (for sample i of a render:
    ``sample_rng(seed, i)`` after ``draw_pair``, as :func:`replay_sample` makes it); it gives
    only the lesion masks P. Raises ValueError when ``meta`` does not fit that stream (another
    number of lesions, or boxes of another size than their P).
    """
    config = GeneratorConfig() if config is None else config
    source_fov = check_inputs(target, source, fov, source_fov, config.source)
    drawn = draw_lesions(rng, config, target.shape[:2], source.shape[:2], fov, source_fov)
    records = meta["lesions"]
    if bool(meta["normal"]) != (not drawn) or len(records) != len(drawn):
        raise ValueError(
            f"replay: meta has {len(records)} lesion(s) (normal: {bool(meta['normal'])}), its "
            f"random stream {len(drawn)}: this meta is not the sample of that stream and config"
        )
    lesions = [Lesion.from_meta(record, d.P) for record, d in zip(records, drawn, strict=True)]
    return paint_lesions(target, source, lesions, config)


def replay_sample(store: Any, i: int, meta: dict | None = None) -> SyntheticSample:
    """Sample ``i`` of a store (:func:`anomalygen.open_store`), rebuilt from its ``meta`` (by
    default ``store.meta(i)``; pass an edited copy to see what a value does) and the store's
    prepared photographs, seed and generator config. Equals ``store[i]`` byte for byte.

    Raises ValueError when the store's pools no longer give sample ``i`` the target and source
    its meta records.
    """
    meta = store.meta(i) if meta is None else meta
    pool = store.textures if meta["source_pool"] == "textures" else store.normals
    n_textures = len(pool) if meta["source_pool"] == "textures" else None
    rng = sample_rng(store.seed, i)
    pair = draw_pair(store.seed, i, rng, len(store.normals), n_textures)
    if pair != (meta["target"], meta["source"]):
        raise ValueError(
            f"replay: sample {i} records target {meta['target']} and source {meta['source']}, "
            f"its random stream draws {pair[0]} and {pair[1]}"
        )
    target, fov = store.normals[meta["target"]]
    source, source_fov = pool[meta["source"]]
    return replay(meta, target, source, rng, config=store.config, fov=fov, source_fov=source_fov)
