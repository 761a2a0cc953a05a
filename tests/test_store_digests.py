"""Stores stay byte-identical: renders with fixed parameters against digests recorded here.

Every array's contents, every object that zarr wrote for it (its ``zarr.json``, chunks and
shards) and the group attributes that do not change between two renders of the same content are
compared with values recorded literally below, from the renderer as it was before the redesign
of issue 11 (commit 9e9320c); format version 2 (issue 10) added the ``digests`` and
``<pool>_digests`` arrays and left every other array's bytes as they were. Format version 3
(issue 12) changed, deliberately, the objects of the record arrays (``meta``, ``<pool>_info``:
uint8 rows instead of zarr-python strings; their contents, compared as texts, are unchanged)
and the ``zarr.json`` of the digests arrays (their column dimension's name); every other
array's objects, ``image`` and ``mask`` among them, are byte for byte what they were. A change
to the generator, the store layout or the renderer that alters a single byte of a store fails
here.

The generator configuration is pinned: :func:`pinned_generator` builds it from
``PAPER_GENERATOR``, today's field values written out, so that a default changed later does not
change these renders. A field added to ``GeneratorConfig`` must be added there with the value
that keeps the paper's behaviour (:func:`test_the_pinned_config_names_every_field` says which).

On a mismatch the assertion shows the digests found, in the form recorded below; replace them
only for a change that is meant to alter stores (and bump the store format where readers would
misread them, docs/store-format.md).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from PIL import Image

from anomalygen.config import from_dict, to_dict
from anomalygen.generator import GeneratorConfig
from anomalygen.render import render
from anomalygen.store.format import record_arrays
from anomalygen.store.text import decode_texts
from tests.synthetic import make_fundus

#: Every field of GeneratorConfig, nested ones included, as the paper's defaults stood before the
#: redesign (``to_dict(GeneratorConfig())`` at commit 9e9320c). The one place the tests' generator
#: configuration comes from.
PAPER_GENERATOR: dict[str, Any] = {
    "lesions": [1, 4],
    "p_normal": 0.5,
    "crop_size": [0.015, 0.25],
    "aspect": [0.5, 2.0],
    "alpha": 0.7,
    "alpha_range": None,
    "edge": None,
    "source": "fundus",
    "blend": "selfmix",
    "mask": "perlin",
    "placement_tries": 16,
    "placement": "inside",
    "perlin": {
        "scale_exp": [0, 5],
        "threshold": 0.5,
        "min_period": 8.0,
        "rotate": True,
        "max_draws": 4,
        "taper": 0.0,
        "max_anisotropy": None,
    },
    "augment": {
        "n_ops": 3,
        "ops": [
            "sharpen",
            "solarize",
            "gamma",
            "hue",
            "temperature",
            "autocontrast",
            "color_shift",
        ],
        "sharpen": {"alpha": [0.0, 1.0], "lightness": [0.75, 2.0]},
        "solarize": {"threshold": [32, 128]},
        "gamma": {"gamma": [0.5, 2.0], "per_channel": True},
        "hue": {"degrees": [-70.0, 70.0]},
        "temperature": {"kelvin": [1100.0, 10000.0]},
        "autocontrast": {"cutoff": [0.0, 20.0]},
        "color_shift": {"offset": [-30, 30]},
    },
    "tone": {
        "mode": "source",
        "p_dark": 0.55,
        "dark": [4.0, 45.0],
        "bright": [4.0, 60.0],
        "channels": [1.0, 1.0, 0.75],
        "texture": [0.0, 1.0],
        "channel_jitter": 0.0,
        "target_texture": None,
    },
}


def pinned_generator(**changes: Any) -> GeneratorConfig:
    """``GeneratorConfig`` from ``PAPER_GENERATOR`` with top-level ``changes``."""
    return from_dict(GeneratorConfig, {**PAPER_GENERATOR, **changes})


# ------------------------------------------------------------------------------------------
# Inputs: files whose bytes do not depend on an image encoder's version (BMP is raw pixels)
# ------------------------------------------------------------------------------------------


def write_photographs(folder: Path) -> Path:
    """Four synthetic fundus photographs of different sizes and FOV shapes, and between them an
    all-black one that phase 1 must skip (no field of view)."""
    folder.mkdir(parents=True)
    for k in range(4):
        rgb = make_fundus(96 + 16 * k, seed=k, cut=k % 2 == 1, width_ratio=1.0 + 0.25 * (k % 2))
        Image.fromarray(rgb).save(folder / f"normal_{k}.bmp")
    Image.fromarray(np.zeros((90, 90, 3), np.uint8)).save(folder / "normal_1_black.bmp")
    return folder


def write_textures(folder: Path) -> Path:
    """Three noise textures, none of the render's size."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for k in range(3):
        noise = rng.integers(0, 256, (40 + 12 * k, 56, 3), dtype=np.uint8)
        Image.fromarray(noise).save(folder / f"texture_{k}.bmp")
    return folder


# ------------------------------------------------------------------------------------------
# What is compared
# ------------------------------------------------------------------------------------------

#: Group attributes that differ between two renders of the same content, or that name where the
#: render ran (``sources.root``, ``sources.description``), or the version (not a parameter).
PER_RENDER = ("created", "completed", "store_id", "anomalygen_version")


def _hex(digest: Any) -> str:
    return digest.hexdigest()[:16]  # 64 bits: plenty to tell two stores apart


def content_digest(data: np.ndarray) -> str:
    """sha256 of an array's shape and values (strings as UTF-8, NUL-separated)."""
    digest = hashlib.sha256(repr(data.shape).encode())
    if data.dtype.kind in "OTU":
        digest.update("\0".join(str(x) for x in data.ravel()).encode())
    else:
        digest.update(data.dtype.str.encode())
        digest.update(np.ascontiguousarray(data).tobytes())
    return _hex(digest)


def objects_digest(folder: Path) -> str:
    """sha256 of every object under an array's folder: names and bytes, in name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return _hex(digest)


def _decoded(name: str, data: np.ndarray) -> np.ndarray:
    """Records (``meta``, ``<pool>_info``) as their texts, however the store's version holds
    them: format 3 changed their representation (uint8 rows), not their content."""
    if name not in record_arrays():
        return data
    return np.asarray(decode_texts(data), dtype=object)


def store_digests(path: Path) -> dict[str, dict[str, str]]:
    """``{"contents": {array: digest}, "objects": {array: digest}}`` of a local store."""
    group = zarr.open_group(str(path), mode="r")
    names = sorted(name for name, _ in group.arrays())
    return {
        "contents": {name: content_digest(_decoded(name, group[name][:])) for name in names},
        "objects": {name: objects_digest(path / name) for name in names},
    }


def stable_attrs(path: Path) -> dict[str, Any]:
    """The group attributes less ``PER_RENDER``, ``generator`` (compared with the config passed
    in) and the sources' root and description (paths of this test run)."""
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    for key in (*PER_RENDER, "generator"):
        attrs.pop(key, None)
    for key in ("sources", "textures"):
        if attrs.get(key):
            attrs[key] = {"files": attrs[key]["files"]}
    return attrs


def file_entries(folder: Path) -> list[list[Any]]:
    """``[name, bytes, sha256]`` of each file, as the ``sources`` attribute lists them."""
    return [
        [p.name, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()]
        for p in sorted(folder.iterdir())
    ]


def check_store(path: Path, expected: dict[str, Any], config: GeneratorConfig) -> None:
    got = store_digests(path)
    found = json.dumps(got, indent=4, sort_keys=True)
    assert got == expected["digests"], f"the store's bytes changed; found:\n{found}"
    attrs = stable_attrs(path)
    assert attrs == expected["attrs"], json.dumps(attrs, indent=4, sort_keys=True)
    generator = zarr.open_group(str(path), mode="r").attrs["generator"]
    assert generator == to_dict(config)


# ------------------------------------------------------------------------------------------
# The renders
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    return {
        "photographs": write_photographs(root / "photographs"),
        "textures": write_textures(root / "textures"),
    }


def fundus_attrs(photographs: Path) -> dict[str, Any]:
    return {
        "format": "anomalygen-store",
        "format_version": 3,
        "n": 60,
        "size": 64,
        "seed": 7,
        "shard_size": 16,
        "pool_shard_size": 8,
        "codec": "zstd",
        "clahe": True,
        "sources": {"files": file_entries(photographs)},
        "textures": None,
        "pools": {"normals": 5},
        "normals_count": 4,
        "skipped": [
            {
                "pool": "normals",
                "name": "normal_1_black.bmp",
                "reason": "no field of view (the image is black or nearly so)",
            }
        ],
    }


FUNDUS_DIGESTS: dict[str, dict[str, str]] = {
    "contents": {
        "area": "b71777588773cc8c",
        "digests": "f926ae2d1a2af55b",
        "done": "d050f288bd863268",
        "image": "7ef5ed750b6b4d0c",
        "lesions": "c6ffbd549f349e7f",
        "mask": "c61c5d2c33b04b78",
        "meta": "cfd7864d5a8be05a",
        "normals": "5f696f8d09664fa9",
        "normals_digests": "14d097b3af9a9644",
        "normals_done": "1d73d8bc7d569bed",
        "normals_fov": "9a39c1962b9522e1",
        "normals_info": "e44285f5bb184ceb",
        "source": "e79e78659ff21c9e",
        "target": "3990422e18e661cf",
    },
    "objects": {
        "area": "1ed6bed8927cb8b6",
        "digests": "232b8112a67053c2",
        "done": "55f5484f9782f1ae",
        "image": "19bcd730452f254b",
        "lesions": "414cf6017465444c",
        "mask": "a48a318979b9358c",
        "meta": "482806b3a285afb0",
        "normals": "c9d1b9c74c2dffd3",
        "normals_digests": "603df92d57f44bd5",
        "normals_done": "8cac1cea1808908b",
        "normals_fov": "2ca930641ec5c946",
        "normals_info": "42ecae3c28ebe9a8",
        "source": "1dfbebace7e8cd28",
        "target": "ce1dfa8765847a54",
    },
}

RUNNERS = [
    pytest.param({"workers": 1}, id="inline"),
    pytest.param({"workers": 2}, id="two-processes"),
    pytest.param({"workers": 2, "scheduler": "local"}, id="dask-local"),
]


@pytest.mark.parametrize("runner", RUNNERS)
def test_fundus_render_is_unchanged(inputs, tmp_path, runner: dict[str, Any]) -> None:
    """n=60 in shards of 16 (the last one short), 64 px, zstd, CLAHE, a skipped photograph."""
    if "scheduler" in runner:
        pytest.importorskip("distributed", reason="Dask distributed is not installed")
    config = pinned_generator()
    out = tmp_path / "fundus.zarr"
    render(
        out, inputs["photographs"], 60, size=64, seed=7, config=config, shard_size=16,
        progress=False, layout="full", **runner,
    )  # fmt: skip
    expected = {"digests": FUNDUS_DIGESTS, "attrs": fundus_attrs(inputs["photographs"])}
    check_store(out, expected, config)


def texture_attrs(photographs: Path, textures: Path) -> dict[str, Any]:
    return {
        "format": "anomalygen-store",
        "format_version": 3,
        "n": 20,
        "size": 48,
        "seed": 3,
        "shard_size": 8,
        "pool_shard_size": 8,
        "codec": "blosc-lz4",
        "clahe": False,
        "sources": {"files": file_entries(photographs)},
        "textures": {"files": file_entries(textures)},
        "pools": {"normals": 5, "textures": 3},
        "normals_count": 4,
        "textures_count": 3,
        "skipped": [
            {
                "pool": "normals",
                "name": "normal_1_black.bmp",
                "reason": "no field of view (the image is black or nearly so)",
            }
        ],
    }


TEXTURE_DIGESTS: dict[str, dict[str, str]] = {
    "contents": {
        "area": "2476dfcceac00cce",
        "digests": "a89ebb53a4c015e0",
        "done": "39a1cfe4d7d59e6b",
        "image": "1afac830954e8bc2",
        "lesions": "b176238dbc5e3efa",
        "mask": "bfc60e51bf8e5abb",
        "meta": "08693f1b03d8012f",
        "normals": "cfd1771096bb1ca3",
        "normals_digests": "ccdf867decfe3c99",
        "normals_done": "1d73d8bc7d569bed",
        "normals_fov": "abdef7ee0881c9d2",
        "normals_info": "e44285f5bb184ceb",
        "source": "32c7fdc2f50fd999",
        "target": "47958092583a3ebc",
        "textures": "1664aa14d96e146b",
        "textures_digests": "e2680474f38ccf9d",
        "textures_done": "1d73d8bc7d569bed",
        "textures_info": "9bfc74643ad9ae9e",
    },
    "objects": {
        "area": "bfc90d3c410025ab",
        "digests": "48ce49b92974d910",
        "done": "4ac20404469b9398",
        "image": "147ca42bbb1e55ad",
        "lesions": "f498392f9d9fc0d2",
        "mask": "8e49695e2b04ced6",
        "meta": "f5abccce6efe10c4",
        "normals": "baac3b78086297f9",
        "normals_digests": "cc26e4410d9c5c70",
        "normals_done": "8cac1cea1808908b",
        "normals_fov": "528bdc9f204ec60f",
        "normals_info": "42ecae3c28ebe9a8",
        "source": "e052919dfeb00ee9",
        "target": "26670fc190a4fb58",
        "textures": "dc96d9793134178f",
        "textures_digests": "41de7d40da33d99d",
        "textures_done": "80ba7125c32319a0",
        "textures_info": "68481a20f564310f",
    },
}


def test_texture_render_is_unchanged(inputs, tmp_path) -> None:
    """Texture mode (Table 4), blosc-lz4, no CLAHE, 48 px, one worker."""
    config = pinned_generator(source="texture", p_normal=0.25)
    out = tmp_path / "texture.zarr"
    render(
        out, inputs["photographs"], 20, size=48, seed=3, config=config,
        textures=inputs["textures"], shard_size=8, codec="blosc-lz4", clahe=False, workers=1,
        progress=False, layout="full",
    )  # fmt: skip
    expected = {
        "digests": TEXTURE_DIGESTS,
        "attrs": texture_attrs(inputs["photographs"], inputs["textures"]),
    }
    check_store(out, expected, config)


def _fields(data: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in data.items():
        if isinstance(value, dict):
            out |= _fields(value, f"{prefix}{key}.")
        else:
            out.add(prefix + key)
    return out


def test_the_pinned_config_names_every_field() -> None:
    """A field added to GeneratorConfig must be pinned above with the paper's value, or these
    renders would follow its default."""
    current = _fields(to_dict(GeneratorConfig()))
    pinned = _fields(PAPER_GENERATOR)
    assert not current - pinned, f"pin these fields in PAPER_GENERATOR: {sorted(current - pinned)}"
    assert not pinned - current, f"fields no longer in GeneratorConfig: {sorted(pinned - current)}"
    assert to_dict(pinned_generator()) == PAPER_GENERATOR


def test_digests_see_a_changed_byte(inputs, tmp_path) -> None:
    """The comparison can fail: one pixel changed in a copy changes its digests."""
    out = tmp_path / "small.zarr"
    render(
        out, inputs["photographs"], 4, size=32, seed=0, config=pinned_generator(),
        shard_size=4, workers=1, progress=False, layout="full",
    )  # fmt: skip
    before = store_digests(out)
    group = zarr.open_group(str(out), mode="r+")
    image = group["image"][0]
    image[5, 5, 0] ^= 1
    group["image"][0] = image
    after = store_digests(out)
    assert after["contents"]["image"] != before["contents"]["image"]
    assert after["objects"]["image"] != before["objects"]["image"]
    assert {k: v for k, v in after["contents"].items() if k != "image"} == {
        k: v for k, v in before["contents"].items() if k != "image"
    }
