"""Replay (anomalygen.rebuild): a sample rebuilt from its metadata equals the rendered sample,
byte for byte, for every op, every ablation and the samples of a rendered store."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import anomalygen
from anomalygen.augment import OPS, AugmentConfig
from anomalygen.generator import (
    AnomalyGenerator,
    GeneratorConfig,
    SyntheticSample,
    generator_preset,
    sample_rng,
)
from anomalygen.perlin import PerlinConfig
from anomalygen.rebuild import replay, replay_sample
from anomalygen.render import render
from anomalygen.tone import ToneConfig
from tests.synthetic import make_fundus, write_sources

SIZE = 96
TARGET = make_fundus(SIZE, seed=1)
SOURCE = make_fundus(SIZE, seed=2)
YY, XX = np.mgrid[0:SIZE, 0:SIZE]
FOV = (np.hypot(YY - SIZE / 2, XX - SIZE / 2) <= 0.46 * SIZE).astype(np.uint8)
ANOMALOUS = GeneratorConfig(p_normal=0.0)


def stored(meta: dict) -> dict:
    """``meta`` as a store keeps it: through JSON."""
    return json.loads(json.dumps(meta))


def assert_same(replayed: SyntheticSample, sample: SyntheticSample) -> None:
    assert replayed.image.dtype == np.uint8 and replayed.mask.dtype == np.uint8
    assert replayed.image.tobytes() == sample.image.tobytes()
    assert replayed.mask.tobytes() == sample.mask.tobytes()
    assert json.dumps(replayed.meta) == json.dumps(sample.meta)


def generate_and_replay(
    config: GeneratorConfig,
    index: int,
    source: np.ndarray = SOURCE,
    fov: np.ndarray | None = FOV,
    source_fov: np.ndarray | None = FOV,
) -> SyntheticSample:
    """Generate sample ``index`` (seed 0), replay it from its stored meta, compare; the sample."""
    sample = AnomalyGenerator(config).generate(
        TARGET, source, sample_rng(0, index), fov, source_fov
    )
    replayed = replay(
        stored(sample.meta),
        TARGET,
        source,
        sample_rng(0, index),
        config=config,
        fov=fov,
        source_fov=source_fov,
    )
    assert_same(replayed, sample)
    return sample


@pytest.mark.parametrize("name", list(OPS))
def test_every_op_replays(name: str) -> None:
    config = dataclasses.replace(ANOMALOUS, augment=AugmentConfig(n_ops=1, ops=(name,)))
    for i in range(6):
        sample = generate_and_replay(config, i)
        ops = [op for lesion in sample.meta["lesions"] for op in lesion["ops"]]
        assert ops and all(op["op"] == name for op in ops)


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_normal_and_anomalous_samples_replay(preset: str) -> None:
    config = generator_preset(preset)
    normal = 0
    for i in range(24):
        normal += generate_and_replay(config, i).meta["normal"]
    assert 0 < normal < 24  # both kinds were replayed


@pytest.mark.parametrize(
    "changes",
    [
        {"blend": "paste"},
        {"mask": "crop"},
        {"edge": (0.5, 3.0)},
        {"alpha_range": None, "alpha": 0.4},
        {"tone": ToneConfig(mode="source")},
        {"tone": ToneConfig(channel_jitter=0.3)},
        {"tone": ToneConfig(target_texture=(0.0, 1.0))},
        {"perlin": PerlinConfig(max_anisotropy=1)},
        {"augment": AugmentConfig(n_ops=0)},
        {"augment": AugmentConfig(n_ops=7, ops=tuple(OPS))},
    ],
    ids=lambda c: ",".join(c),
)
def test_every_ablation_replays(changes: dict) -> None:
    config = dataclasses.replace(ANOMALOUS, **changes)
    for i in range(4):
        generate_and_replay(config, i)


def test_texture_mode_and_no_fov_replay() -> None:
    texture = np.random.default_rng(5).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    config = dataclasses.replace(ANOMALOUS, source="texture")
    for i in range(4):
        generate_and_replay(config, i, source=texture, source_fov=None)  # tiled: crops > 20 px
        generate_and_replay(ANOMALOUS, i, fov=None, source_fov=None)


def test_the_fallback_lesion_on_a_tiny_fov_replays() -> None:
    fov = np.zeros((SIZE, SIZE), np.uint8)
    fov[40:42, 70:72] = 1
    config = dataclasses.replace(ANOMALOUS, placement_tries=2)
    for i in range(6):
        generate_and_replay(config, i, fov=fov)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), index=st.integers(0, 10**6))
def test_any_sample_replays(seed: int, index: int) -> None:
    sample = AnomalyGenerator().generate(TARGET, SOURCE, sample_rng(seed, index), FOV, FOV)
    replayed = replay(stored(sample.meta), TARGET, SOURCE, sample_rng(seed, index), fov=FOV,
                      source_fov=FOV)  # fmt: skip
    assert_same(replayed, sample)


def test_replay_paints_from_meta_not_from_the_stream() -> None:
    """An edited meta shows what its values do: the lesion shapes stay, the look changes."""
    config = dataclasses.replace(ANOMALOUS, tone=ToneConfig(mode="source"))
    sample = AnomalyGenerator(config).generate(TARGET, SOURCE, sample_rng(0, 3), FOV, FOV)
    edited = copy.deepcopy(sample.meta)
    for lesion in edited["lesions"]:
        lesion["ops"] = [{"op": "color_shift", "offsets": [60, -60, 0]}]
    replayed = replay(edited, TARGET, SOURCE, sample_rng(0, 3), config=config, fov=FOV,
                      source_fov=FOV)  # fmt: skip
    assert np.array_equal(replayed.mask, sample.mask)
    outside = sample.mask == 0
    assert np.array_equal(replayed.image[outside], TARGET[outside])
    assert not np.array_equal(replayed.image, sample.image)
    assert replayed.meta["lesions"][0]["ops"] == edited["lesions"][0]["ops"]


def test_a_meta_of_another_stream_is_refused() -> None:
    two = dataclasses.replace(ANOMALOUS, lesions=(2, 2))
    sample = AnomalyGenerator(two).generate(TARGET, SOURCE, sample_rng(0, 1), FOV, FOV)
    three = dataclasses.replace(ANOMALOUS, lesions=(3, 3))
    with pytest.raises(ValueError, match="not the sample of that stream"):
        replay(sample.meta, TARGET, SOURCE, sample_rng(0, 1), config=three, fov=FOV, source_fov=FOV)
    normal = {"normal": True, "area": 0, "lesions": []}
    with pytest.raises(ValueError, match="not the sample of that stream"):
        replay(normal, TARGET, SOURCE, sample_rng(0, 1), config=two, fov=FOV, source_fov=FOV)
    moved = copy.deepcopy(sample.meta)
    moved["lesions"][0]["target_box"][2] += 1  # one row taller than its P
    with pytest.raises(ValueError, match=r"target_box .* does not fit its P"):
        replay(moved, TARGET, SOURCE, sample_rng(0, 1), config=two, fov=FOV, source_fov=FOV)


def test_replay_is_public() -> None:
    assert anomalygen.replay is replay and anomalygen.replay_sample is replay_sample


# --- samples read from rendered stores --------------------------------------------------------

N, STORE_SIZE, SHARD = 24, 64, 8


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    return write_sources(tmp_path_factory.mktemp("src") / "normals")


def _replay_every_sample(out: Path) -> anomalygen.SampleStore:
    store = anomalygen.open_store(out)
    kinds = set()
    for i in range(len(store)):
        image, mask = store[i]
        meta = store.meta(i)
        replayed = replay_sample(store, i)
        assert replayed.image.tobytes() == image.tobytes(), f"sample {i}: image"
        assert replayed.mask.tobytes() == mask.tobytes(), f"sample {i}: mask"
        stored_meta = {k: meta[k] for k in ("normal", "area", "lesions")}
        assert replayed.meta == stored_meta, f"sample {i}: meta"
        kinds.add(meta["normal"])
    assert kinds == {False, True} or store.config.p_normal == 0.0
    return store


def test_every_sample_of_a_rendered_store_replays(sources: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    render(out, sources, N, size=STORE_SIZE, shard_size=SHARD, workers=1, progress=False,
           config=GeneratorConfig())  # fmt: skip
    store = _replay_every_sample(out)
    # the store's pools must still give the sample what its meta records
    meta = store.meta(0)
    other = {**meta, "target": (meta["target"] + 1) % len(store.normals)}
    with pytest.raises(ValueError, match="its random stream draws"):
        replay_sample(store, 0, other)


def test_every_sample_of_a_texture_store_replays(sources: Path, tmp_path: Path) -> None:
    from PIL import Image

    textures = tmp_path / "dtd"
    textures.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        pixels = rng.integers(0, 256, (40 + 10 * k, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(textures / f"t{k}.png")
    out = tmp_path / "tex.zarr"
    config = generator_preset("paper")
    config = dataclasses.replace(config, source="texture", p_normal=0.0)
    render(out, sources, 8, size=STORE_SIZE, shard_size=4, workers=1, progress=False,
           config=config, textures=textures)  # fmt: skip
    _replay_every_sample(out)
