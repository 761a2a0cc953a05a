"""Shared fixtures: the real photographs in ../shared/data (skipped where absent) and tiny
synthetic fundus images for fast tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from tests.synthetic import make_fundus

# CI runs the property tests on a fixed sequence of examples, so that a run is repeatable and a
# landing does not hinge on the draw; local runs keep exploring new examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the project; tests that use it skip where it is absent."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real fundus photographs not found at {SHARED_DATA} (fresh clones lack them)")
    return SHARED_DATA


@pytest.fixture()
def fundus_128() -> np.ndarray:
    """A 128x128 synthetic fundus photograph (RGB uint8) with a full circular field of view."""
    return make_fundus(128, seed=0)


@pytest.fixture()
def fundus_folder(tmp_path: Path) -> Path:
    """A folder of six small synthetic fundus PNGs of different sizes and field-of-view shapes."""
    from PIL import Image

    folder = tmp_path / "normals"
    folder.mkdir()
    for k in range(6):
        rgb = make_fundus(96 + 16 * k, seed=k, cut=(k % 3 == 2), width_ratio=1.0 + 0.25 * (k % 2))
        Image.fromarray(rgb).save(folder / f"normal_{k:02d}.png")
    return folder


@pytest.fixture()
def torch_one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waits on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
