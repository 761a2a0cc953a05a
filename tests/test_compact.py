"""The compact store layout (issue 13): per sample only its boxes and the pixels inside them,
composed with its target photograph on read, byte for byte what a full render stores."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from anomalygen import open_store
from anomalygen.errors import ConfigError, StoreError
from anomalygen.render import render
from anomalygen.repair import repair_store
from anomalygen.store import compact as compact_reads
from anomalygen.store import patches, shard_key, store_info
from anomalygen.store.patches import compose, encode, offsets, used_boxes
from anomalygen.verify import verify_store
from tests.files import file_digests
from tests.test_store_digests import pinned_generator, write_photographs, write_textures

N, SIZE, SHARD = 2048, 32, 64


@pytest.fixture(scope="module")
def photographs(tmp_path_factory) -> Path:
    return write_photographs(tmp_path_factory.mktemp("inputs") / "photographs")


def _render(out: Path, photographs: Path, layout: str, n: int = N, **kw) -> Path:
    options = dict(size=SIZE, seed=11, config=pinned_generator(), shard_size=SHARD, workers=1)
    render(out, photographs, n, layout=layout, progress=False, **{**options, **kw})
    return out


@pytest.fixture(scope="module")
def pair(photographs: Path, tmp_path_factory) -> tuple[Path, Path]:
    """The same 2,048 samples rendered in both layouts."""
    root = tmp_path_factory.mktemp("pair")
    full = _render(root / "full.zarr", photographs, "full")
    compact = _render(root / "compact.zarr", photographs, "compact")
    return full, compact


@pytest.fixture()
def damaged(pair: tuple[Path, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "damaged.zarr"
    shutil.copytree(pair[1], copy)
    return copy


def lesioned(store_path: Path, shard: int) -> int:
    """The first sample with lesions in ``shard``."""
    area = open_store(store_path).checked().whole("area")
    r = range(shard * SHARD, (shard + 1) * SHARD)
    return next(i for i in r if area[i] > 0)


# ------------------------------------------------------------------------------------------
# Composed on read, byte for byte
# ------------------------------------------------------------------------------------------


def test_every_sample_composes_to_the_full_render(pair: tuple[Path, Path]) -> None:
    full, compact = (open_store(p) for p in pair)
    assert compact.layout == "compact" and full.layout == "full"
    for s in range(full.n_shards):  # every sample, a shard at a time
        for a, b in zip(full.read_shard(s), compact.read_shard(s), strict=True):
            np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(0)
    for i in rng.choice(N, 64, replace=False):  # random access, one sample at a time
        for a, b in zip(full[int(i)], compact[int(i)], strict=True):
            np.testing.assert_array_equal(a, b)
        assert full.meta(int(i)) == compact.meta(int(i))
    picks = [5, 2000, 64, 3]
    for a, b in zip(full[picks], compact[picks], strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(full[100:140], compact[100:140], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def small_chunks(photographs: Path, tmp_path_factory) -> Path:
    """256 of ``pair``'s samples, compact, in inner chunks of 1 KiB: a shard's patches span
    about 30 of them, as they span 14 at 768 px."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(patches, "MIN_CHUNK", 1024)  # read when the store is created
        return _render(tmp_path_factory.mktemp("chunks") / "c.zarr", photographs, "compact", 256)


def _patch_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of bytes of each read of a ``patches`` array from now on."""
    reads: list[int] = []
    get = zarr.Array.__getitem__

    def counted(self: zarr.Array, sel):
        out = get(self, sel)
        if self.basename == "patches":
            reads.append(int(np.asarray(out).size))
        return out

    monkeypatch.setattr(zarr.Array, "__getitem__", counted)
    return reads


@pytest.mark.parametrize("ahead", [compact_reads.READ_AHEAD_BYTES, 3000])
def test_sequential_reads_read_ahead_and_compose_the_same(
    pair: tuple[Path, Path], small_chunks: Path, monkeypatch, ahead: int
) -> None:
    monkeypatch.setattr(compact_reads, "READ_AHEAD_BYTES", ahead)
    full, store = open_store(pair[0]), open_store(small_chunks)
    reads = _patch_reads(monkeypatch)
    for i in range(256):
        for a, b in zip(full[i], store[i], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=str(i))
    chunks = -(-np.asarray(store.checked().whole("patch_bytes")).reshape(4, 64).sum(1) // 1024)
    if ahead == compact_reads.READ_AHEAD_BYTES:  # the first chunk, then the rest of each shard
        assert len(reads) <= 1 + 4, reads
    else:  # never more than the read-ahead (plus the chunks a sample straddles)
        assert len(reads) > 4 and max(reads) <= ahead + 2 * 1024, reads
    assert sum(reads) >= int(chunks.sum()) * 1024 - 1024  # every chunk read once, about


def test_a_random_read_reads_only_its_samples_chunks(
    pair: tuple[Path, Path], small_chunks: Path, monkeypatch
) -> None:
    full, store = open_store(pair[0]), open_store(small_chunks)
    lengths = np.asarray(store.checked().whole("patch_bytes"))
    reads = _patch_reads(monkeypatch)
    for i in [200, 7, 130, 9, 3, 64, 66]:  # never the sample after the one read last
        before = len(reads)
        np.testing.assert_array_equal(full[i][0], store[i][0])
        spans = -(-int(lengths[i]) // 1024) + 1  # the chunks its bytes may straddle
        assert all(n <= spans * 1024 for n in reads[before:]), (i, reads[before:])
    assert len(reads) >= 4  # (a sample without lesions reads no patches)


def test_the_arrays_besides_the_images_are_the_full_layouts(pair: tuple[Path, Path]) -> None:
    full, compact = (zarr.open_group(str(p), mode="r", use_consolidated=False) for p in pair)
    for name in ("target", "source", "area", "lesions", "meta", "digests", "done", "normals"):
        np.testing.assert_array_equal(full[name][:], compact[name][:], err_msg=name)
    assert "image" not in compact and "mask" not in compact
    assert compact.attrs["layout"] == "compact" and "layout" not in full.attrs


def test_a_compact_store_is_small(pair: tuple[Path, Path]) -> None:
    full, compact = (store_info(p) for p in pair)
    assert compact["layout"] == "compact" and compact["image_shape"] == [N, SIZE, SIZE, 3]
    # At 32 px a lesion box is a large share of the image; at 768 px the ratio is far larger
    # (benchmarks/bench_render.py).
    assert compact["bytes_per_sample"] < full["bytes_per_sample"] / 2, (compact, full)


def test_a_pickled_compact_store_reads_in_another_process(pair: tuple[Path, Path]) -> None:
    store = open_store(pair[1])
    again = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(again[7][0], store[7][0])


def test_verify_checks_a_compact_store(pair: tuple[Path, Path]) -> None:
    report = verify_store(str(pair[1]), full=True)
    assert report.ok, report.problems
    assert report.samples_checked == N


def test_texture_mode_composes_too(photographs: Path, tmp_path: Path) -> None:
    textures = write_textures(tmp_path / "textures")
    kw = dict(config=pinned_generator(source="texture", p_normal=0.25), textures=textures)
    full = _render(tmp_path / "f.zarr", photographs, "full", n=40, shard_size=16, **kw)
    compact = _render(tmp_path / "c.zarr", photographs, "compact", n=40, shard_size=16, **kw)
    f, c = open_store(full), open_store(compact)
    for i in range(40):
        for a, b in zip(f[i], c[i], strict=True):
            np.testing.assert_array_equal(a, b)
    assert verify_store(str(compact), full=True).ok


def test_a_sample_that_changed_pixels_outside_its_boxes_is_kept_whole() -> None:
    rng = np.random.default_rng(1)
    normal = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    image, mask = normal.copy(), np.zeros((16, 16), np.uint8)
    image[2:4, 2:4] = 7
    mask[2:4, 2:4] = 1
    meta = {"lesions": [{"target_box": [2, 2, 4, 4]}]}
    boxes, payload = encode(image, mask, normal, meta, rows=3)
    assert used_boxes(boxes).tolist() == [[2, 2, 4, 4]] and len(payload) == 2 * 2 * 4
    wide = {"lesions": [{"target_box": [1, 0, 9, 6]}, {"target_box": [12, 12, 14, 14]}]}
    boxes, payload = encode(image, mask, normal, wide, rows=3)  # shrunk to what changed
    assert used_boxes(boxes).tolist() == [[2, 2, 4, 4]] and len(payload) == 2 * 2 * 4
    image[10, 10] ^= 1  # outside every box
    boxes, payload = encode(image, mask, normal, meta, rows=3)
    assert used_boxes(boxes).tolist() == [[0, 0, 16, 16]] and len(payload) == 16 * 16 * 4
    back = compose(normal, used_boxes(boxes), payload)
    np.testing.assert_array_equal(back[0], image)
    np.testing.assert_array_equal(back[1], mask)
    assert offsets([1024, 0, 20]).tolist() == [0, 1024, 1024, 1044]


def _tight_boxes(lesions: list[dict], mask: np.ndarray) -> np.ndarray:
    """Each lesion's box shrunk to the mask's pixels inside it (boxes without any dropped)."""
    out = []
    for y0, x0, y1, x1 in (lesion["target_box"] for lesion in lesions):
        ys, xs = np.nonzero(mask[y0:y1, x0:x1])
        if len(ys):
            out.append([y0 + ys.min(), x0 + xs.min(), y0 + ys.max() + 1, x0 + xs.max() + 1])
    return np.asarray(out, np.int64).reshape(-1, 4)


def _composes_back(image, mask, normal, boxes) -> bool:
    """Composing and comparing whole images: what encode checked before it took one pass."""
    parts = []
    for y0, x0, y1, x1 in boxes:
        m = mask[y0:y1, x0:x1]
        parts += [m.ravel(), image[y0:y1, x0:x1][m != 0].ravel()]
    back = compose(normal, boxes, np.concatenate(parts) if parts else np.zeros(0, np.uint8))
    return np.array_equal(back[0], image) and np.array_equal(back[1], mask)


def _faulty_sample(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """(image, mask, normal, lesions) with up to 4 overlapping lesions and, by ``seed % 3``,
    no fault, a pixel changed where the mask is 0, or a mask pixel outside every box."""
    rng = np.random.default_rng(seed)
    normal = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    image, mask, lesions = normal.copy(), np.zeros((24, 24), np.uint8), []
    for _ in range(int(rng.integers(1, 5))):
        y0, x0 = (int(v) for v in rng.integers(0, 20, 2))
        y1, x1 = y0 + int(rng.integers(1, 6)), x0 + int(rng.integers(1, 6))
        inside = rng.random((y1 - y0, x1 - x0)) < 0.6
        mask[y0:y1, x0:x1][inside] = 1
        image[y0:y1, x0:x1][inside] = rng.integers(0, 256, (int(inside.sum()), 3))
        lesions.append({"target_box": [y0, x0, y1, x1]})
    y, x = (int(v) for v in rng.integers(0, 24, 2))
    if seed % 3 == 1 and mask[y, x] == 0:
        image[y, x, int(rng.integers(3))] ^= np.uint8(1 + int(rng.integers(255)))
    if seed % 3 == 2:
        mask[y, x] = 1  # outside every box or not: both must come back
    return image, mask, normal, lesions


@pytest.mark.parametrize("seed", range(60))
def test_encode_keeps_a_sample_whole_exactly_when_its_patches_would_not_compose(seed) -> None:
    """encode's one-pass check decides as composing and comparing whole images does, and what
    it encodes always composes back."""
    image, mask, normal, lesions = _faulty_sample(seed)
    boxes, payload = encode(image, mask, normal, {"lesions": lesions}, rows=8)
    used = used_boxes(boxes)
    back = compose(normal, used, payload)
    np.testing.assert_array_equal(back[0], image)
    np.testing.assert_array_equal(back[1], mask)
    whole = used.tolist() == [[0, 0, 24, 24]] and len(payload) == 24 * 24 * 4
    assert whole == (not _composes_back(image, mask, normal, _tight_boxes(lesions, mask)))


# ------------------------------------------------------------------------------------------
# Integrity: a lost or corrupted patch object is an error naming the sample
# ------------------------------------------------------------------------------------------


def test_a_lost_patches_object_is_an_error_naming_the_sample(damaged: Path) -> None:
    i = lesioned(damaged, 3)
    os.unlink(damaged / shard_key("patches", 3, ndim=2))
    with pytest.raises(StoreError) as err:
        open_store(damaged)[i]
    message = str(err.value)  # its mask reads as zeros: too few lesion pixels for its bytes
    assert f"sample {i} (shard 3) is damaged: array 'patches' does not hold" in message
    assert "object patches/c/3/0 is missing" in message and "--repair" in message
    with pytest.raises(StoreError, match=f"sample {i} \\(shard 3\\)"):
        open_store(damaged).read_shard(3)
    report = verify_store(str(damaged))
    assert "shard 3: object patches/c/3/0 is missing" in report.problems
    assert report.damaged == {"samples": {3}}


def test_a_corrupted_patch_byte_is_an_error(damaged: Path) -> None:
    i = lesioned(damaged, 5)
    path = damaged / shard_key("patches", 5, ndim=2)
    data = bytearray(path.read_bytes())
    data[10] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=f"sample {i} \\(shard 5\\) is damaged: array 'patches'"):
        open_store(damaged)[i]


def test_lost_boxes_are_an_error_not_a_normal_image(damaged: Path) -> None:
    i = lesioned(damaged, 2)
    os.unlink(damaged / shard_key("boxes", 2, ndim=3))
    with pytest.raises(StoreError, match=f"sample {i} \\(shard 2\\) is damaged"):
        open_store(damaged)[i]


def test_a_sample_that_lost_all_its_objects_is_not_read_as_its_normal(damaged: Path) -> None:
    """Boxes, byte counts and patches all lost: everything reads as zeros, which composes to
    the target photograph itself; its digest says it is not the sample."""
    i = lesioned(damaged, 6)
    for name, ndim in (("boxes", 3), ("patch_bytes", 1), ("patches", 2)):
        (damaged / shard_key(name, 6, ndim=ndim)).unlink()
    with pytest.raises(StoreError) as err:
        open_store(damaged)[i]
    assert (
        f"sample {i} (shard 6) is damaged: array 'image' composed from its patches and target "
        "normal does not match the digest written with it (object patches/c/6/0 is missing)"
    ) in str(err.value)


def test_a_damaged_compact_store_is_repaired_byte_for_byte(
    pair: tuple[Path, Path], damaged: Path
) -> None:
    def key(name: str, shard: int) -> Path:
        return damaged / shard_key(name, shard, ndim=2 if name == "patches" else 3)

    key("patches", 1).unlink()  # lost
    shutil.copy(key("patches", 9), key("patches", 4))  # replaced by another shard's
    key("boxes", 7).unlink()
    result = repair_store(str(damaged))
    assert result.repaired == {"samples": [1, 4, 7]} and result.ok
    assert file_digests(damaged) == file_digests(pair[1])


# ------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------


def test_a_resume_with_another_layout_is_refused(pair: tuple[Path, Path], tmp_path) -> None:
    copy = tmp_path / "full.zarr"
    shutil.copytree(pair[0], copy)
    with pytest.raises(StoreError, match='layout "full" -> "compact"'):
        _render(copy, Path(open_store(copy).attrs["sources"]["root"]), "compact")


def test_an_unknown_layout_is_refused(photographs: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--layout: unknown layout 'tiny'"):
        _render(tmp_path / "x.zarr", photographs, "tiny", n=4)
    assert not (tmp_path / "x.zarr").exists()


# ------------------------------------------------------------------------------------------
# The training data path reads a compact store as it reads a full one
# ------------------------------------------------------------------------------------------


def test_the_training_dataset_sees_no_difference(pair: tuple[Path, Path]) -> None:
    torch = pytest.importorskip("torch", reason="the training extra is not installed")
    from resynth_models.data import GeometryConfig, SyntheticDataset, worker_context

    full, compact = (open_store(p) for p in pair)
    a = SyntheticDataset(full, 32, GeometryConfig(max_rotate=20), seed=5, with_fov=True)
    b = SyntheticDataset(compact, 32, GeometryConfig(max_rotate=20), seed=5, with_fov=True)
    for key in [(0, 3), (1, 700), (0, 2047)]:
        for name in ("image", "mask", "fov"):
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    keys = [[(0, k) for k in (5, 1900, 64)]]
    loader = torch.utils.data.DataLoader(
        b, batch_sampler=keys, num_workers=1, multiprocessing_context=worker_context()
    )
    (batch,) = list(loader)
    assert torch.equal(batch["image"][1], a[(0, 1900)]["image"])


def test_a_compact_render_is_the_same_with_two_processes(photographs: Path, tmp_path) -> None:
    one = _render(tmp_path / "one.zarr", photographs, "compact", n=80, shard_size=16)
    two = _render(tmp_path / "two.zarr", photographs, "compact", n=80, shard_size=16, workers=2)
    assert file_digests(one / "patches") == file_digests(two / "patches")
    assert file_digests(one / "boxes") == file_digests(two / "boxes")


def test_a_layout_the_format_does_not_know_is_refused(damaged: Path) -> None:
    group = zarr.open_group(str(damaged), mode="r+", use_consolidated=False)
    group.attrs["format_version"] = 2
    with pytest.raises(StoreError, match="attribute 'layout' compact needs format version 3"):
        open_store(damaged)
    group.attrs.update({"format_version": 3, "layout": "sparse"})
    with pytest.raises(StoreError, match="attribute 'layout' must be one of full, compact"):
        open_store(damaged)


def test_an_interrupted_compact_render_resumes_byte_for_byte(
    pair: tuple[Path, Path], photographs: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "resumed.zarr"
    shutil.copytree(pair[1], copy)
    group = zarr.open_group(str(copy), mode="r+", use_consolidated=False)
    group["done"][4] = 0  # as a render killed while writing shard 4 leaves it
    group.attrs.pop("completed")
    (copy / shard_key("patches", 4, ndim=2)).write_bytes(b"half a shard")
    _render(copy, photographs, "compact")
    assert file_digests(copy / "patches") == file_digests(pair[1] / "patches")
    assert verify_store(str(copy), full=True).ok
