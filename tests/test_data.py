"""Tests of resynth_models.data: augmentation keeps masks aligned, resizing, datasets over a fake
and a real store, the stream sampler (order independent of workers/ranks, exact resume), and the
whole-shard validation split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from anomalygen.errors import ConfigError, StoreError  # noqa: E402
from resynth_models.data import (  # noqa: E402
    NO_AUGMENT,
    Geometry,
    GeometryConfig,
    NormalsDataset,
    StreamBatchSampler,
    SyntheticDataset,
    apply_geometry,
    augment_rng,
    draw_geometry,
    resize_image,
    resize_mask,
    split_shards,
    spread,
)
from tests.synthetic import render_tiny_store  # noqa: E402

# ---------------------------------------------------------------------------------------------
# A small in-memory store with SampleStore's reading interface


class FakeNormals:
    def __init__(self, images: list[np.ndarray], fovs: list[np.ndarray]) -> None:
        self.images, self.fovs = images, fovs

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[j], self.fovs[j]


class FakeStore:
    """``n`` samples of ``size`` px in shards of ``shard_size``; sample i has a square lesion
    painted pure green in the image and 1 in the mask; ``complete`` lists the rendered shards."""

    url = "fake://store"

    def __init__(self, n=12, size=32, shard_size=4, n_normals=3, complete=None, seed=0) -> None:
        self.size, self.shard_size, self.seed = size, shard_size, seed
        self._n = n
        self.n_shards = -(-n // shard_size)
        self._complete = list(range(self.n_shards)) if complete is None else list(complete)
        rng = np.random.default_rng(seed)
        self.images, self.masks, self.targets = [], [], []
        yy, xx = np.mgrid[:size, :size]
        fov = (np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2) <= 0.45 * size).astype(np.uint8)
        normals = []
        for j in range(n_normals):
            img = np.zeros((size, size, 3), np.uint8)
            img[fov == 1] = (150 + 10 * j, 60, 30)
            normals.append(img)
        self.normals = FakeNormals(normals, [fov.copy() for _ in normals])
        for i in range(n):
            t = i % max(n_normals, 1)
            img = normals[t].copy() if normals else np.zeros((size, size, 3), np.uint8)
            mask = np.zeros((size, size), np.uint8)
            y, x = rng.integers(size // 4, size // 2, 2)
            mask[y : y + size // 5, x : x + size // 4] = 1
            img[mask == 1] = (0, 255, 0)
            self.images.append(img)
            self.masks.append(mask)
            self.targets.append(t)
        self.attrs = {"n": n, "size": size, "seed": seed, "shard_size": shard_size, "clahe": True}

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i // self.shard_size not in self._complete:
            raise StoreError(f"sample {i} is not rendered")
        return self.images[i], self.masks[i]

    def shard_range(self, s: int) -> range:
        return range(s * self.shard_size, min((s + 1) * self.shard_size, self._n))

    def complete_shards(self) -> list[int]:
        return list(self._complete)

    def meta(self, i: int) -> dict:
        return {"index": i, "target": self.targets[i]}


# ---------------------------------------------------------------------------------------------
# Geometry


def _pattern(size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red channel is 255 exactly where the (asymmetric) mask is 1."""
    mask = np.zeros((size, size), np.uint8)
    mask[8:20, 6:14] = 1  # a block near the top left
    mask[30:34, 20:44] = 1  # a bar lower right
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 1] = 80
    image[mask == 1] = (255, 80, 0)
    return image, mask


def test_flip_alone_is_exact_and_aligned() -> None:
    image, mask = _pattern()
    out, (m, fov) = apply_geometry(image, [mask, mask.copy()], Geometry(flip=True))
    np.testing.assert_array_equal(out, image[:, ::-1])
    np.testing.assert_array_equal(m, mask[:, ::-1])
    np.testing.assert_array_equal((out[..., 0] == 255).astype(np.uint8), m)
    np.testing.assert_array_equal(fov, m)


@pytest.mark.parametrize(
    "geometry",
    [
        Geometry(flip=False, angle=10.0, scale=1.0),
        Geometry(flip=True, angle=-7.5, scale=1.05),
        Geometry(flip=True, angle=3.0, scale=0.95),
        Geometry(flip=False, angle=90.0, scale=1.0),
    ],
)
def test_rotation_keeps_mask_on_its_pixels(geometry: Geometry) -> None:
    image, mask = _pattern()
    out, (m,) = apply_geometry(image, [mask], geometry)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert m.shape == mask.shape and m.dtype == np.uint8
    assert set(np.unique(m)) <= {0, 1}  # nearest neighbour: no new values
    assert abs(int(m.sum()) - int(mask.sum())) <= 0.15 * mask.sum() + 8  # area kept (zoom +-5%)
    red = out[..., 0]
    # Mask pixels hold the painted red (bilinear blends it only at the borders) and red pixels
    # are masked: the same sampling grid for both.
    assert np.mean(red[m == 1] >= 128) > 0.85
    assert np.mean(m[red >= 200] == 1) > 0.95
    # and the lesion has actually moved (not the identity)
    assert not np.array_equal(m, mask)


def test_rotation_about_the_centre_moves_a_known_pixel() -> None:
    size = 33
    mask = np.zeros((size, size), np.uint8)
    mask[16, 30] = 1  # right of the centre (16, 16)
    image = np.zeros((size, size, 3), np.uint8)
    _, (m,) = apply_geometry(image, [mask], Geometry(angle=90.0))
    # OpenCV angles are counter-clockwise with y down: the right point goes to the top.
    assert tuple(np.argwhere(m)[0]) == (2, 16)
    _, (m,) = apply_geometry(image, [mask], Geometry(flip=True, angle=90.0))
    assert tuple(np.argwhere(m)[0]) == (30, 16)  # flipped to the left first, then rotated


def test_draw_geometry_ranges_and_determinism() -> None:
    config = GeometryConfig(hflip=0.5, max_rotate=10.0, max_scale=0.05)
    draws = [draw_geometry(augment_rng(3, 2, 1, i), config) for i in range(400)]
    assert all(-10 <= g.angle <= 10 and 0.95 <= g.scale <= 1.05 for g in draws)
    assert 0.35 < np.mean([g.flip for g in draws]) < 0.65
    again = [draw_geometry(augment_rng(3, 2, 1, i), config) for i in range(400)]
    assert draws == again
    other_epoch = [draw_geometry(augment_rng(3, 2, 2, i), config) for i in range(400)]
    assert draws != other_epoch
    assert draw_geometry(augment_rng(0, 1, 0, 0), NO_AUGMENT).identity


def test_geometry_config_validation() -> None:
    with pytest.raises(ConfigError, match="hflip"):
        GeometryConfig(hflip=1.5)
    with pytest.raises(ConfigError, match="max_scale"):
        GeometryConfig(max_scale=1.0)
    assert NO_AUGMENT.identity and not GeometryConfig().identity


def test_resize_image_and_mask() -> None:
    image, mask = _pattern(64)
    small = resize_image(image, 32)
    assert small.shape == (32, 32, 3) and small.dtype == np.uint8
    m = resize_mask(mask, 32)
    assert m.shape == (32, 32) and set(np.unique(m)) <= {0, 1}
    # area rule: a 2x2 block is a lesion when more than half of it is
    block = np.zeros((4, 4), np.uint8)
    block[0:2, 0:2] = [[1, 1], [1, 0]]  # 3/4 -> 1
    block[0:2, 2:4] = [[1, 0], [0, 1]]  # 2/4 -> 0 (not more than half)
    np.testing.assert_array_equal(resize_mask(block, 2), [[1, 0], [0, 0]])
    # lesion masks: any part of a lesion keeps the shrunk pixel (a 1 px lesion is not dropped)
    np.testing.assert_array_equal(resize_mask(block, 2, any_part=True), [[1, 1], [0, 0]])
    dot = np.zeros((8, 8), np.uint8)
    dot[5, 6] = 1
    assert resize_mask(dot, 4, any_part=True).sum() == 1 and resize_mask(dot, 4).sum() == 0
    big = resize_mask(mask, 96)
    assert big.shape == (96, 96) and set(np.unique(big)) <= {0, 1}
    assert resize_image(image, 64) is image  # same size: untouched


# ---------------------------------------------------------------------------------------------
# Datasets


def test_synthetic_dataset_items_are_aligned() -> None:
    store = FakeStore(n=8, size=32)
    ds = SyntheticDataset(store, 32, GeometryConfig(), seed=1, with_fov=True)
    assert len(ds) == 8
    for epoch in (0, 1):
        for k in range(len(ds)):
            item = ds[(epoch, k)]
            image, mask, fov = item["image"], item["mask"], item["fov"]
            assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
            assert mask.shape == (32, 32) and mask.dtype == torch.uint8
            assert fov.shape == (32, 32) and fov.dtype == torch.uint8
            green = (image[1] >= 200) & (image[0] <= 60)
            assert mask.sum() > 0
            assert green[mask == 1].float().mean() > 0.8
            assert (mask[green] == 1).float().mean() > 0.95
            assert (fov[mask == 1] == 1).float().mean() > 0.9  # lesions inside the FOV


def test_dataset_augmentation_depends_on_key_only() -> None:
    store = FakeStore(n=8, size=32)
    a = SyntheticDataset(store, 32, GeometryConfig(max_rotate=20), seed=5)
    b = SyntheticDataset(store, 32, GeometryConfig(max_rotate=20), seed=5)
    assert torch.equal(a[(3, 2)]["image"], b[(3, 2)]["image"])
    assert not torch.equal(a[(3, 2)]["image"], a[(4, 2)]["image"])  # new pass, new transform
    plain = SyntheticDataset(store, 32, NO_AUGMENT, seed=5)
    image, mask = store[2]
    np.testing.assert_array_equal(plain[(7, 2)]["image"].numpy().transpose(1, 2, 0), image)
    np.testing.assert_array_equal(plain[2]["mask"].numpy(), mask)


def test_normals_dataset_resizes() -> None:
    store = FakeStore(n=4, size=32, n_normals=3)
    ds = NormalsDataset(store, 16, GeometryConfig(), seed=0)
    assert len(ds) == 3
    item = ds[(0, 1)]
    assert item["image"].shape == (3, 16, 16) and item["fov"].shape == (16, 16)
    assert set(item["fov"].unique().tolist()) <= {0, 1}


def test_normals_dataset_refuses_a_store_without_normals() -> None:
    store = FakeStore(n=4, size=32, n_normals=0)
    with pytest.raises(StoreError, match="no prepared normal photographs"):
        NormalsDataset(store, 32)


# ---------------------------------------------------------------------------------------------
# Sampler


def _steps(sampler: StreamBatchSampler) -> list[list[tuple[int, int]]]:
    return list(sampler)


def test_stream_sampler_passes_are_permutations() -> None:
    s = StreamBatchSampler(10, 3, seed=0, stage=1, stop_step=10)
    keys = [k for batch in s for k in batch]
    assert len(keys) == 30 and all(len(b) == 3 for b in s)
    for p in range(3):  # each full pass holds every item once
        assert sorted(k for e, k in keys if e == p) == list(range(10))
    assert [k for e, k in keys if e == 0] != [k for e, k in keys if e == 1]  # reshuffled


def test_stream_sampler_resumes_mid_pass() -> None:
    full = _steps(StreamBatchSampler(10, 3, seed=4, stage=2, stop_step=9))
    tail = _steps(StreamBatchSampler(10, 3, seed=4, stage=2, start_step=5, stop_step=9))
    assert tail == full[5:]


def test_stream_sampler_ranks_share_the_global_batch() -> None:
    single = _steps(StreamBatchSampler(10, 4, seed=1, stage=1, stop_step=6))
    ranks = [
        _steps(StreamBatchSampler(10, 2, seed=1, stage=1, stop_step=6, world_size=2, rank=r))
        for r in (0, 1)
    ]
    for step in range(6):
        assert ranks[0][step] + ranks[1][step] == single[step]


# ---------------------------------------------------------------------------------------------
# Validation split


def test_split_holds_out_whole_last_shards() -> None:
    store = FakeStore(n=40, size=16, shard_size=4)  # 10 shards
    split = split_shards(store, 0.2)
    assert split.val_shards == (8, 9) and split.train_shards == tuple(range(8))
    train, val = split.indices(store, "train"), split.indices(store, "val")
    assert set(train).isdisjoint(val) and len(train) + len(val) == 40
    assert list(val) == list(range(32, 40))
    # at least one shard, and incomplete shards are left out
    store = FakeStore(n=40, size=16, shard_size=4, complete=[0, 1, 2, 5, 6])
    split = split_shards(store, 0.05)
    assert split.val_shards == (6,) and split.train_shards == (0, 1, 2, 5)
    assert split_shards(store, 0.0).val_shards == ()


def test_split_needs_a_shard_to_train_on() -> None:
    with pytest.raises(ConfigError, match="--val-fraction 0"):
        split_shards(FakeStore(n=4, size=16, shard_size=4), 0.05)
    with pytest.raises(StoreError, match="no shard"):
        split_shards(FakeStore(n=4, size=16, shard_size=4, complete=[]), 0.05)


def test_spread_is_even_and_fixed() -> None:
    idx = np.arange(100, 200)
    np.testing.assert_array_equal(spread(idx, 4), [100, 125, 150, 175])
    assert spread(idx, 0) is idx and spread(idx, 1000) is idx


# ---------------------------------------------------------------------------------------------
# A real store made by the renderer, read by several DataLoader workers


@pytest.fixture(scope="module")
def real_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(render_tiny_store(tmp_path_factory.mktemp("data_store"), 16))


def test_real_store_loader_with_workers(real_store: str) -> None:
    import anomalygen
    from resynth_models.data import worker_context, worker_init

    store = anomalygen.open_store(real_store)
    ds = SyntheticDataset(store, 32, GeometryConfig(), seed=0, with_fov=True)
    sampler = StreamBatchSampler(len(ds), 4, seed=0, stage=2, stop_step=4)
    batches = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(
            ds,
            batch_sampler=sampler,
            num_workers=workers,
            worker_init_fn=worker_init,
            multiprocessing_context=worker_context() if workers else None,
        )
        batches[workers] = list(loader)
    assert len(batches[0]) == 4
    for a, b in zip(batches[0], batches[2], strict=True):
        assert a["image"].shape == (4, 3, 32, 32) and a["image"].dtype == torch.uint8
        assert a["mask"].shape == (4, 32, 32) and a["fov"].shape == (4, 32, 32)
        for key in a:
            assert torch.equal(a[key], b[key])  # same items whatever the number of workers
    normals = NormalsDataset(store, 64)
    assert len(normals) == 4
    assert normals[(0, 0)]["image"].shape == (3, 64, 64)


def test_real_store_split(real_store: str) -> None:
    import anomalygen

    store = anomalygen.open_store(real_store)
    split = split_shards(store, 0.05)
    assert split.val_shards == (3,) and split.train_shards == (0, 1, 2)
    assert list(split.indices(store, "val")) == [12, 13, 14, 15]
    assert Path(real_store).exists()
