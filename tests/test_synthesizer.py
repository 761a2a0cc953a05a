"""``anomalygen.LesionSynthesizer``: a torch-free callable that puts lesions from its own pool of
prepared photographs into any image, reproducible from ``(seed, index)``."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import anomalygen
from anomalygen import (
    AnomalyGenerator,
    ConfigError,
    GeneratorConfig,
    LesionSynthesizer,
    find_fov,
    find_sources,
    load_fundus,
    sample_rng,
)
from tests.synthetic import make_fundus, write_sources

SIZE = 96
LESIONS = GeneratorConfig(p_normal=0.0, crop_size=(0.1, 0.3))  # every sample has lesions


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sources(tmp_path_factory.mktemp("synth") / "normals", count=3)


@pytest.fixture(scope="module")
def synth(folder: Path) -> LesionSynthesizer:
    return LesionSynthesizer(folder, LESIONS, seed=3, size=SIZE)


@pytest.fixture(scope="module")
def target() -> anomalygen.PreparedFundus:
    return anomalygen.prepare_fundus(make_fundus(120, seed=9), SIZE)


def test_reproducible_from_seed_and_index(synth, target, folder) -> None:
    a = synth(target.image, fov=target.fov, index=11)
    b = synth(image=target.image, fov=target.fov, index=11)  # albumentations' keyword style
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.meta == b.meta and a.mask.any()
    others = [synth(target.image, fov=target.fov, index=i).mask for i in range(4)]
    assert len({m.tobytes() for m in others}) > 1
    reseeded = LesionSynthesizer(folder, LESIONS, seed=4, size=SIZE)
    assert not np.array_equal(reseeded(target.image, fov=target.fov, index=11).mask, a.mask)
    # in a DataLoader worker: the synthesizer pickles with its pool and draws the same
    again = pickle.loads(pickle.dumps(synth))(target.image, fov=target.fov, index=11)
    np.testing.assert_array_equal(again.image, a.image)


def test_it_is_the_generator_on_the_pool(synth, target, folder) -> None:
    """The first draw of sample_rng(seed, index) picks the source photograph, prepared as a
    render prepares it; the generator does the rest."""
    rng = sample_rng(3, 11)
    source = int(rng.integers(3))
    prepared = load_fundus(find_sources(folder).files[source].path, SIZE)
    want = AnomalyGenerator(LESIONS).generate(
        target.image, prepared.image, rng, fov=target.fov, source_fov=prepared.fov
    )
    got = synth(target.image, fov=target.fov, index=11)
    np.testing.assert_array_equal(got.image, want.image)
    assert got.meta == {**want.meta, "source": source}
    assert synth.names[source] == f"normal_{source}.png"
    # the sample contract: the target outside the mask, the mask inside the FOV
    outside = got.mask == 0
    np.testing.assert_array_equal(got.image[outside], target.image[outside])
    assert not got.mask[target.fov == 0].any()


def test_fov_is_found_when_not_given(synth, target) -> None:
    found = find_fov(target.image)
    a = synth(target.image, index=2)
    b = synth(target.image, fov=found, index=2)
    np.testing.assert_array_equal(a.image, b.image)


def test_without_index_each_call_draws_anew(synth, target) -> None:
    masks = {synth(target.image, fov=target.fov).mask.tobytes() for _ in range(4)}
    assert len(masks) > 1


def test_images_of_another_size(synth) -> None:
    photo = make_fundus(70, seed=5, width_ratio=1.3)  # not square, not the pool's size
    sample = synth(photo, index=0)
    assert sample.image.shape == photo.shape and sample.mask.shape == photo.shape[:2]
    assert sample.mask.any()
    np.testing.assert_array_equal(sample.image[sample.mask == 0], photo[sample.mask == 0])


def test_sources_as_lists_and_unusable_files(folder: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    paths = [*sorted(folder.glob("*.png")), broken]
    synth = LesionSynthesizer(paths, size=64)
    assert len(synth) == 3 and [name for name, _ in synth.skipped] == [str(broken)]
    assert len(LesionSynthesizer(find_sources(folder), size=64)) == 3
    with pytest.raises(ConfigError, match="no usable source image"):
        LesionSynthesizer([broken], size=64)
    with pytest.raises(ConfigError, match="no such file"):
        LesionSynthesizer([tmp_path / "missing.png"], size=64)
    with pytest.raises(ConfigError, match="seed"):
        LesionSynthesizer(folder, seed=-1, size=64)


def test_texture_sources(tmp_path: Path, target) -> None:
    rng = np.random.default_rng(0)
    for k in range(2):
        texture = rng.integers(0, 255, size=(40 + 10 * k, 50, 3), dtype=np.uint8)
        Image.fromarray(texture).save(tmp_path / f"t{k}.png")
    config = GeneratorConfig(p_normal=0.0, source="texture")
    synth = LesionSynthesizer(tmp_path, config, size=SIZE)
    sample = synth(target.image, fov=target.fov, index=1)
    assert sample.mask.any() and not sample.mask[target.fov == 0].any()


def test_the_examples_names_are_exported_and_torch_free() -> None:
    for name in anomalygen.__all__:
        assert getattr(anomalygen, name) is not None, name
    code = (
        "import sys, anomalygen; anomalygen.LesionSynthesizer, anomalygen.find_sources, "
        "anomalygen.demo_folder, anomalygen.export_store; print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr
