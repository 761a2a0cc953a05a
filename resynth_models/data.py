"""Training data from an anomalygen store: datasets, augmentation, sampling, validation split.

- Stage 1 (paper 3.1) reads the store's prepared normal photographs, ``store.normals``
  (:class:`NormalsDataset`); stage 2 (paper 3.2) reads the synthetic samples I_G and their masks
  M_G (:class:`SyntheticDataset`). The store is read only through ``anomalygen.open_store``'s
  :class:`~anomalygen.store.SampleStore`, which is picklable and reopens itself in every
  DataLoader worker.
- Items are uint8 tensors (image (3, S, S), mask (S, S)): a quarter of float32's bytes through
  worker queues, pinned memory and the host-to-GPU copy; the training loop converts them to
  float in [0, 1] on the device.
- Light geometric augmentation (:class:`GeometryConfig`): a left-right flip (a right eye becomes
  a plausible left eye), a small rotation and a small zoom about the image centre, applied as ONE
  affine warp to the image (bilinear) and to the mask and FOV (nearest neighbour), so masks stay
  aligned with their lesions. Colour is left alone: the lesions ARE colour/texture changes
  (paper 3.3), and a colour jitter could turn normal tissue into a look-alike lesion.
- Resizing to the training size when it differs from the store's: area averaging for images
  when shrinking (bilinear when enlarging); a shrunk mask pixel is a lesion where more than half
  of its area was (nearest neighbour when enlarging).
- Randomness: the augmentation of an item is a function of ``(seed, stage, pass, index)`` alone
  (:func:`augment_rng`), and the order of items is a seeded permutation per pass over the data
  (:class:`StreamBatchSampler`). Neither depends on the number of workers, processes or GPUs, so
  a run resumed at step k sees exactly the batches an uninterrupted run sees.
- Validation (stage 2) holds out WHOLE shards of the store (:func:`split_shards`): the last
  ``val_fraction`` of its complete shards, at least one, so no synthetic sample used for
  training is also scored.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from anomalygen.errors import ConfigError, StoreError
from resynth_models.photometric import (
    NO_PHOTOMETRIC,
    PhotometricConfig,
    apply_photometric,
    draw_photometric,
)

__all__ = [
    "DamagedData",
    "GeometryConfig",
    "NormalsDataset",
    "Split",
    "StreamBatchSampler",
    "SyntheticDataset",
    "apply_geometry",
    "augment_rng",
    "checked_read",
    "draw_geometry",
    "n_normals",
    "resize_image",
    "resize_mask",
    "split_shards",
    "worker_context",
    "worker_init",
]

# Tags that keep the different random streams of one seed apart (arbitrary, fixed forever: a
# change would change every run's data order and augmentation).
_AUGMENT_TAG = 0xA06
_ORDER_TAG = 0x0DE7
_PHOTOMETRIC_TAG = 0xC010


# ---------------------------------------------------------------------------------------------
# Geometric augmentation: pure functions of (arrays, rng, config)


@dataclass(frozen=True)
class GeometryConfig:
    """Light geometric augmentation, one transform shared by image, mask and FOV (ours).

    The paper does not describe any augmentation of its training images; these ranges stay
    within what differs between fundus cameras and eyes, so the synthetic lesions keep their
    fundus-consistent look (paper 3.3).
    """

    hflip: float = 0.5  # probability of a left-right flip (right eye <-> left eye)
    max_rotate: float = 10.0  # degrees, uniform in [-max, max] (camera roll of a few degrees)
    max_scale: float = 0.05  # relative zoom, uniform in [1 - s, 1 + s] (FOV diameters differ)

    def __post_init__(self) -> None:
        if not 0.0 <= self.hflip <= 1.0:
            raise ConfigError(f"augment.hflip: must be a probability in [0, 1], got {self.hflip}")
        if not 0.0 <= self.max_rotate <= 180.0:
            raise ConfigError(f"augment.max_rotate: must be 0..180 degrees, got {self.max_rotate}")
        if not 0.0 <= self.max_scale < 1.0:
            raise ConfigError(f"augment.max_scale: must be in [0, 1), got {self.max_scale}")

    @property
    def identity(self) -> bool:
        """True when no transform is ever drawn (augmentation off)."""
        return self.hflip == 0 and self.max_rotate == 0 and self.max_scale == 0


#: Augmentation off (validation, ``--no-augment``).
NO_AUGMENT = GeometryConfig(hflip=0.0, max_rotate=0.0, max_scale=0.0)


@dataclass(frozen=True)
class Geometry:
    """One drawn transform: flip first, then rotate by ``angle`` degrees (counter-clockwise)
    and zoom by ``scale`` about the image centre."""

    flip: bool = False
    angle: float = 0.0
    scale: float = 1.0

    @property
    def identity(self) -> bool:
        return not self.flip and self.angle == 0.0 and self.scale == 1.0


def augment_rng(seed: int, stage: int, epoch: int, index: int) -> np.random.Generator:
    """THE randomness of one training item: a function of (seed, stage, pass, store index)."""
    return np.random.default_rng([_AUGMENT_TAG, int(seed), int(stage), int(epoch), int(index)])


def photometric_rng(seed: int, stage: int, epoch: int, index: int) -> np.random.Generator:
    """The photometric randomness of one training item (a stream apart from the geometry's)."""
    return np.random.default_rng([_PHOTOMETRIC_TAG, int(seed), int(stage), int(epoch), int(index)])


def draw_geometry(rng: np.random.Generator, config: GeometryConfig) -> Geometry:
    """Draw a transform; always draws the same three numbers, so streams stay aligned."""
    u = rng.random(3)
    return Geometry(
        flip=bool(u[0] < config.hflip),
        angle=float((2.0 * u[1] - 1.0) * config.max_rotate),
        scale=float(1.0 + (2.0 * u[2] - 1.0) * config.max_scale),
    )


def geometry_matrix(geometry: Geometry, size: int) -> np.ndarray:
    """The 2x3 forward affine matrix (source pixel -> output pixel, as OpenCV's ``warpAffine``
    takes it) of ``geometry`` on a ``size`` x ``size`` image, about the centre (size - 1) / 2."""
    c = (size - 1) / 2.0
    rot = cv2.getRotationMatrix2D((c, c), geometry.angle, geometry.scale)  # 2x3, forward
    if geometry.flip:  # x -> (size - 1) - x before the rotation
        flip = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        rot = rot @ flip
    return rot


def apply_geometry(
    image: np.ndarray, masks: Sequence[np.ndarray | None], geometry: Geometry
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Apply ``geometry`` to a square (S, S, 3) uint8 image (bilinear) and (S, S) uint8 masks
    (nearest neighbour: values stay in {0, 1}). Pixels that come from outside the image are 0
    (black, like the border outside the FOV; masks: normal / outside the FOV)."""
    if geometry.identity:
        return image, list(masks)
    size = image.shape[0]
    if geometry.angle == 0.0 and geometry.scale == 1.0:  # a flip alone is exact: no resampling
        return np.ascontiguousarray(image[:, ::-1]), [
            None if m is None else np.ascontiguousarray(m[:, ::-1]) for m in masks
        ]
    matrix = geometry_matrix(geometry, size)

    def warp(a: np.ndarray, interpolation: int) -> np.ndarray:
        return cv2.warpAffine(
            a, matrix, (size, size), flags=interpolation, borderMode=cv2.BORDER_CONSTANT
        )

    return warp(image, cv2.INTER_LINEAR), [
        None if m is None else warp(m, cv2.INTER_NEAREST) for m in masks
    ]


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3): area averaging to shrink, bilinear to enlarge."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    shrink = size < image.shape[0]
    return cv2.resize(
        image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )


def resize_mask(mask: np.ndarray, size: int, *, any_part: bool = False) -> np.ndarray:
    """(H, W) uint8 {0, 1} -> (size, size), nearest neighbour when enlarging. When shrinking, an
    output pixel is 1 where more than half of the area it covers is 1, or, with ``any_part``,
    where any of it is: lesion masks use that, so a lesion of 2 px still visible in the shrunk
    image is not dropped from M_G (the label would contradict the picture)."""
    if mask.shape[0] == size and mask.shape[1] == size:
        return mask
    if size < mask.shape[0]:
        frac = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
        return (frac > (0.0 if any_part else 0.5)).astype(np.uint8)
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _mask_tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))


def _key(key: Any) -> tuple[int, int]:
    """Dataset keys are ``(pass, position)`` from :class:`StreamBatchSampler`, or a position."""
    if isinstance(key, tuple | list):
        epoch, k = key
        return int(epoch), int(k)
    return 0, int(key)


# ---------------------------------------------------------------------------------------------
# Datasets


class DamagedData(StoreError):
    """A sample or photograph of the training store could not be read, or is damaged.

    The message is one line, also when the error happens in a DataLoader worker: torch
    re-raises a worker's exception in the training process as the same type, built from a
    message that holds the worker's whole traceback ("Caught DamagedData in DataLoader worker
    process 0. Original Traceback ..."); this type keeps only its own line of it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_own_line(message))


def _own_line(message: str) -> str:
    """``message``, or the original one-line message inside torch's re-raised text."""
    if not message.startswith("Caught ") or "Traceback" not in message:
        return message
    prefix = f"{DamagedData.__module__}.{DamagedData.__qualname__}: "
    for line in reversed(message.splitlines()):
        if line.startswith(prefix):
            return line[len(prefix) :]
    lines = [line for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else message


def checked_read(read: Any) -> Any:
    """``read()``, a :class:`StoreError` (a damaged sample, a lost object) raised as
    :class:`DamagedData`, which stays one line through DataLoader workers."""
    try:
        return read()
    except StoreError as err:
        raise DamagedData(f"--data: {err}") from None


def n_normals(store: Any) -> int:
    """Number of usable normal photographs in ``store``; :class:`StoreError` if there are none."""
    try:
        count = len(store.normals)
    except StoreError as err:
        raise StoreError(f"--data {store.url}: cannot read the store's normals ({err})") from None
    if count == 0:
        raise StoreError(
            f"--data {store.url}: the store has no prepared normal photographs ('normals'), "
            "which stage 1 trains on and validation takes the field of view from; render it "
            "with anomalygen render"
        )
    return count


class _StoreDataset(Dataset):
    def __init__(
        self,
        store: Any,
        size: int | None,
        geometry: GeometryConfig,
        seed: int,
        indices: Sequence[int] | None,
        stage: int,
        photometric: PhotometricConfig = NO_PHOTOMETRIC,
    ) -> None:
        self.store = store
        self.size = int(size) if size is not None else int(store.size)
        self.geometry = geometry
        self.photometric = photometric
        self.seed = int(seed)
        self.stage = stage
        self.indices = np.asarray(
            indices if indices is not None else range(self._source_len()), dtype=np.int64
        )

    def _source_len(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.indices)

    def _geometry(self, epoch: int, index: int) -> Geometry:
        if self.geometry.identity:
            return Geometry()
        return draw_geometry(augment_rng(self.seed, self.stage, epoch, index), self.geometry)

    def _photometric(self, image: np.ndarray, epoch: int, index: int) -> np.ndarray:
        if not self.photometric.enabled:
            return image
        rng = photometric_rng(self.seed, self.stage, epoch, index)
        return apply_photometric(image, draw_photometric(rng, self.photometric))


class NormalsDataset(_StoreDataset):
    """Stage 1: ``ds[(pass, k)] -> {"image": uint8 (3, S, S), "fov": uint8 (S, S)}``.

    Item k is normal photograph ``indices[k]`` of ``store.normals`` (all of them by default),
    resized to ``size`` (default: the store's) and augmented by ``geometry`` (drawn from
    :func:`augment_rng` of (seed, 1, pass, index)).
    """

    def __init__(
        self,
        store: Any,
        size: int | None = None,
        geometry: GeometryConfig = NO_AUGMENT,
        seed: int = 0,
        indices: Sequence[int] | None = None,
    ) -> None:
        # No photometric transform: E_r/D_r learn the normals as they are (it is stage 2's).
        super().__init__(store, size, geometry, seed, indices, stage=1)

    def _source_len(self) -> int:
        return n_normals(self.store)

    def __getitem__(self, key: Any) -> dict[str, torch.Tensor]:
        epoch, k = _key(key)
        j = int(self.indices[k])
        image, fov = checked_read(lambda: self.store.normals[j])
        image, fov = resize_image(image, self.size), resize_mask(fov, self.size)
        image, (fov,) = apply_geometry(image, [fov], self._geometry(epoch, j))
        return {"image": _image_tensor(image), "fov": _mask_tensor(fov)}


class SyntheticDataset(_StoreDataset):
    """Stage 2: ``ds[(pass, k)] -> {"image": uint8 (3, S, S), "mask": uint8 (S, S)}``, plus
    ``"fov"`` (uint8 (S, S), the target photograph's field of view) with ``with_fov``.

    Item k is synthetic sample ``indices[k]`` of the store (I_G, M_G), resized and augmented as
    in :class:`NormalsDataset` (stage tag 2). The FOV costs an extra metadata read per item, so
    only validation asks for it.
    """

    def __init__(
        self,
        store: Any,
        size: int | None = None,
        geometry: GeometryConfig = NO_AUGMENT,
        seed: int = 0,
        indices: Sequence[int] | None = None,
        with_fov: bool = False,
        photometric: PhotometricConfig = NO_PHOTOMETRIC,
    ) -> None:
        super().__init__(store, size, geometry, seed, indices, stage=2, photometric=photometric)
        self.with_fov = with_fov

    def _source_len(self) -> int:
        return len(self.store)

    def __getitem__(self, key: Any) -> dict[str, torch.Tensor]:
        epoch, k = _key(key)
        i = int(self.indices[k])
        image, mask = checked_read(lambda: self.store[i])
        fov = None
        if self.with_fov:
            # I_G is its target photograph outside the lesions, so the target's FOV is I_G's.
            target_fov = checked_read(lambda: self.store.normals[self.store.meta(i)["target"]][1])
            fov = resize_mask(target_fov, self.size)
        image, mask = resize_image(image, self.size), resize_mask(mask, self.size, any_part=True)
        image, (mask, fov) = apply_geometry(image, [mask, fov], self._geometry(epoch, i))
        image = self._photometric(image, epoch, i)
        item = {"image": _image_tensor(image), "mask": _mask_tensor(mask)}
        if fov is not None:
            item["fov"] = _mask_tensor(fov)
        return item


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one OpenCV thread per worker (W workers use W cores; torch
    already limits itself to one thread in workers). The store reopens itself per process."""
    del worker_id
    cv2.setNumThreads(1)


def worker_context() -> multiprocessing.context.BaseContext:
    """The start method for DataLoader workers: a fork server that has imported this module.

    Plain ``fork`` copies the training process with its threads' locks held (OpenCV's thread
    pool: a worker that touches it deadlocks; zarr's I/O loop), and ``spawn`` re-imports torch in
    every worker (2.6 s each here). The fork server is a clean single-threaded process, started
    once, that forks each worker in milliseconds. (Python 3.14 makes it Linux's default.)
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["resynth_models.data"])  # no effect once the server runs
    return ctx


# ---------------------------------------------------------------------------------------------
# Order of items: one seeded permutation per pass, cut into global batches, shared out by rank


class StreamBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of keys ``(pass, k)`` for steps ``start_step .. stop_step - 1`` of one rank.

    The data form an endless stream: pass p is a permutation of ``range(n)`` drawn from
    (seed, stage, p), and the passes follow each other. Step s consumes stream items
    ``s * G .. (s + 1) * G - 1`` with the global batch G = ``batch_size * world_size``; rank r
    takes the r-th slice of ``batch_size`` of them (what ``DistributedSampler`` does, disjoint
    across ranks, and what it cannot do: start in the middle of a pass, for exact resume). The
    batches of a step are the same whatever the number of workers, and the same union for any
    split of G over GPUs.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int,
        stage: int,
        start_step: int = 0,
        stop_step: int,
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        if n < 1:
            raise ConfigError("training data: no samples to train on")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.batch_size = int(n), int(batch_size)
        self.seed, self.stage = int(seed), int(stage)
        self.start_step, self.stop_step = int(start_step), int(stop_step)
        self.world_size, self.rank = int(world_size), int(rank)
        self._cached: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of pass ``epoch`` (cached: consecutive steps reuse it)."""
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng([_ORDER_TAG, self.seed, self.stage, int(epoch)])
            self._cached = (epoch, rng.permutation(self.n))
        return self._cached[1]

    def batch(self, step: int) -> list[tuple[int, int]]:
        """This rank's keys for global step ``step``."""
        first = step * self.batch_size * self.world_size + self.rank * self.batch_size
        keys = []
        for pos in range(first, first + self.batch_size):
            epoch, k = divmod(pos, self.n)
            keys.append((epoch, int(self.permutation(epoch)[k])))
        return keys

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.stop_step):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.stop_step - self.start_step)


# ---------------------------------------------------------------------------------------------
# Validation split: whole shards


@dataclass(frozen=True)
class Split:
    """Which complete shards of a store train stage 2 and which validate it."""

    train_shards: tuple[int, ...]
    val_shards: tuple[int, ...]

    def indices(self, store: Any, which: str) -> np.ndarray:
        """Sample indices of the ``"train"`` or ``"val"`` shards, in order."""
        shards = self.train_shards if which == "train" else self.val_shards
        parts = [np.arange(r.start, r.stop) for r in (store.shard_range(s) for s in shards)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def split_shards(store: Any, val_fraction: float = 0.05, min_val_shards: int = 1) -> Split:
    """Hold out the LAST ``val_fraction`` of the store's complete shards (rounded, at least
    ``min_val_shards``) for validation; train on the other complete shards.

    Shards that are not rendered yet are left out (the store cannot read them). The last shards
    rather than a random draw: a store rendered further later keeps its earlier shards in
    training. ``val_fraction`` 0 disables validation.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"--val-fraction: must be in [0, 1), got {val_fraction}")
    complete = sorted(store.complete_shards())
    if not complete:
        raise StoreError(f"--data {store.url}: no shard of the store is rendered yet")
    if val_fraction == 0:
        return Split(tuple(complete), ())
    n_val = max(int(min_val_shards), round(val_fraction * len(complete)))
    if n_val >= len(complete):
        raise ConfigError(
            f"--val-fraction {val_fraction}: the store has {len(complete)} complete shard"
            f"{'s' if len(complete) != 1 else ''} and validation holds out whole shards "
            f"({n_val}), leaving none to train on; render more samples (or a smaller "
            "--shard-size), or pass --val-fraction 0"
        )
    return Split(tuple(complete[:-n_val]), tuple(complete[-n_val:]))


def spread(indices: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` of ``indices``, evenly spaced (a fixed validation subset)."""
    if count <= 0 or len(indices) <= count:
        return indices
    pick = np.floor(np.arange(count) * (len(indices) / count)).astype(np.int64)
    return indices[pick]


def steps_for(samples: float, global_batch: int) -> int:
    """Optimiser steps needed to see ``samples`` samples (rounded up)."""
    return max(1, math.ceil(samples / global_batch))
