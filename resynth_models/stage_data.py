"""What each stage trains and validates on: stage 1 the store's normal photographs, stage 2 its
synthetic samples on the split's training shards, and stage 2's held-out samples (this
process's share) for validation."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from resynth_models.data import NO_AUGMENT, NormalsDataset, Split, SyntheticDataset, spread
from resynth_models.runtime import Dist, make_loader
from resynth_models.train_config import TrainConfig

__all__ = ["train_dataset", "val_loader"]


def train_dataset(
    store: Any, size: int, config: TrainConfig, stage: int, split: Split | None
) -> Dataset:
    """Stage ``stage``'s training items at ``size`` px, augmented as ``config`` says."""
    if stage == 1:
        return NormalsDataset(store, size, config.augment, config.seed)
    assert split is not None  # stage 2 always has one (run_folder.plan_run)
    train_idx = split.indices(store, "train")
    return SyntheticDataset(store, size, config.augment, config.seed, train_idx,
                            photometric=config.photometric)  # fmt: skip


def val_loader(
    store: Any,
    size: int,
    config: TrainConfig,
    split: Split | None,
    dist: Dist,
    device: torch.device,
) -> DataLoader | None:
    """Stage 2's held-out samples (``config.val_samples`` of them, evenly spread, without
    augmentation, with their FOV), this process's share; None without held-out shards."""
    if split is None or not split.val_shards:
        return None
    val_idx = spread(split.indices(store, "val"), config.val_samples)
    val_set = SyntheticDataset(store, size, NO_AUGMENT, config.seed, val_idx, with_fov=True)
    mine = list(range(dist.rank, len(val_set), dist.world))
    return make_loader(val_set, config.workers, device, batch_size=config.batch_size,
                       sampler=mine)  # fmt: skip
